"""Partial files: the receiving side that every byte-moving transport shares.

A file a peer sends is written to ``.<basename>.<transfer_id>.part`` beside its final name
under the receiving side's ``incoming_dir``, hashed as it is written and handed to the disk
as it arrives (:mod:`rtcxfer.files.write_behind`), checked for size and SHA-256, fsynced
and only then renamed onto its final name: nothing incomplete ever carries the final name.
A partial left by a dropped connection is resumed by the next transfer with the same id
(:func:`transfer_id_for` derives it from the file, so a new session, or another transport in
the same session, finds it): its prefix is hashed again, so the final check covers the whole
file.

``rtc-chunked`` and ``direct`` announce a file differently (a ``FILE_META`` frame, a record on
a TLS connection) but receive it through the same functions here. They raise
:class:`~rtcxfer.protocol.errors.TransferError` (or :class:`~rtcxfer.protocol.errors.IntegrityError`) whose text
is safe to send to the peer; each transport wraps it in its own reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import attrs

from rtcxfer.files.paths import OUTSIDE_ROOT_MESSAGE, check_relative_text, makedirs_beneath, open_beneath
from rtcxfer.files.write_behind import WriteBehind
from rtcxfer.log import logger
from rtcxfer.protocol.errors import (
    IntegrityError,
    PathError,
    StorageFullError,
    TransferError,
    UnsafePathError,
    describe,
)
from rtcxfer.protocol.frames import quote_for_log, quote_for_reply

#: Block size for hashing whole files off the loop.
HASH_BLOCK = 1024 * 1024

# Reasons the receiver gives after the end of the bytes; senders map them to IntegrityError.
REASON_HASH = "SHA-256 mismatch"
REASON_INCOMPLETE = "incomplete"
#: What a sender that was stopped (Ctrl-C) tells the receiver: keep the partial for a re-run.
REASON_SENDER_CANCELLED = "cancelled by the sender"

PART_NAME = re.compile(r"\..*\.[0-9a-f]{32}\.part", re.DOTALL)
# Keeps ".<base>.<id>.part" within the usual 255-byte file name limit.
_PART_BASE_BYTES = 200

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def transfer_id_for(role: str, name: str, size: int, content: str) -> str:
    """The deterministic id of sending this file as ``name`` from the ``role`` side.

    ``content`` identifies the bytes: their SHA-256 (rtc-chunked) or the file's device, inode
    and modification time (direct, which hashes while sending). The same file sent again (a new
    session after a drop) gets the same id and so resumes; the role keeps the two directions of
    one session apart.
    """
    key = "\0".join((role, name, str(size), content)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).hexdigest()[:32]


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


def hash_prefix(handle: BinaryIO, length: int) -> Any:
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


# --- the receiver's destination directory ---------------------------------------------------


class Destination:
    """Where one incoming file goes: a descriptor of its directory, its final and partial names.

    The directory is created with :func:`makedirs_beneath` and then entered component by
    component with ``O_NOFOLLOW``; renames and unlinks go through that descriptor, so nothing
    outside ``incoming_dir`` is touched even if a symlink appears later.
    """

    def __init__(self, root: Path, relative: PurePosixPath, transfer_id: str) -> None:
        self.root = root
        self.relative = relative
        self.final_name = relative.name
        self.part_name = part_name(relative.name, transfer_id)
        self.part_relative = (relative.parent / self.part_name).as_posix()
        self.dir_fd = -1

    @property
    def final_path(self) -> Path:
        return self.root / self.relative

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.root / self.relative.parent), self.part_name)

    def open_dir(self) -> None:
        parent = self.relative.parent
        if parent.parts:
            makedirs_beneath(self.root, parent.as_posix())
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for component in parent.parts:
                next_fd = os.open(component, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        self.dir_fd = fd

    def part_stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.part_name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_part_for_resume(self) -> BinaryIO:
        # open_beneath has no read-write mode; the directory descriptor was reached without
        # following symlinks and O_NOFOLLOW covers the last component.
        fd = os.open(self.part_name, os.O_RDWR | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=self.dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("partial file is not a regular file")
            return os.fdopen(fd, "r+b")
        except BaseException:
            os.close(fd)
            raise

    def open_new_part(self) -> BinaryIO:
        return open_beneath(self.root, self.part_relative, "xb")

    def remove_part(self) -> None:
        if self.dir_fd < 0:
            return
        try:
            os.unlink(self.part_name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.warning("partial file: could not remove partial {}: {}", self.part_relative, error)

    def place(self) -> None:
        """Rename the partial onto the final name and make the rename durable. Blocking."""
        os.replace(self.part_name, self.final_name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)

    def free_bytes(self) -> int | None:
        try:
            info = os.statvfs(self.dir_fd)
        except (OSError, TypeError):
            return None
        return info.f_bavail * info.f_frsize

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


@attrs.define(eq=False)
class Incoming:
    """A file this side is receiving."""

    #: The sender's announcement: ``transfer_id``, ``name``, ``size`` and ``sha256``.
    meta: Any
    dest: Destination
    handle: BinaryIO | None = None
    digest: Any = None
    received: int = 0
    resumed_from: int = 0
    #: A thread is using the handle (prefix hashing, fsync): nobody else may close it.
    busy: bool = True
    #: Another session took this partial over; this one must neither write nor remove it.
    detached: bool = False
    #: Filesystem (st_dev) the partial is on, for disk space promised to open transfers.
    device: int | None = None
    #: Event-loop time of the last bytes written (or of the announcement).
    last_activity: float = 0.0
    write_behind: WriteBehind | None = None

    @property
    def outstanding(self) -> int:
        """Bytes this transfer has been promised and not yet written."""
        return max(0, self.meta.size - self.received)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` to the partial and to its hash; the disk starts writing it back
        while more arrives. Blocking."""
        assert self.handle is not None and self.write_behind is not None
        self.handle.write(data)
        self.digest.update(data)
        self.received += len(data)
        self.write_behind.written(len(data))

    def close_handle(self) -> None:
        if self.write_behind is not None:
            self.write_behind.close()
            self.write_behind = None
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError as error:
                logger.warning("partial file: closing partial {} failed: {}", self.dest.part_relative, error)

    def finish(self) -> None:
        """fsync, close and rename into place. Blocking: run in a thread."""
        handle = self.handle
        assert handle is not None
        handle.flush()
        os.fsync(handle.fileno())
        self.close_handle()
        self.dest.place()


# Partials being written in this process, by (directory, part name): a new session resuming a
# file takes the partial over from a session that has not yet noticed its connection died.
ACTIVE_PARTS: dict[tuple[str, str], Incoming] = {}


def promised_bytes(device: int | None, excluding: Incoming | None = None) -> int:
    """Bytes open incoming transfers in this process still expect to write on ``device``."""
    return sum(
        state.outstanding
        for state in ACTIVE_PARTS.values()
        if state is not excluding and not state.detached and state.device == device
    )


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


def checked_name(name: str) -> PurePosixPath:
    """The relative path a peer asked to write, or :class:`TransferError` saying why not."""
    try:
        relative = check_relative_text(name)
    except UnsafePathError as error:
        reason = "name escapes the destination directory" if str(error) == OUTSIDE_ROOT_MESSAGE else str(error)
        raise TransferError(f"unsafe name: {reason}") from None
    if PART_NAME.fullmatch(relative.name):
        raise TransferError("unsafe name: reserved for partial files")
    return relative


def destination(incoming_dir: Path, relative: PurePosixPath, transfer_id: str, display_name: str) -> Destination:
    """The opened destination directory of an incoming file (created beneath ``incoming_dir``)."""
    root = Path(incoming_dir)
    root.mkdir(parents=True, exist_ok=True)
    dest = Destination(root.resolve(), relative, transfer_id)
    try:
        dest.open_dir()
    except (PathError, StorageFullError, OSError) as error:
        dest.close()
        logger.warning("destination of {} unusable: {}", quote_for_reply(display_name), describe(error))
        raise TransferError("destination directory is not usable") from None
    return dest


def claim_part(state: Incoming) -> None:
    """Make ``state`` the writer of its partial, taking it over from an idle older session."""
    key = state.dest.key
    holder = ACTIVE_PARTS.get(key)
    if holder is not None:
        if holder.busy:
            raise TransferError("transfer busy in another session; retry later")
        logger.info("taking {} over from an older session", state.dest.part_relative)
        holder.detached = True
        holder.close_handle()
    ACTIVE_PARTS[key] = state


def release_part(state: Incoming) -> None:
    if ACTIVE_PARTS.get(state.dest.key) is state:
        del ACTIVE_PARTS[state.dest.key]


async def open_part(state: Incoming) -> None:
    """Open (or resume: hash the prefix already on disk) the partial of ``state``."""
    meta, dest = state.meta, state.dest
    try:
        existing = dest.part_stat()
        if existing is not None and (not stat.S_ISREG(existing.st_mode) or existing.st_size > meta.size):
            logger.info("discarding unusable partial {}", dest.part_relative)
            dest.remove_part()
            existing = None
        if existing is not None:
            state.handle = dest.open_part_for_resume()
            length = existing.st_size
            state.digest = await asyncio.to_thread(hash_prefix, state.handle, length)
            state.handle.seek(length)
            state.handle.truncate()
            state.received = state.resumed_from = length
        else:
            state.handle = dest.open_new_part()
            state.digest = hashlib.sha256()
        state.write_behind = WriteBehind(state.handle.fileno(), state.received)
        free = dest.free_bytes()
        state.device = os.fstat(state.handle.fileno()).st_dev
    except (PathError, StorageFullError, OSError) as error:
        logger.warning("cannot open partial {}: {}", dest.part_relative, describe(error))
        raise TransferError("cannot create the partial file") from None
    # Free space minus what transfers already open still expect: many announcements at once
    # cannot each count the same free bytes.
    promised = promised_bytes(state.device, excluding=state)
    if free is not None and state.outstanding > free - promised:
        state.close_handle()
        dest.remove_part()
        logger.warning(
            "refused {} ({} bytes): {} bytes free, {} promised to open transfers",
            quote_for_log(meta.name),
            meta.size,
            free,
            promised,
        )
        raise TransferError("not enough free space for the file")


async def start_incoming(meta: Any, incoming_dir: Path, kept_dir: Path | None = None) -> Incoming:
    """Validate ``meta``'s name, open its destination and its partial (resuming one if found).

    A partial of the same transfer id kept from an earlier session in ``kept_dir`` (see
    :mod:`rtcxfer.files.kept_partials`) is moved in and resumed. The result is claimed (``busy`` is False,
    nobody else writes that partial) and positioned at ``received``. Raises
    :class:`TransferError` with a reason fit for the peer.
    """
    relative = checked_name(meta.name)
    dest = destination(incoming_dir, relative, meta.transfer_id, meta.name)
    state = Incoming(meta, dest)
    try:
        claim_part(state)
    except TransferError:
        dest.close()
        raise
    try:
        if kept_dir is not None and len(relative.parts) == 1:
            _adopt_kept_part(dest, Path(kept_dir))
        await open_part(state)
    except BaseException:
        release_part(state)
        state.close_handle()
        dest.close()
        raise
    state.busy = False
    if state.detached:  # taken over while the prefix was being hashed
        release_part(state)
        state.close_handle()
        dest.close()
        raise TransferError("transfer resumed in another session")
    return state


def _adopt_kept_part(dest: Destination, kept_dir: Path) -> None:
    """Move ``kept_dir``'s partial of this transfer (if any) to where it is resumed."""
    if dest.part_stat() is not None:
        return
    source = kept_dir / dest.part_name
    try:
        if not stat.S_ISREG(os.lstat(source).st_mode):
            return
        os.rename(source, dest.part_name, dst_dir_fd=dest.dir_fd)
    except FileNotFoundError:
        return  # none kept, or another session adopted it first
    except OSError as error:
        logger.warning("could not resume kept partial {}: {}", dest.part_name, error)
        return
    logger.info("resuming {} from a partial kept from an earlier session", dest.part_relative)
    with contextlib.suppress(OSError):
        os.rmdir(kept_dir)  # the last one kept: an empty directory stays behind otherwise


def check_complete(state: Incoming) -> str:
    """The SHA-256 of a fully received file, or :class:`IntegrityError` if size or hash differ."""
    meta = state.meta
    if state.received != meta.size:
        raise IntegrityError(f"{REASON_INCOMPLETE}: received {state.received} of {meta.size} bytes")
    digest = state.digest.hexdigest()
    if digest != meta.sha256:
        logger.warning("{} arrived with SHA-256 {}, announced {}", quote_for_log(meta.name), digest, meta.sha256)
        raise IntegrityError(f"{REASON_HASH}: the received bytes hash to {digest}")
    return digest


def abandon(state: Incoming, *, remove: bool) -> None:
    """Forget an incoming file: release it, close its handle, optionally delete its partial."""
    release_part(state)
    state.close_handle()
    if remove and not state.detached:
        state.dest.remove_part()
    state.dest.close()
