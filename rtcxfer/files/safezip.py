"""Extract a training package ZIP without trusting anything in it.

A package comes from the peer, so every member name, mode bit and size in it is hostile. The
extractor therefore:

* checks the whole central directory before writing anything: names (via
  :func:`rtcxfer.files.paths.check_relative_text`), symlink and special-file mode bits, encryption,
  duplicates, file/directory clashes, overlapping members, and the configured limits;
* extracts into a fresh ``pkg-*`` directory made by :func:`tempfile.mkdtemp`, writing each file
  with :func:`rtcxfer.files.paths.open_beneath` (exclusive create, no symlink followed);
* counts the bytes really written instead of trusting size headers;
* removes the fresh directory entirely on any failure, so no partial package remains.
"""

from __future__ import annotations

import errno
import itertools
import lzma
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import attrs

from rtcxfer.files.paths import check_relative_text, makedirs_beneath, open_beneath
from rtcxfer.log import logger
from rtcxfer.protocol import texts
from rtcxfer.protocol.errors import (
    ArchiveLimitError,
    CorruptArchiveError,
    PathError,
    StorageFullError,
    UnsafeArchiveError,
    UnsafePathError,
)

__all__ = [
    "ExtractResult",
    "ZipLimits",
    "check_member_kind",
    "check_member_name",
    "check_member_sizes",
    "create_member_beneath",
    "extract_zip",
    "shown",
    "storage_error",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_CHUNK = 1 * MiB
_LOCAL_HEADER_SIZE = 30  # fixed part of a local file header, before name and extra field
_FLAG_ENCRYPTED = 0x1
_FLAG_STRONG_ENCRYPTION = 0x40

# Errors zipfile and the decompressors raise on malformed input while reading.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
    struct.error,
    RuntimeError,
)

ProgressCallback = Callable[[int, int], None]


def _positive(instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class ZipLimits:
    """Caps applied to a package, from the central directory first and then while writing.

    The compression ratio (uncompressed / compressed) is checked per member and for the whole
    archive, but only for sizes above ``ratio_min_bytes``, so tiny highly compressible files
    (an empty config, a run of zeros) pass.
    """

    max_members: int = attrs.field(default=10_000, validator=_positive)
    max_total_bytes: int = attrs.field(default=20 * GiB, validator=_positive)
    max_member_bytes: int = attrs.field(default=10 * GiB, validator=_positive)
    max_ratio: float = attrs.field(default=200, validator=_positive)
    ratio_min_bytes: int = attrs.field(default=1 * MiB, validator=_positive)
    max_name_bytes: int = attrs.field(default=1024, validator=_positive)
    max_depth: int = attrs.field(default=64, validator=_positive)


@attrs.frozen
class ExtractResult:
    """Where a package was extracted, how many files it holds and how many bytes were written."""

    root: Path
    files: int
    bytes_written: int


@attrs.frozen
class _Member:
    info: zipfile.ZipInfo
    path: PurePosixPath
    is_dir: bool


def shown(name: str, limit: int = 80) -> str:
    shown = ascii(name[:limit])
    return shown + ("..." if len(name) > limit else "")


def check_member_name(info: zipfile.ZipInfo, limits: ZipLimits) -> PurePosixPath | None:
    """The normalised relative path of a member, or ``None`` for a harmless ``./`` entry."""
    raw = info.orig_filename
    if "\x00" in raw or raw != info.filename:
        # zipfile silently cuts names at NUL; a name that needed changing is not a plain name.
        raise UnsafeArchiveError(f"Archive member name is not a plain path: {shown(raw)}")
    if len(raw.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
        raise ArchiveLimitError(f"Archive member name too long: {shown(raw)}")
    if raw.startswith("/") or "\\" in raw or (len(raw) >= 2 and raw[1] == ":"):
        raise UnsafeArchiveError(f"Archive member escapes the package: {shown(raw)}")
    text = raw.removesuffix("/")
    if raw.endswith("/") and all(part in ("", ".") for part in text.split("/")):
        return None
    try:
        path = check_relative_text(text)
    except UnsafePathError as exc:
        raise UnsafeArchiveError(f"Unsafe archive member name ({exc}): {shown(raw)}") from None
    if len(path.parts) > limits.max_depth:
        raise ArchiveLimitError(f"Archive member nested too deep: {shown(raw)}")
    return path


def check_member_kind(info: zipfile.ZipInfo) -> bool:
    """Whether the member is a directory; links, devices, FIFOs and encrypted members raise."""
    name = info.orig_filename
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
        raise UnsafeArchiveError(f"Archive member is encrypted: {shown(name)}")
    is_dir = name.endswith("/")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise UnsafeArchiveError(f"Archive member is a symlink: {shown(name)}")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchiveError(f"Archive member is not a regular file: {shown(name)}")
    if kind and (kind == stat.S_IFDIR) != is_dir:
        raise UnsafeArchiveError(f"Archive member mode contradicts its name: {shown(name)}")
    return is_dir


def check_member_sizes(info: zipfile.ZipInfo, limits: ZipLimits) -> None:
    name = info.orig_filename
    if info.file_size > limits.max_member_bytes:
        raise ArchiveLimitError(f"Archive member too large: {shown(name)}")
    if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * info.compress_size:
        raise ArchiveLimitError(f"Archive member compression ratio too high: {shown(name)}")


def _check_layout(members: list[_Member]) -> None:
    """Reject duplicates, a file that is also a directory, and overlapping member data."""
    files: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = set()
    implied: set[PurePosixPath] = set()
    for member in members:
        if member.path in files or member.path in dirs:
            raise UnsafeArchiveError(f"Duplicate archive member: {shown(member.info.orig_filename)}")
        (dirs if member.is_dir else files).add(member.path)
        implied.update(member.path.parents)
    clash = files & implied
    if clash:
        raise UnsafeArchiveError(f"Archive member is both a file and a directory: {shown(str(min(clash)))}")
    # Members sharing data (the "non-recursive zip bomb") or a header inside another's data.
    ordered = sorted(members, key=lambda m: m.info.header_offset)
    for current, following in itertools.pairwise(ordered):
        info = current.info
        # len() in characters is a lower bound of the encoded name length in any encoding.
        data_end = info.header_offset + _LOCAL_HEADER_SIZE + len(info.orig_filename)
        if data_end + info.compress_size > following.info.header_offset:
            raise UnsafeArchiveError(f"Archive members overlap: {shown(info.orig_filename)}")


def _scan(archive: zipfile.ZipFile, limits: ZipLimits) -> list[_Member]:
    """Check the central directory as a whole before anything is written."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise ArchiveLimitError(f"Archive has too many members ({len(infos)} > {limits.max_members})")
    members: list[_Member] = []
    total = compressed = 0
    for info in infos:
        is_dir = check_member_kind(info)
        path = check_member_name(info, limits)
        check_member_sizes(info, limits)
        total += info.file_size
        compressed += info.compress_size
        if path is not None:
            members.append(_Member(info=info, path=path, is_dir=is_dir))
    if total > limits.max_total_bytes:
        raise ArchiveLimitError(f"Archive too large when extracted ({total} bytes)")
    if total > limits.ratio_min_bytes and total > limits.max_ratio * compressed:
        raise ArchiveLimitError("Archive compression ratio too high")
    _check_layout(members)
    return members


def create_member_beneath(root: Path, path: PurePosixPath, *, is_dir: bool) -> BinaryIO | None:
    """Make the member ``path``'s directory beneath ``root`` (None), or its parent directories
    and a fresh file open for writing (``xb``), no symlink followed. Raises ``OSError`` or
    :class:`~rtcxfer.protocol.errors.PathError`; the caller says what either means."""
    target = path.as_posix()
    if is_dir:
        makedirs_beneath(root, target)
        return None
    if len(path.parts) > 1:
        makedirs_beneath(root, path.parent.as_posix())
    return open_beneath(root, target, "xb")


class _Writer:
    """Streams members into the fresh root and counts what is really written."""

    def __init__(
        self,
        archive: zipfile.ZipFile,
        root: Path,
        limits: ZipLimits,
        total: int,
        progress: ProgressCallback | None,
    ) -> None:
        self.archive = archive
        self.root = root
        self.limits = limits
        self.total = total
        self.progress = progress
        self.files = 0
        self.written = 0

    def extract(self, member: _Member) -> None:
        target = member.path.as_posix()
        try:
            out = create_member_beneath(self.root, member.path, is_dir=member.is_dir)
            if out is None:
                return
            with out:
                self._copy(member.info, out)
        except OSError as exc:
            # Read errors became CorruptArchiveError inside _copy: this is a write or the
            # flush on close, where a full disk often shows up first.
            raise storage_error(exc) from exc
        except PathError as exc:
            # In a fresh directory only a clash (case-insensitive storage) or a concurrent
            # writer can get here.
            raise UnsafeArchiveError(f"Archive member cannot be written ({exc}): {shown(target)}") from None
        self.files += 1

    def _copy(self, info: zipfile.ZipInfo, out: BinaryIO) -> None:
        member_written = 0
        try:
            source = self.archive.open(info)
        except _READ_ERRORS as exc:
            raise _corrupt(info, exc) from None
        with source:
            while True:
                try:
                    chunk = source.read(_CHUNK)
                except _READ_ERRORS as exc:
                    raise _corrupt(info, exc) from None
                if not chunk:
                    break
                member_written += len(chunk)
                self.written += len(chunk)
                self._check_counts(info, member_written)
                out.write(chunk)
                if self.progress is not None:
                    self.progress(self.written, self.total)
        if member_written != info.file_size:
            # A stream that ends early has a matching CRC of its own bytes: still not this member.
            raise _corrupt(info, EOFError(f"{member_written} bytes, header says {info.file_size}"))

    def _check_counts(self, info: zipfile.ZipInfo, member_written: int) -> None:
        name = shown(info.orig_filename)
        if member_written > info.file_size:
            raise ArchiveLimitError(f"Archive member larger than its header says: {name}")
        if member_written > self.limits.max_member_bytes:
            raise ArchiveLimitError(f"Archive member too large: {name}")
        if self.written > self.limits.max_total_bytes:
            raise ArchiveLimitError("Archive too large when extracted")


def _corrupt(info: zipfile.ZipInfo | None, exc: BaseException) -> CorruptArchiveError:
    where = f" (member {shown(info.orig_filename)})" if info is not None else ""
    logger.info("Corrupt archive{}: {!r}", where, exc)
    return CorruptArchiveError(f"{texts.CORRUPTED}{where}")


def storage_error(exc: OSError) -> Exception:
    """``StorageFullError`` for a full disk or quota; any other local OS error as it is."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(texts.DISK_FULL)
    return exc


def _remove(root: Path) -> None:
    """Remove a partial extraction; a failure to clean up is logged, never masks the cause."""
    try:
        shutil.rmtree(root)
    except OSError as exc:
        logger.error("Could not remove partial extraction {}: {}", root, exc)


def extract_zip(
    archive: str | os.PathLike[str] | BinaryIO,
    dest_parent: str | os.PathLike[str],
    limits: ZipLimits = ZipLimits(),
    progress: ProgressCallback | None = None,
) -> ExtractResult:
    """Extract ``archive`` (a path or a seekable binary file) into a fresh dir under ``dest_parent``.

    Raises :class:`CorruptArchiveError` for an unreadable archive, :class:`UnsafeArchiveError`
    for a hostile member, :class:`ArchiveLimitError` when a limit is exceeded and
    :class:`StorageFullError` when the disk fills up. On any failure the fresh directory is
    removed before the exception propagates. ``progress(bytes_done, bytes_total)`` is called after
    each chunk written; ``bytes_total`` is the sum of the declared sizes.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except _READ_ERRORS as exc:
        raise _corrupt(None, exc) from None
    with zf:
        try:
            members = _scan(zf, limits)
        except _READ_ERRORS as exc:  # pragma: no cover - infolist() is parsed by ZipFile()
            raise _corrupt(None, exc) from None
        total = sum(m.info.file_size for m in members if not m.is_dir)
        try:
            root = Path(tempfile.mkdtemp(dir=Path(dest_parent).resolve(), prefix="pkg-"))
        except OSError as exc:
            raise storage_error(exc) from exc
        done = False
        try:
            writer = _Writer(zf, root, limits, total, progress)
            for member in members:
                writer.extract(member)
            done = True
        finally:
            if not done:
                _remove(root)
    logger.info("Extracted {} files ({} bytes) into {}", writer.files, writer.written, root)
    return ExtractResult(root=root, files=writer.files, bytes_written=writer.written)
