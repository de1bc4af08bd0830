"""The sans-IO session engine, driven through two sessions wired back to back."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.protocol.engine import APPLICATION, ChunkReceived, Engine, FrameReceived, ProtocolViolation
from rtcxfer.protocol.errors import LocalProtocolError, TransferError, UnclaimedFrameError
from rtcxfer.protocol.frames import (
    FileError,
    FileMeta,
    JobFailed,
    PathValidated,
    ProtocolErrorFrame,
    SharedInputPath,
    pack_chunk_header,
    reply_to,
)
from rtcxfer.testing import EnginePair
from rtcxfer.transport.hookspecs import hookimpl
from rtcxfer.transport.host import PluginHost

SHA = "cd" * 32
TID_A = "a" * 32
TID_B = "b" * 32


@pytest.fixture(scope="module")
def host():
    return PluginHost(autoload=False)


@pytest.fixture
def pair(host):
    return EnginePair(host.claim, catalogue=host.catalogue)


def test_frames_are_dispatched_to_the_transport_that_claims_them(pair):
    event = pair.send("client", SharedInputPath("jobs/1/data.zip"))
    assert event == FrameReceived(SharedInputPath("jobs/1/data.zip"), "shared-fs")
    event = pair.send("client", FileMeta(TID_A, "data.zip", 10, SHA, 4))
    assert event == FrameReceived(FileMeta(TID_A, "data.zip", 10, SHA, 4), "rtc-chunked")
    assert pair.send("worker", PathValidated("input")).handler == "shared-fs"


def test_transfers_of_different_transports_are_in_flight_at_once(pair):
    client, worker = pair.engines["client"], pair.engines["worker"]
    for session in (client, worker):
        session.open_transfer(TID_A, "rtc-chunked")
        session.open_transfer(TID_B, "s3-like")
    first = pair.send_chunk("client", TID_A, 0, b"abcd")
    second = pair.send_chunk("client", TID_B, 100, b"xyz")
    shared = pair.send("client", SharedInputPath("jobs/2/in.zip"))
    assert isinstance(first, ChunkReceived) and (first.handler, first.offset, bytes(first.payload)) == (
        "rtc-chunked",
        0,
        b"abcd",
    )
    assert isinstance(second, ChunkReceived) and (second.handler, second.offset, bytes(second.payload)) == (
        "s3-like",
        100,
        b"xyz",
    )
    assert shared.handler == "shared-fs"
    assert worker.open_transfers == {TID_A: "rtc-chunked", TID_B: "s3-like"}
    worker.close_transfer(TID_A)
    late = pair.send_chunk("client", TID_A, 4, b"late")
    assert isinstance(late, ProtocolViolation)
    assert late.reply == FileError(TID_A, "unknown transfer")
    assert isinstance(pair.send_chunk("client", TID_B, 103, b"more"), ChunkReceived)


def test_malformed_frame_gets_an_error_reply_and_the_session_goes_on(pair):
    event = pair.deliver("client", "SHARED_INPUT_PATH")
    assert isinstance(event, ProtocolViolation)
    assert event.reply.TYPE == "PROTOCOL_ERROR" and "SHARED_INPUT_PATH" in event.reply.reason
    assert pair.engines["worker"].violations == 1
    assert pair.send("client", SharedInputPath("ok")).handler == "shared-fs"


def test_unclaimed_frame_gets_an_error_reply():
    session = Engine(lambda frame: None)
    event = session.receive("SHARED_INPUT_PATH::x")
    assert isinstance(event, ProtocolViolation) and isinstance(event.error, UnclaimedFrameError)
    assert event.reply == ProtocolErrorFrame("no handler for SHARED_INPUT_PATH frames in this session")


@pytest.mark.parametrize(
    "wire", ["PROTOCOL_ERROR::bad", f"FILE_ERROR::{TID_A}::gone", "JOB_FAILED::x", "PATH_ERROR::y"]
)
def test_unclaimed_error_reports_are_never_answered(wire):
    session = Engine(lambda frame: None, application_frames=())
    event = session.receive(wire)
    assert isinstance(event, ProtocolViolation) and event.reply is None


def test_two_engines_cannot_ping_pong_errors_forever():
    left, right = Engine(lambda f: None, application_frames=()), Engine(lambda f: None, application_frames=())
    message, bounces = "GARBAGE", 0
    sessions = [right, left]
    while message is not None and bounces < 10:
        event = sessions[bounces % 2].receive(message)
        bounces += 1
        message = sessions[bounces % 2].send(event.reply) if getattr(event, "reply", None) else None
    assert bounces == 2


def test_protocol_errors_from_the_peer_reach_the_application(pair):
    event = pair.send("worker", ProtocolErrorFrame("you sent garbage"))
    assert event == FrameReceived(ProtocolErrorFrame("you sent garbage"), APPLICATION)


def test_application_frames_are_delivered_to_the_application(host):
    session = Engine(host.claim, catalogue=host.catalogue, application_frames=(JobFailed,))
    assert session.receive("JOB_FAILED::boom") == FrameReceived(JobFailed("boom"), APPLICATION)


def test_opening_a_transfer_twice_is_the_peers_fault_and_sending_on_a_closed_one_ours(pair):
    worker = pair.engines["worker"]
    worker.open_transfer(TID_A, "rtc-chunked")
    with pytest.raises(TransferError) as caught:
        worker.open_transfer(TID_A, "rtc-chunked")
    assert reply_to(caught.value) == FileError(TID_A, "transfer already open")
    with pytest.raises(LocalProtocolError):
        pair.engines["client"].chunk_header(TID_B, 0)
    with pytest.raises(LocalProtocolError):
        worker.open_transfer("not-hex", "rtc-chunked")


def test_a_plugin_whose_claim_raises_does_not_end_the_session():
    class Exploding:
        @hookimpl
        def rtcxfer_claim_frame(self, frame):
            raise RuntimeError("plugin bug")

    host = PluginHost(autoload=False)
    assert host.register(Exploding(), "exploding")
    session = Engine(host.claim, catalogue=host.catalogue)
    event = session.receive(f"FILE_ACK::{TID_A}::{SHA}")
    assert isinstance(event, ProtocolViolation) and isinstance(event.error, UnclaimedFrameError)
    # The session goes on and keeps answering.
    assert isinstance(session.receive("SHARED_INPUT_PATH::x"), ProtocolViolation)
    assert session.violations == 2


@given(
    st.lists(
        st.one_of(
            st.text(max_size=200),
            st.binary(max_size=200),
            st.builds(
                lambda tid, data: pack_chunk_header(tid, 0) + data,
                st.sampled_from([TID_A, TID_B, "c" * 32]),
                st.binary(max_size=50),
            ),
        ),
        max_size=30,
    )
)
def test_no_sequence_of_messages_crashes_the_engine(messages):
    host = PluginHost(autoload=False)
    session = Engine(host.claim, catalogue=host.catalogue)
    session.open_transfer(TID_A, "rtc-chunked")
    for message in messages:
        event = session.receive(message)
        assert isinstance(event, (FrameReceived, ChunkReceived, ProtocolViolation))
        if isinstance(event, ProtocolViolation) and event.reply is not None:
            session.send(event.reply)  # every reply the engine proposes is writable
        if isinstance(event, ChunkReceived):
            assert event.transfer_id == TID_A


def test_the_sans_io_core_imports_no_io_library():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import rtcxfer.protocol.frames, rtcxfer.protocol.engine, rtcxfer.protocol.errors, rtcxfer.testing\n"
        "import rtcxfer.transport.hookspecs\n"
        "import rtcxfer.protocol.legacy\n"
        "import rtcxfer.protocol.auth, rtcxfer.net.rate_limits\n"
        "print(sorted(m for m in ('asyncio', 'aiortc', 'fsspec', 'loguru') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
