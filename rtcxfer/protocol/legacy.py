"""sleap-rtc's legacy data-channel protocol as a sans-IO codec: messages in, events out, and
the exact texts a legacy client expects back.

The protocol (``shared/spec/legacy-protocol.md``) has no framing rule shared by all messages:
``PACKAGE_TYPE::train``, ``FILE_META::{name}:{size}:{gui}`` (single colons inside), bare
literals (``END_OF_FILE``) and raw binary file bytes without any header. :func:`decode` turns
any message into one event and never raises: what it does not recognise becomes
:class:`Unrecognized`, which the worker logs and ignores, as the legacy worker did.

The legacy worker matched most prefixes anywhere in a message (``"X::" in message``); this
codec accepts them only at the start, so text that merely mentions a message type is not
taken for one.

:class:`UploadTracker` is the state of the one upload a legacy session may have open: it
checks every byte count against the announced size, so a size that lies, bytes before
``FILE_META`` and a second upload while one runs are refused before anything is written.

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

import re

import attrs

from rtcxfer.protocol.errors import LocalProtocolError, TransferError
from rtcxfer.protocol.frames import MAX_FRAME_CHARS, Hello

SEPARATOR = "::"
KEEP_ALIVE = b"KEEP_ALIVE"
END_OF_FILE = "END_OF_FILE"
#: What a legacy client sends when no ``OUTPUT_DIR`` came (its hard-coded default).
DEFAULT_OUTPUT_DIR = "models"
#: The legacy worker sends result files in 32 KiB chunks (its ``chunk_size``).
RESULT_CHUNK_SIZE = 32 * 1024
#: The only action ``SHARED_STORAGE_JOB`` knows.
SHARED_START = "start"

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


def speaks_legacy(first_message: object) -> bool:
    """Whether a session whose first message is ``first_message`` speaks the legacy protocol:
    the dialect is chosen per session, ``HELLO`` is rtcxfer's and anything else the legacy one."""
    if not isinstance(first_message, str):
        return True
    return first_message.partition(SEPARATOR)[0] != Hello.TYPE
#: A client's job id (``job_`` + 8 hex from sleap-rtc); anything else is refused.
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


# --- events from the client ---------------------------------------------------------------


@attrs.frozen
class PackageType:
    """``PACKAGE_TYPE::train`` or ``PACKAGE_TYPE::track``."""

    kind: str


@attrs.frozen
class OutputDir:
    """``OUTPUT_DIR::{dir}``: where in the package the job writes its results."""

    path: str


@attrs.frozen
class FileMeta:
    """``FILE_META::{name}:{size}:{gui}``: an upload follows (or, in a shared-storage job,
    only announces the package)."""

    name: str
    size: int
    gui: bool


@attrs.frozen
class FileBytes:
    """A raw binary message: the next bytes of the open upload."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class EndOfFile:
    """``END_OF_FILE``: the upload is complete; run the job."""


@attrs.frozen
class KeepAlive:
    """The binary ``KEEP_ALIVE`` both sides send every 15 s; ignored."""


@attrs.frozen
class ZmqControl:
    """``ZMQ_CTRL::{message}``: the GUI's training control, not supported here."""

    message: str


@attrs.frozen
class JobId:
    """``JOB_ID::{job_id}``: the id the client gives its next shared-storage job."""

    job_id: str


@attrs.frozen
class SharedInputPath:
    """``SHARED_INPUT_PATH::{relative path}``."""

    relative_path: str


@attrs.frozen
class SharedOutputPath:
    """``SHARED_OUTPUT_PATH::{relative path}``."""

    relative_path: str


@attrs.frozen
class SharedStorageJob:
    """``SHARED_STORAGE_JOB::start``."""


@attrs.frozen
class Unrecognized:
    """Anything else: ``reason`` says why, ``excerpt`` is a printable part of the message."""

    reason: str
    excerpt: str


Event = (
    PackageType
    | OutputDir
    | FileMeta
    | FileBytes
    | EndOfFile
    | KeepAlive
    | ZmqControl
    | JobId
    | SharedInputPath
    | SharedOutputPath
    | SharedStorageJob
    | Unrecognized
)


def excerpt(text: str, limit: int = 80) -> str:
    """A printable, bounded rendering of peer text for logs (no control characters)."""
    shown = ascii(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _unrecognized(reason: str, text: str) -> Unrecognized:
    return Unrecognized(reason, excerpt(text))


def _file_meta(rest: str, text: str) -> Event:
    fields = rest.split(":")
    if len(fields) != 3:
        # A name holding ':' breaks sleap-rtc's own parser too (an exception in its handler).
        return _unrecognized("FILE_META needs exactly three ':'-separated fields", text)
    name, size, gui = fields
    if not name:
        return _unrecognized("FILE_META has an empty file name", text)
    if not _SIZE.fullmatch(size):
        return _unrecognized("FILE_META size is not a non-negative integer", text)
    # The legacy worker's own rule: anything but "true" (in any case) is False.
    return FileMeta(name, int(size), gui.lower() == "true")


def decode(message: object) -> Event:
    """The event a legacy client's message stands for. Never raises."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        data = bytes(message)
        return KeepAlive() if data == KEEP_ALIVE else FileBytes(data)
    if not isinstance(message, str):
        return Unrecognized("not a data-channel message", type(message).__name__)
    if len(message) > MAX_FRAME_CHARS:
        return _unrecognized(f"longer than {MAX_FRAME_CHARS} characters", message)
    if message == END_OF_FILE:
        return EndOfFile()
    kind, separator, rest = message.partition(SEPARATOR)
    if not separator:
        return _unrecognized("not a message of the legacy protocol", message)
    if kind == "FILE_META":
        return _file_meta(rest, message)
    if kind == "PACKAGE_TYPE":
        if rest in ("train", "track"):
            return PackageType(rest)
        return _unrecognized("PACKAGE_TYPE is neither train nor track", message)
    if kind == "OUTPUT_DIR":
        return OutputDir(rest)
    if kind == "ZMQ_CTRL":
        return ZmqControl(rest)
    if kind == "JOB_ID":
        if _JOB_ID.fullmatch(rest):
            return JobId(rest)
        return _unrecognized("JOB_ID is not a plain identifier", message)
    if kind == "SHARED_INPUT_PATH":
        return SharedInputPath(rest)
    if kind == "SHARED_OUTPUT_PATH":
        return SharedOutputPath(rest)
    if kind == "SHARED_STORAGE_JOB":
        if rest == SHARED_START:
            return SharedStorageJob()
        return _unrecognized("SHARED_STORAGE_JOB knows only 'start'", message)
    return _unrecognized("unknown message type", message)


# --- texts to the client --------------------------------------------------------------------


def _plain(value: str, what: str) -> str:
    if ":" in value or "\n" in value or "\r" in value:
        raise LocalProtocolError(f"{what} {value!r} cannot be written in a legacy message")
    return value


def result_meta(name: str, size: int, output_dir: str) -> str:
    """``FILE_META::{name}:{size}:{output_dir}``, announcing a result file."""
    return f"FILE_META::{_plain(name, 'file name')}:{size}:{_plain(output_dir, 'output dir')}"


def job_complete(job_id: str, relative_output: str) -> str:
    """``JOB_COMPLETE::{job_id}::{relative output path}`` (sleap-rtc's two-field form)."""
    return f"JOB_COMPLETE::{job_id}{SEPARATOR}{relative_output}"


def job_failed(job_id: str, reason: str) -> str:
    return f"JOB_FAILED::{job_id}{SEPARATOR}{reason}"


@attrs.frozen
class JobTexts:
    """What a legacy client of one package type reads while its job runs.

    ``train`` (sleap-rtc's client): ``TRAIN_JOB_START::{name}``, raw output lines,
    ``TRAIN_JOB_END::{name}`` or ``TRAIN_JOB_ERROR::{name}::{code}``, ``TRAINING_JOBS_DONE``.
    ``track`` (its tracking client): ``INFERENCE_START``, ``INFERENCE_JOB_START::inference``,
    ``TRACK_LOG:{line}`` (one colon), ``INFERENCE_JOB_END::inference`` or
    ``INFERENCE_JOB_ERROR::inference::{code}``, ``INFERENCE_JOBS_DONE``.
    """

    script: str
    opening: str | None
    start_format: str
    end_format: str
    error_format: str
    line_format: str
    done: str
    #: The job name the texts use, when the type fixes one.
    fixed_name: str | None = None
    #: Sent instead of running when the package has no script (None: run it anyway, so the
    #: shell reports the missing file as the job's own output).
    missing_script: str | None = None

    def name_for(self, name: str) -> str:
        return self.fixed_name or name

    def start(self, name: str) -> str:
        return self.start_format.format(name=self.name_for(name))

    def end(self, name: str) -> str:
        return self.end_format.format(name=self.name_for(name))

    def error(self, name: str, code: int) -> str:
        return self.error_format.format(name=self.name_for(name), code=code)

    def line(self, text: str) -> str:
        return self.line_format.format(line=text)


JOB_TEXTS = {
    "train": JobTexts(
        script="train-script.sh",
        opening=None,
        start_format="TRAIN_JOB_START::{name}",
        end_format="TRAIN_JOB_END::{name}",
        error_format="TRAIN_JOB_ERROR::{name}::{code}",
        line_format="{line}\n",
        done="TRAINING_JOBS_DONE",
    ),
    "track": JobTexts(
        script="track-script.sh",
        opening="INFERENCE_START",
        start_format="INFERENCE_JOB_START::{name}",
        end_format="INFERENCE_JOB_END::{name}",
        error_format="INFERENCE_JOB_ERROR::{name}::{code}",
        line_format="TRACK_LOG:{line}",
        done="INFERENCE_JOBS_DONE",
        fixed_name="inference",
        missing_script="INFERENCE_ERROR::No track script found",
    ),
}


def result_name(package_name: str) -> str:
    """``trained_{stem}.zip`` for the package ``{stem}.zip``, as sleap-rtc names results."""
    return f"trained_{package_stem(package_name)}.zip"


def package_stem(package_name: str) -> str:
    """The folder a legacy package holds at its top: its name without ``.zip``."""
    return package_name[:-4] if package_name.lower().endswith(".zip") and len(package_name) > 4 else package_name


# --- the one upload of a session ----------------------------------------------------------


class UploadRefused(TransferError):
    """The client's upload message cannot be accepted; the upload (if any) is dropped."""


@attrs.define
class Upload:
    """An announced upload and how many of its bytes arrived."""

    name: str
    size: int
    received: int = 0

    @property
    def started(self) -> bool:
        return self.received > 0


class UploadTracker:
    """Counts the bytes of the one upload a legacy session may have open.

    ``announce`` opens it (replacing an announcement that got no bytes yet, as when a
    shared-storage attempt fell back to sending the bytes); ``feed`` counts each binary
    message; ``finish`` closes it at ``END_OF_FILE``. Each raises :class:`UploadRefused` when
    the client breaks the rules; a size that lies also drops the upload, so that no partial
    file is ever taken for a whole one.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.current: Upload | None = None

    def announce(self, meta: FileMeta) -> Upload:
        if self.current is not None and self.current.started:
            raise UploadRefused(
                f"upload of {excerpt(meta.name)} refused: {excerpt(self.current.name)} is still being received"
            )
        if meta.size > self.max_size:
            raise UploadRefused(f"upload of {excerpt(meta.name)} refused: larger than {self.max_size} bytes")
        self.current = Upload(meta.name, meta.size)
        return self.current

    def feed(self, count: int) -> Upload:
        upload = self.current
        if upload is None:
            raise UploadRefused("file bytes before FILE_META are refused")
        if upload.received + count > upload.size:
            self.current = None
            raise UploadRefused(
                f"upload of {excerpt(upload.name)} dropped: more bytes than the announced {upload.size}"
            )
        upload.received += count
        return upload

    def finish(self) -> Upload:
        upload, self.current = self.current, None
        if upload is None:
            raise UploadRefused("END_OF_FILE without an upload is refused")
        if upload.received != upload.size:
            raise UploadRefused(
                f"upload of {excerpt(upload.name)} dropped: {upload.received} bytes arrived, {upload.size} announced"
            )
        return upload

    def discard_unstarted(self) -> None:
        """Forget an announcement no bytes followed (a shared-storage job's FILE_META)."""
        if self.current is not None and not self.current.started:
            self.current = None

    def abort(self) -> Upload | None:
        upload, self.current = self.current, None
        return upload
