"""The frame codec: the spec's exact wire texts, schema-driven splitting, and fuzzing."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rtcxfer.protocol import frames
from rtcxfer.protocol.errors import FrameDecodeError, LocalProtocolError, RemoteProtocolError
from rtcxfer.protocol.frames import (
    BUILTIN_FRAME_TYPES,
    DEFAULT_CATALOGUE,
    FieldSpec,
    FileMeta,
    Frame,
    FrameCatalogue,
    JobComplete,
    JobFailed,
    PathErrorFrame,
    PathValidated,
    SharedInputPath,
    SharedOutputPath,
    frame_type,
    reply_to,
)

SHA = "ab" * 32
TID = "0123456789abcdef" * 2

# Every message the worker specification names, exactly as it writes it.
SPEC_EXAMPLES = [
    ("SHARED_INPUT_PATH::jobs/123/data.zip", SharedInputPath("jobs/123/data.zip")),
    ("SHARED_OUTPUT_PATH::jobs/123/results", SharedOutputPath("jobs/123/results")),
    ("PATH_VALIDATED::input", PathValidated("input")),
    ("PATH_ERROR::Input path does not exist: jobs/1/x.zip", PathErrorFrame("Input path does not exist: jobs/1/x.zip")),
    (
        "PATH_ERROR::Path outside shared storage: ../../etc/passwd",
        PathErrorFrame("Path outside shared storage: ../../etc/passwd"),
    ),
    ("PATH_ERROR::File not found: jobs/1/x.zip", PathErrorFrame("File not found: jobs/1/x.zip")),
    ("PATH_ERROR::Permission denied: jobs/1/x.zip", PathErrorFrame("Permission denied: jobs/1/x.zip")),
    (
        "PATH_ERROR::File corrupted or invalid format: jobs/1/x.zip",
        PathErrorFrame("File corrupted or invalid format: jobs/1/x.zip"),
    ),
    ("JOB_COMPLETE::job-42::jobs/123/results", JobComplete("job-42", "jobs/123/results")),
    ("JOB_COMPLETE::job-42::jobs/123/results::3::12.5", JobComplete("job-42", "jobs/123/results", 3, 12.5)),
    ("JOB_FAILED::Disk space exhausted on shared storage", JobFailed("Disk space exhausted on shared storage")),
    (f"FILE_META::{TID}::data.zip::1048576::{SHA}::65536", FileMeta(TID, "data.zip", 1048576, SHA, 65536)),
]


@pytest.mark.parametrize(
    ("wire", "frame"), SPEC_EXAMPLES, ids=[w.split("::")[0] + str(i) for i, (w, _) in enumerate(SPEC_EXAMPLES)]
)
def test_spec_examples_encode_and_decode_exactly(wire, frame):
    assert frames.encode(frame) == wire
    assert frames.decode(wire) == frame


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("SHARED_INPUT_PATH::a::b::c.zip", SharedInputPath("a::b::c.zip")),
        ("PATH_ERROR::Input path does not exist: C::x", PathErrorFrame("Input path does not exist: C::x")),
        ("JOB_COMPLETE::j::out::dir::7::0.25", JobComplete("j", "out::dir", 7, 0.25)),
        ("JOB_COMPLETE::j::out::dir", JobComplete("j", "out::dir")),
        # Not a canonical count and size, so they are part of the path (the short form).
        ("JOB_COMPLETE::j::p::3::1.50", JobComplete("j", "p::3::1.50")),
        ("JOB_COMPLETE::j::p::3::nan", JobComplete("j", "p::3::nan")),
        (f"FILE_META::{TID}::we::ird:name::5::{SHA}::4", FileMeta(TID, "we::ird:name", 5, SHA, 4)),
        (f"FILE_META::{TID}:::x:::5::{SHA}::4", FileMeta(TID, ":x:", 5, SHA, 4)),
    ],
)
def test_greedy_field_keeps_separators(wire, expected):
    assert frames.decode(wire) == expected
    assert frames.encode(expected) == wire


@pytest.mark.parametrize(
    "wire",
    [
        "",
        "NOPE::x",
        "SHARED_INPUT_PATH",
        "PATH_VALIDATED::in:put",
        "PATH_VALIDATED::",
        "JOB_COMPLETE::job",
        "JOB_COMPLETE::bad id::x",
        f"FILE_META::{TID}::n::-5::{SHA}::4",
        f"FILE_META::{TID}::n::05::{SHA}::4",
        f"FILE_META::{TID.upper()}::n::5::{SHA}::4",
        f"FILE_META::{TID}::n::5::{SHA[:-1]}::4",
        "shared_input_path::x",
        "X" * (frames.MAX_FRAME_CHARS + 1),
    ],
)
def test_malformed_frames_raise_the_remote_error(wire):
    with pytest.raises(FrameDecodeError) as caught:
        frames.decode(wire)
    reply = reply_to(caught.value)
    assert reply.TYPE == "PROTOCOL_ERROR"
    assert len(reply.reason) < frames.MAX_FRAME_CHARS


def test_binary_message_is_never_a_control_frame():
    with pytest.raises(FrameDecodeError, match="binary"):
        frames.decode(b"SHARED_INPUT_PATH::x")


def test_short_job_complete_that_would_read_as_long_form_is_refused_locally():
    with pytest.raises(LocalProtocolError):
        frames.encode(JobComplete("j", "out::3::1.5"))
    with pytest.raises(LocalProtocolError):
        frames.encode(JobComplete("j", "out", 3, None))


@pytest.mark.parametrize(
    "frame",
    [PathValidated("in put"), PathValidated(""), FileMeta(TID, "n", -1, SHA, 4), FileMeta("xyz", "n", 1, SHA, 4)],
)
def test_unwritable_frames_are_local_errors(frame):
    with pytest.raises(LocalProtocolError):
        frames.encode(frame)


def test_frame_types_declare_fields_in_order():
    assert [f.name for f in FileMeta.FIELDS] == ["transfer_id", "name", "size", "sha256", "chunk_size"]
    assert [f.name for f in FileMeta.FIELDS if f.greedy] == ["name"]


def test_plugins_can_declare_frame_types_of_their_own():
    @frame_type("ECHO_NOTE")
    class EchoNote(Frame):
        level: str = frames.token()
        note: str = frames.text(greedy=True)

    catalogue = FrameCatalogue([*BUILTIN_FRAME_TYPES, EchoNote])
    assert catalogue.decode("ECHO_NOTE::info::a::b") == EchoNote("info", "a::b")
    assert frames.encode(EchoNote("x", "y")) == "ECHO_NOTE::x::y"
    with pytest.raises(FrameDecodeError):
        DEFAULT_CATALOGUE.decode("ECHO_NOTE::x::y")


def test_two_greedy_fields_or_a_duplicate_type_name_are_refused():
    with pytest.raises(LocalProtocolError):

        @frame_type("TWO_GREEDY")
        class TwoGreedy(Frame):
            a: str = frames.text(greedy=True)
            b: str = frames.text(greedy=True)

    @frame_type("PATH_ERROR")
    class Impostor(Frame):
        message: str = frames.text(greedy=True)

    with pytest.raises(LocalProtocolError):
        FrameCatalogue([*BUILTIN_FRAME_TYPES, Impostor])


def test_chunk_header_round_trip_without_copying_payload():
    message = frames.pack_chunk_header(TID, 2**40) + b"payload"
    transfer_id, offset, payload = frames.unpack_chunk(message)
    assert (transfer_id, offset, bytes(payload)) == (TID, 2**40, b"payload")
    assert isinstance(payload, memoryview)
    with pytest.raises(FrameDecodeError):
        frames.unpack_chunk(b"XX\x01" + bytes(30))


# --- hypothesis ---------------------------------------------------------------------------


def field_values(spec: FieldSpec, greedy_text):
    if spec.kind == "int":
        return st.integers(min_value=0, max_value=2**64)
    if spec.kind == "float":
        return st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False)
    if spec.kind == "hex":
        return st.text("0123456789abcdef", min_size=spec.length, max_size=spec.length)
    if spec.kind == "token":
        return st.from_regex(r"[A-Za-z0-9._,+=@-]{1,20}", fullmatch=True)
    if spec.greedy:
        return greedy_text
    return st.text(min_size=1).filter(lambda t: spec.problem_with_text(t) is None)


@st.composite
def any_builtin_frame(draw, greedy_text=st.text()):
    frame_class = draw(st.sampled_from(BUILTIN_FRAME_TYPES))
    specs = frame_class.FIELDS
    values = {}
    with_optional = draw(st.booleans())
    for spec in specs:
        if spec.optional and not with_optional:
            values[spec.name] = None
        else:
            values[spec.name] = draw(field_values(spec, greedy_text))
    return frame_class(**values)


SEPARATOR_HEAVY_TEXT = st.lists(
    st.sampled_from([":", "::", "a", "/", " ", "\x00", "é", ".", "3", "1.5"]), max_size=20
).map("".join)


@given(any_builtin_frame(greedy_text=st.one_of(st.text(), SEPARATOR_HEAVY_TEXT)))
def test_decode_of_encode_is_identity_for_every_type(frame):
    try:
        wire = frames.encode(frame)
    except LocalProtocolError:
        # Only a short JOB_COMPLETE whose path ends like "::<int>::<float>" is unwritable.
        assert isinstance(frame, JobComplete) and frame.file_count is None
        return
    assert frames.decode(wire) == frame


@given(st.sampled_from(BUILTIN_FRAME_TYPES), st.text(), SEPARATOR_HEAVY_TEXT)
def test_decode_of_encode_with_arbitrary_greedy_text_long_forms(frame_class, text, more_text):
    greedy = next((spec for spec in frame_class.FIELDS if spec.greedy), None)
    assume(greedy is not None)
    example = dict(zip([f.name for f in frame_class.FIELDS], [None] * len(frame_class.FIELDS)))
    for spec in frame_class.FIELDS:
        example[spec.name] = {"int": 7, "float": 1.5, "hex": "a" * (spec.length or 1), "token": "tok", "text": "t"}[
            spec.kind
        ]
    example[greedy.name] = text + more_text
    frame = frame_class(**example)
    assert frames.decode(frames.encode(frame)) == frame


@given(
    st.one_of(
        st.text(),
        st.builds(lambda t, rest: t.TYPE + rest, st.sampled_from(BUILTIN_FRAME_TYPES), st.text()),
        st.builds(lambda t, rest: t.TYPE + "::" + rest, st.sampled_from(BUILTIN_FRAME_TYPES), SEPARATOR_HEAVY_TEXT),
    )
)
def test_arbitrary_text_decodes_to_its_own_encoding_or_raises_remote_error(text):
    try:
        frame = frames.decode(text)
    except RemoteProtocolError as error:
        assert isinstance(error, FrameDecodeError)
        assert reply_to(error).TYPE == "PROTOCOL_ERROR"
        return
    assert frames.encode(frame) == text


@given(st.binary(max_size=64))
def test_arbitrary_binary_never_decodes_as_a_frame(data):
    with pytest.raises(FrameDecodeError):
        frames.decode(data)
