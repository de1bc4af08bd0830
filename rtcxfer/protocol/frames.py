"""Control frames: the sans-IO codec between data-channel text and :class:`Frame` objects.

A control frame is a text message ``TYPE::field::field``. File bytes never travel in a text
frame; they are binary messages with a small fixed header (see :func:`pack_chunk_header`).

Fields may contain ``:`` and, for one field per type, ``::`` too (a path, an error text).
Each frame type therefore declares its fields, and decoding is driven by that declaration:
fields before the *greedy* field split from the left, fields after it split from the right,
and what is left is the greedy field. After decoding, the frame is encoded again and must
reproduce the received text exactly, so every accepted text has exactly one meaning.

Plugins add frame types of their own by subclassing :class:`Frame` with :func:`frame_type`
and returning the classes from the ``rtcxfer_frame_types`` hook.

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import attrs

from rtcxfer.protocol.errors import FrameDecodeError, LocalProtocolError, RemoteProtocolError

SEPARATOR = "::"
#: The version HELLO and WELCOME carry. 2: mutual challenge-response authentication (HELLO,
#: AUTH_CHALLENGE, AUTH_PROOF, WELCOME; see :mod:`rtcxfer.protocol.auth`).
PROTOCOL_VERSION = 2
#: Longest control frame accepted from a peer; paths and error texts fit comfortably.
MAX_FRAME_CHARS = 64 * 1024
#: Longest excerpt of peer text quoted back in an error reply.
MAX_ECHO_CHARS = 200
#: Longest excerpt of peer text written into one log line.
MAX_LOG_CHARS = 500

# What a frame type's name and the text of each field kind must fully match; published in the
# protocol table (rtcxfer.protocol.schema), so the patterns keep to syntax JavaScript shares.
TYPE_NAME_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._,+=@-]{1,128}")
INT_PATTERN = re.compile(r"0|[1-9][0-9]{0,19}")
#: A first filter only: a float must also be in Python's shortest round-trip form.
FLOAT_PATTERN = re.compile(r"[0-9][0-9.e+-]{0,31}")
HEX_DIGITS = "0123456789abcdef"
#: Every kind a field can be declared with (see :class:`FieldSpec`).
FIELD_KINDS = ("text", "token", "hex", "int", "float")


# --- field declarations -------------------------------------------------------------------


@attrs.frozen
class FieldSpec:
    """How one field is written on the wire.

    ``kind`` is one of ``text`` (free text), ``token`` (a short identifier without ``:``),
    ``hex`` (lowercase hex of exactly ``length`` characters), ``int`` (non-negative
    decimal, canonical) or ``float`` (non-negative, Python's shortest round-trip form).
    """

    name: str
    kind: str
    greedy: bool = False
    optional: bool = False
    length: int | None = None

    def parse(self, raw: str) -> Any:
        """Turn wire text into the field's value or raise :class:`FrameDecodeError`."""
        problem = self.problem_with_text(raw)
        if problem:
            raise FrameDecodeError(f"field {self.name!r}: {problem}")
        if self.kind == "int":
            return int(raw)
        if self.kind == "float":
            return float(raw)
        return raw

    def format(self, value: Any) -> str:
        """Turn a field value into wire text or raise :class:`LocalProtocolError`."""
        if self.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LocalProtocolError(f"field {self.name!r} needs a non-negative int, got {value!r}")
            text = str(value)
        elif self.kind == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise LocalProtocolError(f"field {self.name!r} needs a number, got {value!r}")
            text = repr(float(value))
        else:
            if not isinstance(value, str):
                raise LocalProtocolError(f"field {self.name!r} needs str, got {type(value).__name__}")
            text = value
        problem = self.problem_with_text(text)
        if problem:
            raise LocalProtocolError(f"field {self.name!r} cannot be written: {problem}")
        return text

    def problem_with_text(self, raw: str) -> str | None:
        """Why ``raw`` is not valid wire text for this field, or ``None`` if it is."""
        if self.kind == "text":
            if self.greedy:
                return None
            # A non-greedy field sits next to a separator: a ':' at its edge would make the
            # split point ambiguous, so such text is refused in both directions.
            if not raw:
                return "empty"
            if SEPARATOR in raw or raw.startswith(":") or raw.endswith(":"):
                return "contains '::' or starts or ends with ':'"
            return None
        if self.kind == "token":
            return None if TOKEN_PATTERN.fullmatch(raw) else "not a token ([A-Za-z0-9._,+=@-], 1-128 chars)"
        if self.kind == "hex":
            if len(raw) != self.length or any(c not in HEX_DIGITS for c in raw):
                return f"not {self.length} lowercase hex digits"
            return None
        if self.kind == "int":
            return None if INT_PATTERN.fullmatch(raw) else "not a canonical non-negative integer"
        if self.kind == "float":
            if not FLOAT_PATTERN.fullmatch(raw):
                return "not a non-negative decimal number"
            try:
                value = float(raw)
            except ValueError:
                return "not a number"
            if not math.isfinite(value) or repr(value) != raw:
                return "not a canonical finite number"
            return None
        return f"unknown field kind {self.kind!r}"


def _field(kind: str, *, greedy: bool = False, optional: bool = False, length: int | None = None) -> Any:
    metadata = {"rtcxfer": FieldSpec("", kind, greedy=greedy, optional=optional, length=length)}
    if optional:
        return attrs.field(default=None, metadata=metadata)
    return attrs.field(metadata=metadata)


def text(*, greedy: bool = False) -> Any:
    """Declare a free-text field; ``greedy=True`` lets it hold ``::`` (one per frame type)."""
    return _field("text", greedy=greedy)


def token(*, optional: bool = False) -> Any:
    """Declare a short identifier field (job id, role, version)."""
    return _field("token", optional=optional)


def hex_digits(length: int, *, optional: bool = False) -> Any:
    """Declare a lowercase hexadecimal field of a fixed length (ids, SHA-256)."""
    return _field("hex", length=length, optional=optional)


def integer(*, optional: bool = False) -> Any:
    """Declare a non-negative integer field."""
    return _field("int", optional=optional)


def number(*, optional: bool = False) -> Any:
    """Declare a non-negative floating-point field."""
    return _field("float", optional=optional)


# --- frame types --------------------------------------------------------------------------


class Frame:
    """Base of every control frame. Subclasses are declared with :func:`frame_type`."""

    TYPE: ClassVar[str]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]

    def encode(self) -> str:
        """This frame as wire text (see :func:`encode`)."""
        return encode(self)


F = TypeVar("F", bound=type)


def frame_type(type_name: str):
    """Class decorator: make ``cls`` a frozen attrs frame written as ``type_name::...``.

    Fields are declared with :func:`text`, :func:`token`, :func:`hex_digits`,
    :func:`integer` and :func:`number`, in wire order. At most one field may be greedy and
    optional fields must come last.
    """

    if not TYPE_NAME_PATTERN.fullmatch(type_name):
        raise LocalProtocolError(f"frame type name {type_name!r} must match {TYPE_NAME_PATTERN.pattern}")

    def decorate(cls: F) -> F:
        cls = attrs.frozen(cls)
        specs = []
        for attribute in attrs.fields(cls):
            declared = attribute.metadata.get("rtcxfer")
            if declared is None:
                raise LocalProtocolError(f"{cls.__name__}.{attribute.name} is not a declared frame field")
            specs.append(attrs.evolve(declared, name=attribute.name))
        if sum(spec.greedy for spec in specs) > 1:
            raise LocalProtocolError(f"{type_name}: at most one greedy field")
        seen_optional = False
        for spec in specs:
            if seen_optional and not spec.optional:
                raise LocalProtocolError(f"{type_name}: optional fields must come last")
            seen_optional = seen_optional or spec.optional
        cls.TYPE = type_name
        cls.FIELDS = tuple(specs)
        return cls

    return decorate


# The worker specification's messages, written exactly as the spec writes them.


@frame_type("SHARED_INPUT_PATH")
class SharedInputPath(Frame):
    """Client -> worker: the job's input lies at this path relative to the shared root."""

    relative_path: str = text(greedy=True)


@frame_type("SHARED_OUTPUT_PATH")
class SharedOutputPath(Frame):
    """Client -> worker: write the job's results under this path relative to the shared root."""

    relative_path: str = text(greedy=True)


@frame_type("PATH_VALIDATED")
class PathValidated(Frame):
    """Worker -> client: the named path (``input`` or ``output``) was accepted."""

    which: str = token()


@frame_type("PATH_ERROR")
class PathErrorFrame(Frame):
    """Worker -> client: a received path was refused; ``message`` is the spec's text."""

    message: str = text(greedy=True)


@frame_type("JOB_COMPLETE")
class JobComplete(Frame):
    """Worker -> client: the job finished; results lie at ``relative_path``.

    ``file_count`` and ``total_mb`` are optional, but come together (the spec's two forms).
    """

    job_id: str = token()
    relative_path: str = text(greedy=True)
    file_count: int | None = integer(optional=True)
    total_mb: float | None = number(optional=True)


@frame_type("JOB_FAILED")
class JobFailed(Frame):
    """Worker -> client: the job failed; ``reason`` is for a person to read."""

    reason: str = text(greedy=True)


# The RTC chunked transfer family. A transfer is announced with FILE_META, accepted (or
# resumed) with FILE_ACCEPT, carried by binary chunks, closed by FILE_END and confirmed by
# FILE_ACK after the receiver checked size and SHA-256.


@frame_type("FILE_META")
class FileMeta(Frame):
    """Sender -> receiver: a file of ``size`` bytes and this SHA-256 follows in chunks."""

    transfer_id: str = hex_digits(32)
    name: str = text(greedy=True)
    size: int = integer()
    sha256: str = hex_digits(64)
    chunk_size: int = integer()


@frame_type("FILE_ACCEPT")
class FileAccept(Frame):
    """Receiver -> sender: send from byte ``offset`` on (0 for a new transfer, more to resume).

    A resume (``offset`` > 0) carries ``prefix_sha256``, the SHA-256 of the bytes the receiver
    holds: the sender continues only when they are its own file's first ``offset`` bytes, and
    otherwise sends from byte 0, which makes the receiver start over."""

    transfer_id: str = hex_digits(32)
    offset: int = integer()
    prefix_sha256: str | None = hex_digits(64, optional=True)


@frame_type("FILE_END")
class FileEnd(Frame):
    """Sender -> receiver: every chunk of the transfer has been sent."""

    transfer_id: str = hex_digits(32)


@frame_type("FILE_ACK")
class FileAck(Frame):
    """Receiver -> sender: the whole file arrived, its SHA-256 matched, it is in place."""

    transfer_id: str = hex_digits(32)
    sha256: str = hex_digits(64)


@frame_type("FILE_ERROR")
class FileError(Frame):
    """Either side: the transfer failed and was abandoned; partial data was removed."""

    transfer_id: str = hex_digits(32)
    reason: str = text(greedy=True)


# Verified sharing: before the first path is trusted in a session, the client writes a probe
# file under its root and the worker confirms it reads the same bytes under its own root.


@frame_type("SHARED_PROBE")
class SharedProbe(Frame):
    """Client -> worker: a probe file with this SHA-256 lies at ``relative_path``."""

    sha256: str = hex_digits(64)
    relative_path: str = text(greedy=True)


@frame_type("SHARED_PROBE_RESULT")
class SharedProbeResult(Frame):
    """Worker -> client: ``verified``, ``mismatch``, ``missing`` or ``unavailable``."""

    verdict: str = token()


# Session and job control.


@frame_type("HELLO")
class Hello(Frame):
    """Client -> worker, first frame of a session: protocol version, the client's fresh nonce,
    the transports it offers. The token itself never crosses the wire (see ``rtcxfer.protocol.auth``)."""

    version: int = integer()
    # A token field, not hex: a version-1 HELLO (which held the token here) must still decode,
    # so that its sender hears which version this side speaks. The worker checks the form.
    client_nonce: str = token()
    transports: str = token()


@frame_type("AUTH_CHALLENGE")
class AuthChallenge(Frame):
    """Worker -> client: the worker's fresh nonce; the client must now prove it has the token."""

    worker_nonce: str = hex_digits(64)


@frame_type("AUTH_PROOF")
class AuthProof(Frame):
    """Client -> worker: HMAC proof of the token over both nonces and both DTLS fingerprints."""

    proof: str = hex_digits(64)


@frame_type("WELCOME")
class Welcome(Frame):
    """Worker -> client: authenticated; the transports the worker offers too, and the worker's
    own proof of the token (64 hex digits), or ``none`` from a worker run without a token."""

    version: int = integer()
    transports: str = token()
    worker_proof: str = token()


@frame_type("AUTH_FAILED")
class AuthFailed(Frame):
    """Worker -> client: the session is refused; the worker closes it."""

    reason: str = text(greedy=True)


@frame_type("WORKER_BUSY")
class WorkerBusy(Frame):
    """Worker -> client, in place of ``WELCOME``: the client proved the token, but every job
    slot is taken or the worker is draining; the worker closes the session. The client may try
    another worker of the room, or wait for a slot."""

    reason: str = text(greedy=True)


@frame_type("JOB_SUBMIT")
class JobSubmit(Frame):
    """Client -> worker: a job is coming; its input follows by some transport, and results
    come back by ``results_via`` (a transport name)."""

    job_id: str = token()
    results_via: str = token()


@frame_type("JOB_ACCEPTED")
class JobAccepted(Frame):
    """Worker -> client: the job is registered and waits for its input."""

    job_id: str = token()


class JobState:
    """The states ``JOB_STATUS`` reports (docs/protocol.md, section 6.3)."""

    EXTRACTING = "extracting"
    RUNNING = "running"
    SENDING_RESULTS = "sending-results"
    #: The worker is shutting down and stops the job; ``JOB_FAILED`` follows. Nothing failed in
    #: the job itself: it can be submitted again once a worker is back.
    WORKER_STOPPING = "worker-stopping"


@frame_type("JOB_STATUS")
class JobStatus(Frame):
    """Worker -> client: the job moved to ``state`` (one of :class:`JobState`)."""

    job_id: str = token()
    state: str = token()


@frame_type("JOB_LOG")
class JobLog(Frame):
    """Worker -> client: one line the job printed."""

    job_id: str = token()
    line: str = text(greedy=True)


@frame_type("JOB_PROGRESS")
class JobProgress(Frame):
    """Worker -> client: the job's own progress report, ``done`` of ``total`` units."""

    job_id: str = token()
    done: int = integer()
    total: int = integer()


@frame_type("JOB_CANCEL")
class JobCancel(Frame):
    """Client -> worker: stop the job (its process group gets a grace period)."""

    job_id: str = token()


@frame_type("PROTOCOL_ERROR")
class ProtocolErrorFrame(Frame):
    """Either side: the last frame received could not be understood or was not claimed."""

    reason: str = text(greedy=True)


BUILTIN_FRAME_TYPES: tuple[type[Frame], ...] = (
    WorkerBusy,
    SharedInputPath,
    SharedOutputPath,
    PathValidated,
    PathErrorFrame,
    JobComplete,
    JobFailed,
    FileMeta,
    FileAccept,
    FileEnd,
    FileAck,
    FileError,
    SharedProbe,
    SharedProbeResult,
    Hello,
    AuthChallenge,
    AuthProof,
    Welcome,
    AuthFailed,
    JobSubmit,
    JobAccepted,
    JobStatus,
    JobLog,
    JobProgress,
    JobCancel,
    ProtocolErrorFrame,
)


def reply_to(error: RemoteProtocolError) -> Frame:
    """The frame that tells the peer about ``error``: its own ``reply`` if it has one, else a
    generic ``PROTOCOL_ERROR`` with its text."""
    return error.reply if error.reply is not None else ProtocolErrorFrame(reason=str(error))


# --- the codec ----------------------------------------------------------------------------


def quote_for_reply(text: str) -> str:
    """A short, printable excerpt of peer text, safe to put in an error reply."""
    excerpt = text[:MAX_ECHO_CHARS]
    excerpt = "".join(ch if ch.isprintable() else "?" for ch in excerpt)
    return excerpt + ("..." if len(text) > MAX_ECHO_CHARS else "")


def quote_for_log(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """Peer text made safe for one log line: control characters (newlines, ANSI escapes) and
    other unprintable ones shown as escapes, so a peer can neither forge lines nor recolour
    a terminal; cut at ``limit`` characters."""
    excerpt = text[:limit]
    shown = "".join(ch if ch.isprintable() else _escape(ch) for ch in excerpt)
    return shown + ("..." if len(text) > limit else "")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _split_fields(specs: tuple[FieldSpec, ...], rest: str) -> list[str] | None:
    """Split ``rest`` into ``len(specs)`` raw fields, or ``None`` if the count is wrong."""
    count = len(specs)
    greedy_at = next((i for i, spec in enumerate(specs) if spec.greedy), None)
    if greedy_at is None:
        parts = rest.split(SEPARATOR)
        return parts if len(parts) == count else None
    left = rest.split(SEPARATOR, greedy_at)
    if len(left) != greedy_at + 1:
        return None
    right_count = count - greedy_at - 1
    right = left[-1].rsplit(SEPARATOR, right_count) if right_count else [left[-1]]
    if len(right) != right_count + 1:
        return None
    return left[:-1] + right


class FrameCatalogue:
    """The frame types one session understands, and the codec that uses them."""

    def __init__(self, types: Iterable[type[Frame]] = BUILTIN_FRAME_TYPES) -> None:
        self._by_name: dict[str, type[Frame]] = {}
        for frame_class in types:
            self.register(frame_class)

    def register(self, frame_class: type[Frame]) -> None:
        """Add a frame type; a second, different class for the same name is an error."""
        known = self._by_name.get(frame_class.TYPE)
        if known is not None and known is not frame_class:
            raise LocalProtocolError(
                f"frame type {frame_class.TYPE} is declared twice: {known.__qualname__} and {frame_class.__qualname__}"
            )
        self._by_name[frame_class.TYPE] = frame_class

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._by_name

    def __iter__(self):
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def decode(self, message: object) -> Frame:
        """Decode one data-channel message into a frame.

        Raises :class:`FrameDecodeError` (a :class:`RemoteProtocolError`) for anything that
        is not exactly the encoding of a known frame; no other exception escapes.
        """
        if not isinstance(message, str):
            raise FrameDecodeError("a binary message is never a control frame")
        if len(message) > MAX_FRAME_CHARS:
            raise FrameDecodeError(f"frame longer than {MAX_FRAME_CHARS} characters")
        type_name, separator, rest = message.partition(SEPARATOR)
        frame_class = self._by_name.get(type_name)
        if frame_class is None:
            raise FrameDecodeError(f"unknown frame type: {quote_for_reply(type_name)}")
        specs = frame_class.FIELDS
        if not specs:
            if separator:
                raise FrameDecodeError(f"{type_name} takes no fields")
            return frame_class()
        if not separator:
            raise FrameDecodeError(f"{type_name} needs fields: {', '.join(s.name for s in specs)}")
        required = sum(not spec.optional for spec in specs)
        last_problem: RemoteProtocolError | None = None
        # Optional trailing fields come all together or not at all; the long form is
        # preferred whenever its trailing fields parse.
        for count in dict.fromkeys((len(specs), required)):
            raw_fields = _split_fields(specs[:count], rest)
            if raw_fields is None:
                continue
            try:
                values = {spec.name: spec.parse(raw) for spec, raw in zip(specs, raw_fields)}
            except FrameDecodeError as problem:
                last_problem = problem
                continue
            frame = frame_class(**values)
            if self._encode_unchecked(frame) != message:
                raise FrameDecodeError(f"{type_name} is not in canonical form")
            return frame
        if last_problem is not None:
            raise FrameDecodeError(f"{type_name}: {last_problem}")
        raise FrameDecodeError(f"{type_name} has the wrong number of fields")

    def encode(self, frame: Frame) -> str:
        """Encode ``frame``; raises :class:`LocalProtocolError` if it cannot be written
        so that the peer would decode exactly this frame."""
        if type(frame).TYPE not in self._by_name:
            raise LocalProtocolError(f"frame type {type(frame).TYPE} is not in this catalogue")
        wire = self._encode_unchecked(frame)
        if len(wire) > MAX_FRAME_CHARS:
            raise LocalProtocolError(f"{frame.TYPE} frame is longer than {MAX_FRAME_CHARS} characters")
        if any(spec.optional for spec in type(frame).FIELDS):
            # Optional trailing fields make some short forms read as the long form; refuse
            # to send a frame the peer would understand differently.
            try:
                decoded = self.decode(wire)
            except FrameDecodeError as problem:
                raise LocalProtocolError(f"cannot encode {frame!r}: {problem}") from None
            if decoded != frame:
                raise LocalProtocolError(f"cannot encode {frame!r} unambiguously")
        return wire

    def _encode_unchecked(self, frame: Frame) -> str:
        specs = type(frame).FIELDS
        parts = [frame.TYPE]
        values = [getattr(frame, spec.name) for spec in specs]
        optional = [value for spec, value in zip(specs, values) if spec.optional]
        if all(value is None for value in optional):
            values = values[: len(values) - len(optional)]
        elif any(value is None for value in optional):
            raise LocalProtocolError(f"{frame.TYPE}: optional fields must be given together")
        for spec, value in zip(specs, values):
            parts.append(spec.format(value))
        return SEPARATOR.join(parts)


DEFAULT_CATALOGUE = FrameCatalogue()


def decode(message: object) -> Frame:
    """Decode with the built-in frame types (see :meth:`FrameCatalogue.decode`)."""
    return DEFAULT_CATALOGUE.decode(message)


def encode(frame: Frame) -> str:
    """Encode any frame whose type is declared (built-in or plugin)."""
    catalogue = DEFAULT_CATALOGUE if type(frame).TYPE in DEFAULT_CATALOGUE else FrameCatalogue([type(frame)])
    return catalogue.encode(frame)


# --- binary chunks ------------------------------------------------------------------------

#: Marks a binary message as an rtcxfer chunk, version 1.
CHUNK_MAGIC = b"RX\x01"
#: The chunk header's fields in order, as :mod:`struct` codes, all big-endian (network order).
CHUNK_HEADER_FIELDS = (("magic", "3s"), ("transfer_id", "16s"), ("offset", "Q"))
CHUNK_HEADER_BYTE_ORDER = ">"
_CHUNK_HEADER = struct.Struct(CHUNK_HEADER_BYTE_ORDER + "".join(code for _, code in CHUNK_HEADER_FIELDS))
CHUNK_HEADER_SIZE = _CHUNK_HEADER.size


def pack_chunk_header(transfer_id: str, offset: int) -> bytes:
    """The header that precedes the bytes at ``offset`` of transfer ``transfer_id``."""
    try:
        raw_id = bytes.fromhex(transfer_id)
    except ValueError:
        raise LocalProtocolError(f"transfer id {transfer_id!r} is not hex") from None
    if len(raw_id) != 16 or offset < 0:
        raise LocalProtocolError(f"bad chunk header values: {transfer_id!r}, {offset}")
    return _CHUNK_HEADER.pack(CHUNK_MAGIC, raw_id, offset)


def unpack_chunk(message: bytes | bytearray | memoryview) -> tuple[str, int, memoryview]:
    """Split a binary message into (transfer id, offset, payload) without copying the payload."""
    view = memoryview(message)
    if len(view) < CHUNK_HEADER_SIZE:
        raise FrameDecodeError("binary message shorter than a chunk header")
    magic, raw_id, offset = _CHUNK_HEADER.unpack_from(view)
    if magic != CHUNK_MAGIC:
        raise FrameDecodeError("binary message is not an rtcxfer chunk")
    return raw_id.hex(), offset, view[CHUNK_HEADER_SIZE:]
