"""The legacy codec (rtcxfer.protocol.legacy) without a network: every message of
shared/spec/legacy-protocol.md, and hypothesis over hostile input and upload sequences."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.protocol import legacy as protocol
from rtcxfer.protocol.errors import LocalProtocolError
from rtcxfer.protocol.legacy import FileMeta, UploadRefused, UploadTracker, decode, speaks_legacy

LEGACY_PREFIXES = [
    "PACKAGE_TYPE::",
    "OUTPUT_DIR::",
    "FILE_META::",
    "ZMQ_CTRL::",
    "JOB_ID::",
    "SHARED_INPUT_PATH::",
    "SHARED_OUTPUT_PATH::",
    "SHARED_STORAGE_JOB::",
    "END_OF_FILE",
    "HELLO::",
]


@pytest.mark.parametrize(
    ("message", "event"),
    [
        ("PACKAGE_TYPE::train", protocol.PackageType("train")),
        ("PACKAGE_TYPE::track", protocol.PackageType("track")),
        ("OUTPUT_DIR::models", protocol.OutputDir("models")),
        (
            "FILE_META::labels.v001.slp.training_job.zip:5368709:False",
            FileMeta("labels.v001.slp.training_job.zip", 5368709, False),
        ),
        ("FILE_META::a.zip:10:True", FileMeta("a.zip", 10, True)),
        ("FILE_META::a.zip:10:false", FileMeta("a.zip", 10, False)),
        ("END_OF_FILE", protocol.EndOfFile()),
        (b"KEEP_ALIVE", protocol.KeepAlive()),
        (b"\x00\x01", protocol.FileBytes(b"\x00\x01")),
        ("ZMQ_CTRL::{}", protocol.ZmqControl("{}")),
        ("JOB_ID::job_0a1b2c3d", protocol.JobId("job_0a1b2c3d")),
        ("SHARED_INPUT_PATH::jobs/job_1/a.zip", protocol.SharedInputPath("jobs/job_1/a.zip")),
        ("SHARED_OUTPUT_PATH::jobs/job_1", protocol.SharedOutputPath("jobs/job_1")),
        ("SHARED_STORAGE_JOB::start", protocol.SharedStorageJob()),
    ],
)
def test_every_client_message_of_the_spec(message, event):
    assert decode(message) == event


@pytest.mark.parametrize(
    "message",
    [
        "FILE_META::C:\\x.zip:10:False",  # a ':' in the name: four fields
        "FILE_META::a.zip:10",
        "FILE_META::a.zip:-1:False",
        "FILE_META::a.zip:010:False",
        "FILE_META:::10:False",
        "PACKAGE_TYPE::evil",
        "SHARED_STORAGE_JOB::stop",
        "JOB_ID::../../x",
        "TRAIN_JOB_START::x",
        "hello",
        "x PACKAGE_TYPE::train",  # the legacy worker matched substrings; this codec does not
        "",
    ],
)
def test_what_is_not_a_client_message_is_unrecognized(message):
    assert isinstance(decode(message), protocol.Unrecognized)


def test_texts_to_the_client():
    assert protocol.result_meta("trained_a.zip", 12, "models") == "FILE_META::trained_a.zip:12:models"
    assert protocol.job_complete("job_1", "jobs/job_1") == "JOB_COMPLETE::job_1::jobs/job_1"
    assert protocol.result_name("labels.v001.slp.training_job.zip") == "trained_labels.v001.slp.training_job.zip"
    train, track = protocol.JOB_TEXTS["train"], protocol.JOB_TEXTS["track"]
    assert (train.start("centroid"), train.end("centroid"), train.error("centroid", 1), train.done) == (
        "TRAIN_JOB_START::centroid",
        "TRAIN_JOB_END::centroid",
        "TRAIN_JOB_ERROR::centroid::1",
        "TRAINING_JOBS_DONE",
    )
    assert train.line("epoch 1") == "epoch 1\n"
    assert (track.opening, track.start("x"), track.error("x", 2), track.line("y"), track.done) == (
        "INFERENCE_START",
        "INFERENCE_JOB_START::inference",
        "INFERENCE_JOB_ERROR::inference::2",
        "TRACK_LOG:y",
        "INFERENCE_JOBS_DONE",
    )
    with pytest.raises(LocalProtocolError):
        protocol.result_meta("a:b.zip", 1, "models")


def test_the_first_message_chooses_the_dialect():
    assert not speaks_legacy("HELLO::1::token::shared-fs")
    assert speaks_legacy("PACKAGE_TYPE::train")
    assert speaks_legacy(b"KEEP_ALIVE")
    assert speaks_legacy("HELLOX::1")


@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.sampled_from(LEGACY_PREFIXES).flatmap(lambda prefix: st.text(max_size=200).map(lambda rest: prefix + rest)),
    )
)
def test_decode_never_raises_and_file_meta_round_trips(message):
    event = decode(message)
    if isinstance(event, FileMeta):
        # What was accepted is exactly what sleap-rtc's own split would give.
        name, size, gui = message.split("FILE_META::", 1)[1].split(":")
        assert (event.name, event.size, event.gui) == (name, int(size), gui.lower() == "true")
    if isinstance(event, protocol.Unrecognized):
        assert event.excerpt.isascii() and "\n" not in event.excerpt


# An upload's life, as (action, argument) steps in any order a hostile client may choose.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("meta"), st.integers(0, 300)),
        st.tuples(st.just("bytes"), st.integers(0, 200)),
        st.tuples(st.just("end"), st.none()),
        st.tuples(st.just("discard"), st.none()),
    ),
    max_size=40,
)


@given(STEPS)
def test_upload_tracker_never_accepts_a_lying_size(steps):
    tracker = UploadTracker(max_size=250)
    for action, argument in steps:
        before = tracker.current
        try:
            if action == "meta":
                tracker.announce(FileMeta("a.zip", argument, False))
                assert argument <= 250 and (before is None or not before.started)
            elif action == "bytes":
                upload = tracker.feed(argument)
                assert upload.received <= upload.size
            elif action == "end":
                finished = tracker.finish()
                # Only an upload whose every announced byte arrived is ever finished.
                assert finished.received == finished.size
            else:
                tracker.discard_unstarted()
        except UploadRefused:
            if action == "bytes" and before is not None:
                assert tracker.current is None  # a size that lies drops the upload
        if tracker.current is not None:
            assert tracker.current.received <= tracker.current.size <= 250
