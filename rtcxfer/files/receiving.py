"""Receiving one file: the API every transport that moves a file's bytes uses.

A file a peer sends goes through the same steps whatever carries its bytes (``rtc-chunked``
chunks, ``direct`` records on a TLS connection, an object in an S3 bucket, a legacy upload)::

    incoming = await IncomingFile.open(incoming_dir, transfer_id=..., name=..., size=..., ...)
    # announce: the peer's name checked, its directory opened beneath incoming_dir (no
    #           symlink followed), free space reserved, a partial adopted and its prefix hashed
    reply(accept at incoming.offset)     # the sender continues from there
    incoming.write(data) ...             # hashed as written, handed to the disk as it arrives
    received = await incoming.complete(sha256, acknowledge=..., deliver=context.deliver)
    # verify (size, SHA-256) -> publish (fsync, rename, fsync of the directory) -> acknowledge
    # -> deliver; or, on any failure, incoming.abandon(keep=True) to keep the partial for a resume

Steps, one method each (:class:`IncomingFile`):

* **announce** (:meth:`IncomingFile.open`): the name must be a plain relative path
  (:func:`checked_name`); its directory is created and opened beneath ``incoming_dir`` with
  :func:`~rtcxfer.files.paths.open_directory_beneath`, and every later step (create, rename,
  unlink, fsync) goes through that descriptor, so nothing outside ``incoming_dir`` is touched
  even if a symlink appears later.
* **reserve space**: the file's missing bytes must fit in its filesystem's free space *minus
  what files already being received in this process were promised there*, so many
  announcements at once cannot each count the same free bytes
  (:class:`NotEnoughSpaceError`).
* **resume**: the bytes go to ``.<basename>.<transfer_id>.part`` beside the final name, never
  to the final name itself. A partial of the same transfer id (left by an interrupted transfer,
  or kept from an earlier session in ``kept_partials_dir``, see
  :mod:`rtcxfer.files.kept_partials`) is adopted: its prefix is hashed again, so the final
  check covers the whole file, and :attr:`IncomingFile.offset` says where the sender goes on.
  Transfer ids are deterministic (:func:`transfer_id_for`, :func:`transfer_id_for_file`), so
  the same file sent again, in a new session or by another transport, finds its partial. A
  partial still being written by a session that has not noticed its connection died is taken
  over from it.
* **write-behind** (:meth:`IncomingFile.write`): the bytes are hashed as they are written and
  handed to the disk as they arrive (:mod:`rtcxfer.files.write_behind`), so the final fsync
  waits for the last few MiB only.
* **verify** (:meth:`IncomingFile.verify`): size, and SHA-256 when one was announced, before
  or after the bytes. Without an announced SHA-256 (a legacy upload) the size alone is checked
  and the SHA-256 of what was written is still returned.
* **publish** (:meth:`IncomingFile.publish`): fsync the partial, rename it onto the final name,
  fsync the directory; returns the :class:`~rtcxfer.transport.base.ReceivedFile`.
  :meth:`IncomingFile.complete` does verify, publish, the transport's acknowledgement and the
  hand-over to the application, in that order.
* **clean up** (:meth:`IncomingFile.abandon`): keep the partial for a resume, or remove it. A
  failed :meth:`~IncomingFile.verify` or :meth:`~IncomingFile.publish` removes it by itself.
* **unpack while receiving** (``unpack``, the application's
  :data:`~rtcxfer.files.unpacking.UnpackerFactory`, e.g. ``TransportContext.unpack``): a file
  that starts arriving from its first byte may go to an :class:`~rtcxfer.files.unpacking.Unpacker`
  instead of being written whole (the worker extracts its job's package as it arrives). The
  partial then holds only the bytes the unpacker gave back (sparse, at their offsets);
  :meth:`~IncomingFile.complete` verifies the SHA-256 first, then lets the unpacker check the
  whole, removes the partial and hands over a :class:`~rtcxfer.transport.base.ReceivedFile`
  whose ``unpacked`` (or ``unpack_error``) says what came of it. What the unpacker cannot
  handle (:class:`~rtcxfer.files.unpacking.CannotUnpack`) is written back into the partial (in
  a thread while the rest is written as usual; :meth:`~IncomingFile.complete` waits for it) and
  the file goes on as usual; so does an interrupted transfer kept for a resume (written back in
  a thread before the partial is let go). A partial being unpacked is never taken over.

Threads and the event loop: every method runs on the event loop's thread except
:meth:`~IncomingFile.write`. The steps that scale with the file (hashing a resumed prefix,
fsync) never run on the loop: :meth:`~IncomingFile.open`, :meth:`~IncomingFile.publish` and
:meth:`~IncomingFile.complete` are coroutines that run them in a thread. :meth:`~IncomingFile.write`
blocks for one write and one hash update: fine on the loop for a 64 KiB chunk
(``rtc-chunked``); a receiver that moves MiB at a time writes from a thread lent the file by
:meth:`~IncomingFile.run_in_thread`. :meth:`~IncomingFile.abandon` never fsyncs; while a thread
works on the file it only marks it (the thread's next write raises) and finishes when that
thread returns.

Errors: :class:`~rtcxfer.protocol.errors.TransferError` (size or hash:
:class:`~rtcxfer.protocol.errors.IntegrityError`; free space: :class:`NotEnoughSpaceError`)
whose text is safe to send to the peer: it never holds a local path. Each transport wraps it
in its own reply. Local details go to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

import attrs

from rtcxfer.files.paths import (
    OUTSIDE_ROOT_MESSAGE,
    check_relative_text,
    create_fresh_at,
    fsync_directory_at,
    open_directory_beneath,
    open_for_update_at,
)
from rtcxfer.files.unpacking import CannotUnpack, Unpacker, UnpackerFactory
from rtcxfer.files.write_behind import WriteBehind
from rtcxfer.log import logger
from rtcxfer.protocol.errors import (
    ArchiveError,
    ConnectionClosedError,
    IntegrityError,
    LocalProtocolError,
    PathError,
    StorageFullError,
    TransferError,
    UnsafePathError,
    describe,
)
from rtcxfer.protocol.frames import quote_for_log, quote_for_reply
from rtcxfer.transport.base import ReceivedFile

__all__ = [
    "PART_NAME",
    "REASON_HASH",
    "REASON_INCOMPLETE",
    "REASON_SENDER_CANCELLED",
    "IncomingFile",
    "NotEnoughSpaceError",
    "SendReport",
    "checked_name",
    "hash_file",
    "hash_prefix",
    "is_being_received",
    "is_receiving_into",
    "is_restoring_into",
    "new_transfer_id",
    "part_name",
    "transfer_id_for",
    "transfer_id_for_file",
]

#: Block size for hashing whole files off the loop.
HASH_BLOCK = 1024 * 1024

# Reasons the receiver gives after the end of the bytes; senders map them to IntegrityError.
REASON_HASH = "SHA-256 mismatch"
REASON_INCOMPLETE = "incomplete"
#: What a sender that was stopped (Ctrl-C) tells the receiver: keep the partial for a re-run.
REASON_SENDER_CANCELLED = "cancelled by the sender"

#: The name of a partial file: ``.<basename>.<transfer id>.part``.
PART_NAME = re.compile(r"\..*\.[0-9a-f]{32}\.part", re.DOTALL)
TRANSFER_ID = re.compile(r"[0-9a-f]{32}")
# Keeps ".<base>.<id>.part" within the usual 255-byte file name limit.
_PART_BASE_BYTES = 200

_Result = TypeVar("_Result")


class NotEnoughSpaceError(TransferError):
    """The file's missing bytes do not fit in the free space of its filesystem, once the space
    promised to files already being received is set aside."""


# --- transfer ids, names, hashes ----------------------------------------------------------


def transfer_id_for(role: str, name: str, size: int, content: str) -> str:
    """The deterministic id of sending this file as ``name`` from the ``role`` side.

    ``content`` identifies the bytes: their SHA-256 (rtc-chunked) or the file's device, inode
    and modification time (:func:`transfer_id_for_file`). The same file sent again (a new
    session after a drop) gets the same id and so resumes; the role keeps the two directions of
    one session apart.
    """
    key = "\0".join((role, name, str(size), content)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).hexdigest()[:32]


def transfer_id_for_file(role: str, path: str | os.PathLike[str], name: str) -> tuple[str, int]:
    """(transfer id, size) of sending the local file ``path`` as ``name``, from the file's
    identity and modification time rather than its bytes, so no hashing pass comes first: the
    same unchanged file gets the same id in a later session (and so resumes), a modified one a
    new id. The receiver's whole-file SHA-256 check still covers a resumed prefix. Blocking
    (one ``stat``)."""
    info = os.stat(path)
    identity = f"{info.st_dev}:{info.st_ino}:{info.st_mtime_ns}"
    return transfer_id_for(role, name, info.st_size, identity), info.st_size


def new_transfer_id() -> str:
    """A random transfer id, for a file that must never resume (one whose bytes no SHA-256
    will cover, such as a legacy upload)."""
    return secrets.token_hex(16)


def part_name(basename: str, transfer_id: str) -> str:
    """The partial file's name beside ``basename``: ``.<basename>.<transfer_id>.part``."""
    base = basename.encode("utf-8")[:_PART_BASE_BYTES].decode("utf-8", "ignore")
    return f".{base}.{transfer_id}.part"


def hash_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, SHA-256 hex) of a local file, read in 1 MiB blocks. Blocking: run in a thread."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def hash_prefix(path: str | os.PathLike[str], length: int) -> str | None:
    """The SHA-256 (hex) of a local file's first ``length`` bytes; ``None`` when it is shorter.
    Blocking: run in a thread."""
    with open(path, "rb", buffering=0) as handle:
        try:
            return _hash_prefix(handle, length).hexdigest()
        except OSError:
            return None


def _hash_prefix(handle: BinaryIO, length: int) -> Any:
    """A sha256 object fed with the first ``length`` bytes of ``handle``. Blocking."""
    digest = hashlib.sha256()
    handle.seek(0)
    remaining = length
    while remaining:
        block = handle.read(min(HASH_BLOCK, remaining))
        if not block:
            raise OSError("partial file shrank while being hashed")
        digest.update(block)
        remaining -= len(block)
    return digest


def checked_name(name: str) -> PurePosixPath:
    """The relative path a peer asked to write, or :class:`TransferError` saying why not.

    Anything :func:`~rtcxfer.files.paths.check_relative_text` refuses, and names shaped like a
    partial file (so a peer cannot write over another transfer's partial).
    """
    try:
        relative = check_relative_text(name)
    except UnsafePathError as error:
        reason = "name escapes the destination directory" if str(error) == OUTSIDE_ROOT_MESSAGE else str(error)
        raise TransferError(f"unsafe name: {reason}") from None
    if PART_NAME.fullmatch(relative.name):
        raise TransferError("unsafe name: reserved for partial files")
    return relative


@attrs.frozen
class SendReport:
    """What one ``send_file`` call of a byte-moving transport did on the wire."""

    transfer_id: str
    name: str
    size: int
    #: Where the receiver asked to start (more than 0 when it resumed a partial).
    offset: int
    #: Payload bytes this call sent.
    bytes_sent: int


# --- files being received in this process --------------------------------------------------

# By (directory, partial name). A new session resuming a file takes the partial over from a
# session that has not yet noticed its connection died; free space is reserved against them.
# Changed on the event loop's thread only.
_RECEIVING: dict[tuple[str, str], IncomingFile] = {}


def is_receiving_into(directory: str | os.PathLike[str]) -> bool:
    """Whether a file of this process is still being received at the top of ``directory``."""
    names = {str(directory), str(Path(directory).resolve())}
    return any(folder in names and not incoming.detached for (folder, _), incoming in list(_RECEIVING.items()))


def is_restoring_into(directory: str | os.PathLike[str]) -> bool:
    """Whether a file of this process at the top of ``directory`` is writing the bytes its
    unpacker held back into its partial (a transfer stopped part-way, kept for a resume)."""
    names = {str(directory), str(Path(directory).resolve())}
    return any(folder in names and incoming.restoring for (folder, _), incoming in list(_RECEIVING.items()))


def is_being_received(directory: str | os.PathLike[str], partial: str) -> bool:
    """Whether the partial file named ``partial`` in ``directory`` belongs to a file this
    process is receiving."""
    return (str(Path(directory).resolve()), partial) in _RECEIVING


def _promised_bytes(device: int | None, excluding: IncomingFile) -> int:
    """Bytes the files being received on ``device`` still expect, except ``excluding``'s."""
    return sum(
        incoming.outstanding
        for incoming in _RECEIVING.values()
        if incoming is not excluding and not incoming.detached and incoming.device == device
    )


# --- one incoming file ----------------------------------------------------------------------


class IncomingFile:
    """One file this side is receiving: from its announcement to its final name (or its end).

    Made by :meth:`open`. Attributes: :attr:`transfer_id`, :attr:`name`, :attr:`size`,
    :attr:`sha256` (announced, or ``None``), :attr:`transport`, :attr:`offset` (bytes already
    there when it was opened: where the sender continues), :attr:`received` (bytes in the
    partial now), :attr:`path` (the final name).
    """

    def __init__(
        self,
        root: Path,
        relative: PurePosixPath,
        *,
        transfer_id: str,
        name: str,
        size: int,
        sha256: str | None,
        transport: str,
    ) -> None:
        self.transfer_id = transfer_id
        self.name = name
        self.size = size
        self.sha256 = sha256
        self.transport = transport
        self.relative = relative
        self.offset = 0
        self.received = 0
        #: Filesystem (``st_dev``) of the partial, for the space promised to open files.
        self.device: int | None = None
        self._root = root
        self._part_name = part_name(relative.name, transfer_id)
        self._directory: Path | None = None
        self._dir_fd = -1
        self._handle: BinaryIO | None = None
        self._digest: Any = hashlib.sha256()
        self._prefix_sha256: str | None = None
        self._write_behind: WriteBehind | None = None
        self._free: int | None = None
        self._owns_partial = False
        self._threads = 0
        self._pending_keep: bool | None = None
        self._stopping = False
        self._detached = False
        self._closed = False
        self._published = False
        self._verified: str | None = None
        self._last_activity = time.monotonic()
        #: Takes the bytes instead of the partial while the file is unpacked as it arrives.
        self._unpacker: Unpacker | None = None
        #: Why the unpacker refused the bytes: the rest are only hashed.
        self._unpack_error: Exception | None = None
        self._restoring = False
        #: A thread writing back what the unpacker held, while the rest is written as usual.
        self._written_back: asyncio.Future | None = None
        #: The partial lacks bytes the unpacker held (writing them back failed): never kept.
        self._partial_broken = False

    def __repr__(self) -> str:
        return f"<IncomingFile {self.transport} {quote_for_log(self.name)} {self.received}/{self.size}>"

    # --- properties ---------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """Where the file is placed once published (under the resolved ``incoming_dir``)."""
        return (self._directory or self._root / self.relative.parent) / self.relative.name

    @property
    def partial_path(self) -> Path:
        """The partial file, for logs and tests; work goes through the directory's descriptor."""
        return (self._directory or self._root / self.relative.parent) / self._part_name

    @property
    def outstanding(self) -> int:
        """Bytes this file has been promised and not yet written."""
        return max(0, self.size - self.received)

    @property
    def idle_seconds(self) -> float:
        """Seconds since the announcement or the last :meth:`write`."""
        return time.monotonic() - self._last_activity

    @property
    def busy(self) -> bool:
        """A thread works on the file (prefix hashing, a lent writer, fsync)."""
        return self._threads > 0

    @property
    def detached(self) -> bool:
        """Another session took the partial over: this one may neither write nor remove it."""
        return self._detached

    @property
    def published(self) -> bool:
        """The file has its final name (or, unpacked as it arrived, was handed over)."""
        return self._published

    @property
    def unpacking(self) -> bool:
        """The file is unpacked as it arrives (or was refused by its unpacker): its partial
        holds only what the unpacker gave back."""
        return self._unpacker is not None or self._unpack_error is not None

    @property
    def restoring(self) -> bool:
        """A thread writes what the unpacker held back into the partial, to keep it."""
        return self._restoring

    @property
    def finished(self) -> bool:
        """Published or abandoned: nothing more to do with it."""
        return self._closed

    # --- announce, reserve, resume --------------------------------------------------------

    @classmethod
    async def open(
        cls,
        incoming_dir: str | os.PathLike[str],
        *,
        transfer_id: str,
        name: str,
        size: int,
        sha256: str | None = None,
        transport: str,
        kept_partials_dir: str | os.PathLike[str] | None = None,
        max_size: int | None = None,
        resume: bool = True,
        unpack: UnpackerFactory | None = None,
    ) -> IncomingFile:
        """Start receiving the file a peer announced as ``name`` (``size`` bytes).

        Checks the name and ``max_size`` before touching the disk, opens the destination
        directory beneath ``incoming_dir`` (creating it), reserves space, and opens the partial:
        with ``resume``, a partial of the same ``transfer_id`` beside the final name, or one
        kept in ``kept_partials_dir``, is adopted and its prefix hashed (in a thread);
        :attr:`offset` is then its length. Without ``resume`` any such partial is replaced.
        ``sha256`` is the announced hash, if the sender gives it before the bytes. A file that
        starts from its first byte is offered to ``unpack`` (see the module's docstring).

        Raises :class:`TransferError` with a reason fit for the peer
        (:class:`NotEnoughSpaceError` for free space). Cancelling it leaves nothing open.
        """
        if not TRANSFER_ID.fullmatch(transfer_id):
            raise TransferError("transfer id is not 32 lowercase hex digits")
        relative = checked_name(name)
        if size < 0:
            raise TransferError(f"size {size} is negative")
        if max_size is not None and size > max_size:
            raise TransferError(f"size {size} exceeds the limit of {max_size} bytes")
        incoming = cls(
            Path(incoming_dir),
            relative,
            transfer_id=transfer_id,
            name=name,
            size=size,
            sha256=sha256,
            transport=transport,
        )
        try:
            await incoming._open(Path(kept_partials_dir) if kept_partials_dir is not None and resume else None, resume)
            if unpack is not None and incoming.offset == 0:
                incoming._start_unpacking(unpack)
        except BaseException:
            incoming.abandon(keep=True)
            raise
        return incoming

    async def _open(self, kept_dir: Path | None, resume: bool) -> None:
        try:
            await self.run_in_thread(self._open_directory)
        except (PathError, StorageFullError, OSError) as error:
            logger.warning(
                "{}: destination of {} unusable: {}", self.transport, quote_for_reply(self.name), describe(error)
            )
            raise TransferError("destination directory is not usable") from None
        self._claim()
        try:
            await self.run_in_thread(self._open_partial, kept_dir, resume)
        except (PathError, StorageFullError, OSError) as error:
            logger.warning("{}: cannot open partial {}: {}", self.transport, self.partial_path, describe(error))
            raise TransferError("cannot create the partial file") from None
        self._reserve()

    def _start_unpacking(self, unpack: UnpackerFactory) -> None:
        try:
            self._unpacker = unpack(self.name, self.size)
        except (ArchiveError, StorageFullError, OSError) as error:
            logger.warning("{}: {} is written whole: {}", self.transport, quote_for_log(self.name), describe(error))
        if self._unpacker is not None:
            logger.debug("{}: {} is unpacked as it arrives", self.transport, quote_for_log(self.name))

    def _open_directory(self) -> None:
        """Create and open the destination directory beneath the root. Blocking."""
        self._root.mkdir(parents=True, exist_ok=True)
        root = self._root.resolve()
        parent = self.relative.parent.as_posix()
        self._dir_fd = open_directory_beneath(root, parent, create=True)
        self._directory = root / self.relative.parent

    @property
    def _key(self) -> tuple[str, str]:
        return (str(self._directory), self._part_name)

    def _claim(self) -> None:
        """Become the writer of the partial, taking it over from an idle older session."""
        holder = _RECEIVING.get(self._key)
        if holder is not None:
            # An unpacking holder's partial has holes until it is given back: never adopted.
            if holder.busy or holder.unpacking:
                raise TransferError("transfer busy in another session; retry later")
            logger.info("{}: taking {} over from an older session", self.transport, self.partial_path)
            holder._detach()
        _RECEIVING[self._key] = self

    def _detach(self) -> None:
        self._detached = True
        self._close_handle()

    def _open_partial(self, kept_dir: Path | None, resume: bool) -> None:
        """Adopt, check and open the partial (hashing a resumed prefix). Blocking."""
        if kept_dir is not None:
            self._adopt_kept_partial(kept_dir)
        existing = self._partial_stat()
        if existing is not None and (not resume or not stat.S_ISREG(existing.st_mode) or existing.st_size > self.size):
            if resume:
                logger.info("{}: discarding unusable partial {}", self.transport, self.partial_path)
            self._unlink_partial()
            existing = None
        self._owns_partial = True
        if existing is not None:
            self._handle = open_for_update_at(self._dir_fd, self._part_name)
            length = existing.st_size
            self._digest = _hash_prefix(self._handle, length)
            self._prefix_sha256 = self._digest.copy().hexdigest()
            self._handle.seek(length)
            self._handle.truncate()
            self.offset = self.received = length
        else:
            self._handle = create_fresh_at(self._dir_fd, self._part_name)
        fd = self._handle.fileno()
        self._write_behind = WriteBehind(fd, self.received)
        self.device = os.fstat(fd).st_dev
        try:
            info = os.fstatvfs(fd)
            self._free = info.f_bavail * info.f_frsize
        except OSError:
            self._free = None

    def _adopt_kept_partial(self, kept_dir: Path) -> None:
        """Move ``kept_dir``'s partial of this transfer (if any) to where it is resumed."""
        if self._partial_stat() is not None:
            return
        source = kept_dir / self._part_name
        try:
            if not stat.S_ISREG(os.lstat(source).st_mode):
                return
            os.rename(source, self._part_name, dst_dir_fd=self._dir_fd)
        except FileNotFoundError:
            return  # none kept, or another session adopted it first
        except OSError as error:
            logger.warning("{}: could not resume kept partial {}: {}", self.transport, self._part_name, error)
            return
        logger.info("{}: resuming {} from a partial kept from an earlier session", self.transport, self.partial_path)

    def _partial_stat(self) -> os.stat_result | None:
        try:
            return os.stat(self._part_name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _reserve(self) -> None:
        """Refuse the file unless its missing bytes fit in the free space not yet promised."""
        promised = _promised_bytes(self.device, excluding=self)
        if self._free is not None and self.outstanding > self._free - promised:
            logger.warning(
                "{}: refused {} ({} bytes missing): {} bytes free, {} promised to files being received",
                self.transport,
                quote_for_log(self.name),
                self.outstanding,
                self._free,
                promised,
            )
            raise NotEnoughSpaceError("not enough free space for the file")

    # --- write ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the partial and to its hash; the disk starts writing it back while
        more arrives. Blocking (one write): call it on the loop for small pieces, or from the
        thread :meth:`run_in_thread` lends the file to.

        Raises :class:`TransferError` when the file was abandoned or taken over by another
        session (the writer should stop), for bytes beyond the announced size, and when the
        disk refuses them ("cannot write the file"; details in the log).
        """
        if self._detached:
            raise TransferError("transfer resumed in another session")
        handle = self._handle
        if self._stopping or self._closed or handle is None:
            raise TransferError("transfer abandoned on this side")
        if self._partial_broken:
            raise TransferError("cannot write the file")
        length = len(data)
        if self.received + length > self.size:
            raise TransferError(f"data beyond the announced size of {self.size} bytes")
        if self._unpacker is not None:
            self._feed(self._unpacker, data, length)
        elif self._unpack_error is None:
            try:
                handle.write(data)
            except OSError as error:
                logger.warning("{}: writing {} failed: {}", self.transport, self.partial_path, error)
                raise TransferError("cannot write the file") from None
            assert self._write_behind is not None
            self._write_behind.written(length)
        self._digest.update(data)
        self.received += length
        self._last_activity = time.monotonic()

    # --- unpacking while receiving --------------------------------------------------------

    def _feed(self, unpacker: Unpacker, data: bytes | bytearray | memoryview, length: int) -> None:
        """``data`` to the unpacker; what it cannot take, written as usual from now on."""
        try:
            unpacker.feed(memoryview(data), self._keep)
        except CannotUnpack:
            self._unpacker = None
            end = self.received + length
            handle = self._handle
            assert handle is not None and self._write_behind is not None
            handle.seek(end)  # the rest is appended as usual; what the unpacker held lies before
            self._write_behind.close()
            self._write_behind = WriteBehind(handle.fileno(), end)
            self._write_back(unpacker, end)
        except (ArchiveError, StorageFullError, OSError) as error:
            # The peer's bytes, unusable: hashed to their end (the verdict waits for the
            # SHA-256), never written; the error goes with the file to the application.
            logger.warning("{}: {} cannot be unpacked: {}", self.transport, quote_for_log(self.name), describe(error))
            self._unpacker = None
            self._unpack_error = error
            unpacker.discard()

    def _keep(self, offset: int, data: memoryview) -> None:
        """The unpacker's ``keep``: bytes it does not store go to the partial at ``offset``."""
        handle = self._handle
        if handle is None:
            raise TransferError("transfer abandoned on this side")
        try:
            _write_at(handle.fileno(), offset, data)
        except OSError as error:
            logger.warning("{}: writing {} failed: {}", self.transport, self.partial_path, error)
            raise TransferError("cannot write the file") from None

    def _write_back(self, unpacker: Unpacker, end: int) -> None:
        """What ``unpacker`` held of the file's first ``end`` bytes, back into the partial: in a
        thread when this runs on the event loop (the writes that follow go on meanwhile, after
        ``end``; :meth:`complete` waits for it), else right here (a lent thread)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            try:
                self._restore(unpacker, end, truncate=False)
            except TransferError:
                self._partial_broken = True
                raise
            return

        def restore() -> bool:
            try:
                self._restore(unpacker, end, truncate=False)
            except TransferError:
                return False
            return True

        def restored(done: asyncio.Future) -> None:
            self._restoring = False
            if done.cancelled() or done.exception() is not None or not done.result():
                self._partial_broken = True
            self._thread_returned()

        self._threads += 1
        self._restoring = True
        self._written_back = loop.run_in_executor(None, restore)
        self._written_back.add_done_callback(restored)

    def _restore(self, unpacker: Unpacker, length: int, *, truncate: bool = True) -> None:
        """Write what ``unpacker`` held back into the partial, which then holds the file's first
        ``length`` bytes (and, unless ``truncate`` is false, no more); drop what it unpacked.
        Blocking: :class:`TransferError` on failure."""
        handle = self._handle
        try:
            if handle is None:
                raise OSError("the partial file is closed")
            fd = handle.fileno()
            unpacker.restore(lambda offset, data: _write_at(fd, offset, data))
            if truncate:
                os.ftruncate(fd, length)
        except (OSError, PathError) as error:
            logger.warning("{}: giving {} back to its partial failed: {}", self.transport, self.name, describe(error))
            raise TransferError("cannot write the file") from None
        finally:
            unpacker.discard()

    def _restore_then_abandon(self, unpacker: Unpacker) -> None:
        """abandon(keep=True) of a file being unpacked: its partial is kept once the bytes the
        unpacker held back are in it (in a thread when a loop runs: it may take seconds)."""
        self._stopping = True
        self._pending_keep = True
        self._restoring = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None

        def restore() -> bool:
            try:
                self._restore(unpacker, self.received)
            except TransferError:
                return False
            return True

        def restored(kept: bool) -> None:
            self._restoring = False
            if not kept:
                self._pending_keep = False
            self._thread_returned()

        self._threads += 1
        if loop is None:
            restored(restore())
            return
        future = loop.run_in_executor(None, restore)
        future.add_done_callback(
            lambda done: restored(not done.cancelled() and done.exception() is None and done.result())
        )

    @property
    def prefix_sha256(self) -> str | None:
        """The SHA-256 of the :attr:`offset` bytes kept from an earlier session (hex), for the
        sender to check against its own file before it continues after them; ``None`` when
        nothing was kept."""
        return self._prefix_sha256

    def start_over(self) -> None:
        """Drop the bytes kept from an earlier session and receive the file from its start
        (the sender found that they are not its file's). Blocking (one truncate)."""
        if self._detached:
            raise TransferError("transfer resumed in another session")
        handle = self._handle
        if self._stopping or self._closed or handle is None:
            raise TransferError("transfer abandoned on this side")
        if self.received != self.offset:
            raise TransferError("a transfer starts over only before its first new byte")
        logger.info("{}: the sender starts {} over: the kept prefix was not its file's", self.transport, self.name)
        try:
            handle.seek(0)
            handle.truncate()
        except OSError as error:
            logger.warning("{}: truncating {} failed: {}", self.transport, self.partial_path, error)
            raise TransferError("cannot write the file") from None
        assert self._write_behind is not None
        self._write_behind.close()
        self._write_behind = WriteBehind(handle.fileno(), 0)
        self._digest = hashlib.sha256()
        self._prefix_sha256 = None
        self.offset = self.received = 0
        self._reserve()

    async def run_in_thread(
        self, function: Callable[..., _Result], *args: Any, executor: Executor | None = None
    ) -> _Result:
        """Run the blocking ``function(*args)`` in a thread (of ``executor``, else the loop's
        default) and lend it this file meanwhile: it may call :meth:`write`; nobody else closes
        the file or takes it over until the function returns, and an :meth:`abandon` waits for
        that (the function's next write raises). Cancelling the caller does not stop the thread:
        the file stays lent until the function returns."""
        loop = asyncio.get_running_loop()

        def lent() -> _Result:
            try:
                return function(*args)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(self._thread_returned)

        self._threads += 1
        try:
            future = loop.run_in_executor(executor, lent)
        except BaseException:
            self._thread_returned()
            raise
        future.add_done_callback(_retrieve)
        return await asyncio.shield(future)

    def _thread_returned(self) -> None:
        self._threads -= 1
        if not self._threads and self._pending_keep is not None:
            keep, self._pending_keep = self._pending_keep, None
            self.abandon(keep=keep)

    # --- verify, publish ------------------------------------------------------------------

    def verify(self, sha256: str | None = None) -> str:
        """The SHA-256 of the received file after checking its size and its hash: ``sha256``,
        else the one announced at :meth:`open`, else none (the size alone is checked).

        On a mismatch the partial is removed and :class:`IntegrityError` says why (its text
        starts with :data:`REASON_INCOMPLETE` or :data:`REASON_HASH`). Call it once the writes
        ended. No I/O.
        """
        if self._detached:
            raise TransferError("transfer resumed in another session")
        if self._closed or self._stopping:
            raise TransferError("transfer abandoned on this side")
        if self.received != self.size:
            self.abandon(keep=False)
            raise IntegrityError(f"{REASON_INCOMPLETE}: received {self.received} of {self.size} bytes")
        digest = self._digest.hexdigest()
        expected = sha256 or self.sha256
        if expected is not None and digest != expected:
            logger.warning(
                "{}: {} arrived with SHA-256 {}, announced {}",
                self.transport,
                quote_for_log(self.name),
                digest,
                expected,
            )
            self.abandon(keep=False)
            raise IntegrityError(f"{REASON_HASH}: the received bytes hash to {digest}")
        self._verified = digest
        return digest

    async def publish(self) -> ReceivedFile:
        """Place the verified file under its final name: fsync, rename, fsync the directory
        (in a thread). A file of that name is replaced. On failure the partial is removed and
        :class:`TransferError` says "cannot store the file"."""
        digest = self._verified
        if digest is None:
            raise LocalProtocolError(f"publish() of {self.name!r} before a successful verify()")
        if self.unpacking:
            raise LocalProtocolError(f"publish() of {self.name!r}, which is unpacked: complete() hands it over")
        try:
            await self.run_in_thread(self._place)
        except OSError as error:
            logger.warning("{}: placing {} failed: {}", self.transport, quote_for_log(self.name), error)
            self.abandon(keep=False)
            raise TransferError("cannot store the file") from None
        except BaseException:
            self.abandon(keep=True)
            raise
        self.abandon(keep=True)  # releases it: nothing is left to keep
        return ReceivedFile(
            name=self.name,
            path=self.path,
            size=self.size,
            transport=self.transport,
            sha256=digest,
            transfer_id=self.transfer_id,
        )

    def _place(self) -> None:
        """fsync, close, rename onto the final name, fsync the directory. Blocking."""
        handle = self._handle
        if handle is None:
            raise OSError("the partial file is closed")
        handle.flush()
        os.fsync(handle.fileno())
        self._close_handle()
        os.replace(self._part_name, self.relative.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        self._published = True
        fsync_directory_at(self._dir_fd)

    async def complete(
        self,
        sha256: str | None = None,
        *,
        acknowledge: Callable[[str], Awaitable[object]] | None = None,
        deliver: Callable[[ReceivedFile], Awaitable[None]] | None = None,
    ) -> ReceivedFile:
        """The end of every transfer: :meth:`verify`, :meth:`publish`, then
        ``await acknowledge(sha256)`` (the transport's reply to the sender), then
        ``await deliver(received)`` (usually ``TransportContext.deliver``).

        Raises what :meth:`verify` and :meth:`publish` raise (the partial is gone by then).
        A connection that closed before the acknowledgement is logged (the file is complete and
        verified; the sender sends it again), and so is an exception from ``deliver``: the
        application's bug must not end the session with the peer.
        """
        self.verify(sha256)
        received = await self._hand_over_unpacked() if self.unpacking else None
        if received is None:
            await self._written_back_whole()
            received = await self.publish()
        logger.info(
            "{}: received {} ({} bytes){}, verified",
            self.transport,
            quote_for_reply(self.name),
            self.size,
            f", resumed from {self.offset}" if self.offset else "",
        )
        if acknowledge is not None:
            try:
                await acknowledge(received.sha256 or "")
            except ConnectionClosedError:
                logger.info("{}: connection closed before the acknowledgement of {}", self.transport, self.name)
        if deliver is not None:
            try:
                await deliver(received)
            except Exception:  # the application's callback: logged, never the peer's business
                logger.exception("{}: on_file failed for {}", self.transport, received.name)
        return received

    async def _written_back_whole(self) -> None:
        """Wait for a thread still writing back what an unpacker held; the partial must be whole."""
        if self._written_back is not None:
            await asyncio.shield(self._written_back)
            await asyncio.sleep(0)  # its done callback runs first
        if self._partial_broken:
            self.abandon(keep=False)
            raise TransferError("cannot store the file")

    async def _hand_over_unpacked(self) -> ReceivedFile | None:
        """The verified file as its unpacker made it (its partial removed); ``None`` when the
        unpacker could not take it after all: it was written back, to be published as usual."""
        unpacker, unpacked = self._unpacker, None
        if unpacker is not None:
            try:
                unpacked = await self.run_in_thread(unpacker.finish)
            except CannotUnpack:
                self._unpacker = None
                try:
                    await self.run_in_thread(self._restore, unpacker, self.received)
                except TransferError:
                    self.abandon(keep=False)
                    raise TransferError("cannot store the file") from None
                return None
            except (ArchiveError, StorageFullError, OSError) as error:
                logger.warning("{}: {} is unusable: {}", self.transport, quote_for_log(self.name), describe(error))
                self._unpacker = None
                self._unpack_error = error
                await self.run_in_thread(unpacker.discard)
            else:
                self._unpacker = None  # handed over: the application's now
            if self._stopping or self._closed:
                # Abandoned while the unpacker checked the whole (the session ended): what it
                # unpacked goes with the abandoned file, once written back if it is kept.
                if not self._restoring:
                    await asyncio.to_thread(unpacker.discard)
                raise TransferError("transfer abandoned on this side")
        self._close_handle()
        self._unlink_partial()
        self._published = True
        self.abandon(keep=True)
        return ReceivedFile(
            name=self.name,
            path=self.path,
            size=self.size,
            transport=self.transport,
            sha256=self._verified,
            transfer_id=self.transfer_id,
            unpacked=unpacked,
            unpack_error=self._unpack_error,
        )

    # --- clean up -------------------------------------------------------------------------

    def abandon(self, *, keep: bool) -> None:
        """Stop receiving this file: close it and, unless ``keep``, remove its partial.

        A kept partial that holds no byte is removed all the same (nothing to resume from); a
        partial another session took over is never removed. While a thread works on the file
        this only marks it (a lent writer's next :meth:`write` raises) and the rest happens when
        the thread returns; two such calls keep the partial only if both asked to. Never fsyncs;
        calling it again does nothing.
        """
        if self._closed:
            return
        if self._threads:
            self._stopping = True
            self._pending_keep = keep if self._pending_keep is None else self._pending_keep and keep
            return
        unpacker, self._unpacker = self._unpacker, None
        if unpacker is not None:
            if keep and self.received and not self._detached and self._handle is not None:
                self._restore_then_abandon(unpacker)
                return
            unpacker.discard()
            keep = False  # its partial has holes
        elif self._unpack_error is not None or self._partial_broken:
            keep = False  # nothing was kept of a refused file, or what was kept has holes
        self._closed = True
        if self._directory is not None and _RECEIVING.get(self._key) is self:
            del _RECEIVING[self._key]
        self._close_handle()
        if self._owns_partial and not self._published and not self._detached and not (keep and self.received):
            self._unlink_partial()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _close_handle(self) -> None:
        if self._write_behind is not None:
            self._write_behind.close()
            self._write_behind = None
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError as error:
                logger.warning("{}: closing partial {} failed: {}", self.transport, self.partial_path, error)

    def _unlink_partial(self) -> None:
        try:
            os.unlink(self._part_name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.warning("{}: could not remove partial {}: {}", self.transport, self.partial_path, error)


def _write_at(fd: int, offset: int, data: memoryview) -> None:
    """All of ``data`` at ``offset`` of ``fd`` (the file position does not move). Blocking."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _retrieve(future: asyncio.Future) -> None:
    # Whoever awaited it may have been cancelled: mark its exception as seen.
    if not future.cancelled():
        future.exception()
