"""Extract a package ZIP while its bytes arrive, so the ZIP itself is never written and re-read.

:class:`StreamingUnzip` is an :class:`~rtcxfer.files.unpacking.Unpacker`: fed the archive's
bytes in order, it writes each member beneath a fresh ``pkg-*`` staging directory as its bytes
arrive, through the same no-symlink helpers and with every check :func:`~rtcxfer.files.safezip.extract_zip`
makes (names, kinds, layout clashes, :class:`~rtcxfer.files.safezip.ZipLimits`), raising the same
typed errors. Where ``extract_zip`` checks the central directory before writing, the stream
checks each local header before its data and then the central directory against what was
streamed, entry by entry:

* each member's CRC-32 and size as its last byte arrives;
* the central directory must list the very members streamed, in order: names, methods, CRCs,
  sizes and local header offsets; symlinks, special files and encrypted members are refused
  there (only the central directory holds their mode bits);
* members follow each other with nothing unaccounted in between (so none overlap), and the end
  records (ZIP64 ones included) agree with the directory and end the stream;
* a central directory or end record that disagrees with the stream is handed back (below), so
  that the archive gets exactly the verdict it got before (zipfile believes the directory:
  it may find overlapping members, a bad CRC, or a smaller archive that is fine);
* a deflate bomb is refused as soon as the sizes declared so far cannot fit the ratio limit
  whatever follows (the archive's remaining bytes are known), and exactly at the end.

What it does not stream is handed back (:class:`~rtcxfer.files.unpacking.CannotUnpack`): a
member whose sizes follow its data (a data descriptor, as ``zip -`` writes), encrypted or patched
members, methods other than stored and deflated, bytes before the first local header, records
it does not know, end records that do not match. The caller then writes the ZIP as before and
:func:`~rtcxfer.files.safezip.extract_zip` gives the verdict.

Only the bytes of stored members stay out of the partial file: headers, deflated data and the
central directory go to ``keep`` (sparse, at their offsets), so :meth:`StreamingUnzip.restore`
rebuilds the archive from them and the staged members when the transfer stops part-way.
"""

from __future__ import annotations

import struct
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from rtcxfer.files.paths import open_beneath, remove_tree
from rtcxfer.files.safezip import (
    ExtractResult,
    ZipLimits,
    check_member_kind,
    check_member_name,
    check_member_sizes,
    create_member_beneath,
    shown,
    storage_error,
)
from rtcxfer.files.unpacking import CannotUnpack, WriteAt
from rtcxfer.log import logger
from rtcxfer.protocol import texts
from rtcxfer.protocol.errors import (
    ArchiveLimitError,
    CorruptArchiveError,
    PathError,
    UnsafeArchiveError,
)

__all__ = ["StreamingUnzip"]

_CHUNK = 1024 * 1024

_LOCAL_SIGNATURE = b"PK\x03\x04"
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_END64_SIGNATURE = b"PK\x06\x06"
_LOCATOR64_SIGNATURE = b"PK\x06\x07"
_END_SIGNATURE = b"PK\x05\x06"

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_END64 = struct.Struct("<4sQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<4sIQI")
_END = struct.Struct("<4sHHHHIIH")
_EXTRA_HEADER = struct.Struct("<HH")
_ZIP64_EXTRA_ID = 0x0001
#: A ZIP64 end record's extensible data: more is no archive a packer writes.
_MAX_END64_BYTES = 64 * 1024

_FLAG_ENCRYPTED = 0x1
_FLAG_DATA_DESCRIPTOR = 0x8
_FLAG_PATCHED = 0x20
_FLAG_STRONG_ENCRYPTION = 0x40
_FLAG_UTF8 = 0x800
_UNSTREAMABLE_FLAGS = _FLAG_ENCRYPTED | _FLAG_DATA_DESCRIPTOR | _FLAG_PATCHED | _FLAG_STRONG_ENCRYPTION

_MAX16 = 0xFFFF
_MAX32 = 0xFFFFFFFF

# Where the parser is: which record the next bytes belong to.
_MEMBERS = "members"  # a local header (or the central directory's first record)
_DATA = "data"  # the current member's data
_DIRECTORY = "directory"  # central directory entries, then the end records
_DONE = "done"  # after the end record and its comment


class _Member:
    """One member as streamed: its local header, and where its bytes went."""

    __slots__ = ("header_length", "info", "is_dir", "path", "stored_bytes")

    def __init__(self, info: zipfile.ZipInfo, path: PurePosixPath | None, is_dir: bool) -> None:
        self.info = info
        self.path = path
        self.is_dir = is_dir
        #: Bytes of a stored file's data written to the staging directory (not to ``keep``).
        self.stored_bytes = 0
        self.header_length = 0

    @property
    def writes_file(self) -> bool:
        return self.path is not None and not self.is_dir

    @property
    def data_offset(self) -> int:
        return self.info.header_offset + self.header_length


class _Layout:
    """The checks of :func:`~rtcxfer.files.safezip.extract_zip`'s layout, one member at a time:
    no duplicate, no file that is also a directory."""

    def __init__(self) -> None:
        self.files: set[PurePosixPath] = set()
        self.dirs: set[PurePosixPath] = set()
        self.implied: set[PurePosixPath] = set()

    def add(self, path: PurePosixPath, is_dir: bool, raw_name: str) -> None:
        if path in self.files or path in self.dirs:
            raise UnsafeArchiveError(f"Duplicate archive member: {shown(raw_name)}")
        clash = next((parent for parent in path.parents if parent in self.files), None)
        if not is_dir and path in self.implied:
            clash = path
        if clash is not None:
            raise UnsafeArchiveError(f"Archive member is both a file and a directory: {shown(str(clash))}")
        (self.dirs if is_dir else self.files).add(path)
        self.implied.update(path.parents)


def _corrupt(member: _Member | None, why: str) -> CorruptArchiveError:
    where = f" (member {shown(member.info.orig_filename)})" if member is not None else ""
    logger.info("Corrupt archive{}: {}", where, why)
    return CorruptArchiveError(f"{texts.CORRUPTED}{where}")


def _decode_name(raw: bytes, flags: int) -> str | None:
    try:
        return raw.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
    except UnicodeDecodeError:
        return None


def _zip64_fields(extra: bytes) -> bytes | None:
    """The data of the ZIP64 extra field in ``extra``; ``None`` without one. Raises
    ``ValueError`` for a malformed extra area (zipfile's "Corrupt extra field")."""
    position = 0
    while len(extra) - position >= _EXTRA_HEADER.size:
        kind, length = _EXTRA_HEADER.unpack_from(extra, position)
        start = position + _EXTRA_HEADER.size
        if start + length > len(extra):
            raise ValueError(f"corrupt extra field {kind:04x} (size={length})")
        if kind == _ZIP64_EXTRA_ID:
            return extra[start : start + length]
        position = start + length
    return None


class StreamingUnzip:
    """Extracts a ZIP of ``size`` bytes fed in order into the fresh directory ``root``.

    Made by :meth:`start`. :meth:`feed` the bytes, then :meth:`finish` (the
    :class:`~rtcxfer.files.safezip.ExtractResult`); :meth:`restore` and :meth:`discard` when the
    stream is handed back or dropped. Nothing in ``root`` is complete or checked before
    :meth:`finish` returns. Blocking: each call does its own I/O.
    """

    def __init__(self, root: Path, size: int, limits: ZipLimits = ZipLimits()) -> None:
        self.root = root
        self.size = size
        self.limits = limits
        #: Stream bytes accounted for: written to a member or passed to ``keep``.
        self.offset = 0
        self.files = 0
        self.written = 0
        self._state = _MEMBERS
        self._buffer = bytearray()  # the record being read, from self.offset on
        self._members: list[_Member] = []
        self._layout = _Layout()
        self._current: _Member | None = None
        self._out: BinaryIO | None = None
        self._inflater: Any = None  # a zlib decompressor while a deflated file streams
        self._data_left = 0
        self._member_written = 0
        self._crc = 0
        self._declared_total = 0
        self._declared_compressed = 0
        self._directory_start = 0
        self._directory_entries = 0
        self._end64: tuple[int, int, int, int] | None = None  # offset, entries, size, directory offset
        self._locator_seen = False
        self._broken = False

    @classmethod
    def start(cls, dest_parent: str | Path, size: int, limits: ZipLimits = ZipLimits()) -> StreamingUnzip:
        """A streaming extraction into a fresh ``pkg-*`` directory under ``dest_parent``."""
        try:
            root = Path(tempfile.mkdtemp(dir=Path(dest_parent).resolve(), prefix="pkg-"))
        except OSError as exc:
            raise storage_error(exc) from exc
        return cls(root, size, limits)

    # --- feeding --------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview, keep: WriteAt) -> None:
        """Take the next bytes (see :meth:`rtcxfer.files.unpacking.Unpacker.feed`)."""
        if self._broken:
            raise CannotUnpack("the extraction already stopped")
        view = memoryview(data).cast("B")
        position = 0
        try:
            while position < len(view):
                if self._state is _DATA:
                    take = min(self._data_left, len(view) - position)
                    self._member_data(view[position : position + take], keep)
                    position += take
                    if not self._data_left:
                        self._end_member()
                    continue
                need = self._record_length()
                if len(self._buffer) < need:
                    take = min(need - len(self._buffer), len(view) - position)
                    self._buffer += view[position : position + take]
                    position += take
                if len(self._buffer) == need and self._record_length() == need:
                    self._record(keep)
        except CannotUnpack as why:
            logger.info("Package not extracted while received ({}): written as a ZIP instead", why)
            self._broken = True
            held = bytes(self._buffer) + bytes(view[position:])
            self._buffer = bytearray()
            if held:
                keep(self.offset, memoryview(held))
                self.offset += len(held)
            raise
        except BaseException:
            self._broken = True
            raise

    def _record_length(self) -> int:
        """How many bytes the record at the start of the buffer has, as far as it is known."""
        if self._state is _DONE:
            raise CannotUnpack(f"data after the end record at offset {self.offset}")
        buffer = self._buffer
        if len(buffer) < 4:
            return 4
        signature = bytes(buffer[:4])
        if self._state is _MEMBERS:
            if signature == _LOCAL_SIGNATURE:
                if len(buffer) < _LOCAL.size:
                    return _LOCAL.size
                fields = _LOCAL.unpack_from(buffer)
                return _LOCAL.size + fields[9] + fields[10]
            if signature not in (_CENTRAL_SIGNATURE, _END64_SIGNATURE, _END_SIGNATURE):
                raise CannotUnpack(f"no local header at offset {self.offset}")
            self._state = _DIRECTORY
            self._directory_start = self.offset
        if signature == _CENTRAL_SIGNATURE and self._end64 is None and not self._locator_seen:
            if len(buffer) < _CENTRAL.size:
                return _CENTRAL.size
            fields = _CENTRAL.unpack_from(buffer)
            return _CENTRAL.size + fields[10] + fields[11] + fields[12]
        if signature == _END64_SIGNATURE and self._end64 is None and not self._locator_seen:
            if len(buffer) < _END64.size:
                return _END64.size
            record_size = _END64.unpack_from(buffer)[1]
            if not _END64.size - 12 <= record_size <= _MAX_END64_BYTES:
                raise CannotUnpack(f"a ZIP64 end record of {record_size} bytes")
            return 12 + record_size
        if signature == _LOCATOR64_SIGNATURE and self._end64 is not None and not self._locator_seen:
            return _LOCATOR64.size
        if signature == _END_SIGNATURE and (self._end64 is None) == (not self._locator_seen):
            if len(buffer) < _END.size:
                return _END.size
            return _END.size + _END.unpack_from(buffer)[7]
        raise CannotUnpack(f"an unexpected record at offset {self.offset}")

    def _record(self, keep: WriteAt) -> None:
        """Check the complete record in the buffer, pass it to ``keep``, move on."""
        record = bytes(self._buffer)
        signature = record[:4]
        if signature == _LOCAL_SIGNATURE:
            self._local_header(record)
        elif signature == _CENTRAL_SIGNATURE:
            self._central_entry(record)
        elif signature == _END64_SIGNATURE:
            self._end64_record(record)
        elif signature == _LOCATOR64_SIGNATURE:
            self._locator(record)
        else:
            self._end_record(record)
        keep(self.offset, memoryview(record))
        self._buffer = bytearray()
        self.offset += len(record)
        if signature == _LOCAL_SIGNATURE:
            assert self._current is not None
            if self._data_left:
                self._state = _DATA
            else:
                self._end_member()

    # --- members --------------------------------------------------------------------------

    def _local_header(self, record: bytes) -> None:
        limits = self.limits
        _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length = _LOCAL.unpack_from(record)
        raw_name = record[_LOCAL.size : _LOCAL.size + name_length]
        extra = record[_LOCAL.size + name_length :]
        if flags & _UNSTREAMABLE_FLAGS:
            raise CannotUnpack(f"member flags {flags:#x} at offset {self.offset}")
        if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CannotUnpack(f"compression method {method} at offset {self.offset}")
        if compressed == _MAX32 or size == _MAX32:
            try:
                fields = _zip64_fields(extra)
            except ValueError:
                fields = None
            if fields is None or len(fields) < 16:
                raise CannotUnpack(f"ZIP64 sizes missing at offset {self.offset}")
            size64, compressed64 = struct.unpack_from("<QQ", fields)
            size = size64 if size == _MAX32 else size
            compressed = compressed64 if compressed == _MAX32 else compressed
        if method == zipfile.ZIP_STORED and compressed != size:
            raise CannotUnpack(f"a stored member of {size} bytes in {compressed} at offset {self.offset}")
        data_start = self.offset + len(record)
        if data_start + compressed > self.size:
            raise CannotUnpack(f"a member beyond the end of the archive at offset {self.offset}")
        name = _decode_name(raw_name, flags)
        if name is None:
            raise _corrupt(None, f"member name {raw_name[:80]!r} cannot be decoded")
        if len(self._members) + 1 > limits.max_members:
            raise ArchiveLimitError(f"Archive has too many members ({len(self._members) + 1} > {limits.max_members})")
        info = zipfile.ZipInfo(name)
        info.flag_bits = flags
        info.compress_type = method
        info.CRC = crc
        info.file_size = size
        info.compress_size = compressed
        info.header_offset = self.offset
        info.external_attr = 0  # known from the central directory only
        path = check_member_name(info, limits)
        check_member_sizes(info, limits)
        self._declared_total += size
        self._declared_compressed += compressed
        total = self._declared_total
        if total > limits.max_total_bytes:
            raise ArchiveLimitError(f"Archive too large when extracted ({total} bytes)")
        # The whole archive's compressed bytes can be no more than those declared so far and
        # the stream's bytes after this member.
        compressed_at_most = self._declared_compressed + (self.size - data_start - compressed)
        if total > limits.ratio_min_bytes and total > limits.max_ratio * compressed_at_most:
            raise ArchiveLimitError("Archive compression ratio too high")
        member = _Member(info, path, name.endswith("/"))
        member.header_length = len(record)
        if path is not None:
            self._layout.add(path, member.is_dir, name)
        self._members.append(member)
        self._current = member
        self._data_left = compressed
        self._member_written = 0
        self._crc = 0
        self._inflater = zlib.decompressobj(-15) if method == zipfile.ZIP_DEFLATED and member.writes_file else None
        self._create(member)

    def _create(self, member: _Member) -> None:
        if member.path is None:
            return
        target = member.path.as_posix()
        try:
            self._out = create_member_beneath(self.root, member.path, is_dir=member.is_dir)
        except OSError as exc:
            raise storage_error(exc) from exc
        except PathError as exc:
            raise UnsafeArchiveError(f"Archive member cannot be written ({exc}): {shown(target)}") from None

    def _member_data(self, piece: memoryview, keep: WriteAt) -> None:
        member = self._current
        assert member is not None
        self._data_left -= len(piece)
        if not member.writes_file or self._inflater is not None:
            keep(self.offset, piece)
            self.offset += len(piece)
            if self._inflater is not None:
                self._inflate(member, piece)
            return
        self._write(member, piece)
        member.stored_bytes += len(piece)
        self.offset += len(piece)

    def _inflate(self, member: _Member, piece: memoryview) -> None:
        inflater = self._inflater
        assert inflater is not None
        pending: bytes | memoryview = piece
        while not inflater.eof:
            try:
                out = inflater.decompress(pending, _CHUNK)
            except zlib.error as exc:
                raise _corrupt(member, repr(exc)) from None
            pending = inflater.unconsumed_tail
            if not out and not pending:
                break  # all taken in: zlib holds no more output for now
            self._write(member, out)

    def _write(self, member: _Member, data: bytes | memoryview) -> None:
        info = member.info
        self._member_written += len(data)
        self.written += len(data)
        if self._member_written > info.file_size:
            # zipfile reads no further than the size and then finds the CRC wrong: corrupt.
            raise _corrupt(member, f"more than the {info.file_size} bytes its header says")
        if self._member_written > self.limits.max_member_bytes:
            raise ArchiveLimitError(f"Archive member too large: {shown(info.orig_filename)}")
        if self.written > self.limits.max_total_bytes:
            raise ArchiveLimitError("Archive too large when extracted")
        self._crc = zlib.crc32(data, self._crc)
        assert self._out is not None
        try:
            self._out.write(data)
        except OSError as exc:
            raise storage_error(exc) from exc

    def _end_member(self) -> None:
        member = self._current
        assert member is not None
        self._current = None
        self._state = _MEMBERS
        if not member.writes_file:
            return
        inflater, self._inflater = self._inflater, None
        if inflater is not None and not inflater.eof:
            raise _corrupt(member, "deflate stream ends early")
        info = member.info
        if self._member_written != info.file_size:
            raise _corrupt(member, f"{self._member_written} bytes, header says {info.file_size}")
        if self._crc != info.CRC:
            raise _corrupt(member, f"bad CRC-32 {self._crc:08x}, header says {info.CRC:08x}")
        out, self._out = self._out, None
        assert out is not None
        try:
            out.close()
        except OSError as exc:
            raise storage_error(exc) from exc
        self.files += 1

    # --- the central directory and the end records ----------------------------------------

    def _central_entry(self, record: bytes) -> None:
        fields = _CENTRAL.unpack_from(record)
        flags, method, crc, compressed, size = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_length, extra_length, disk = fields[10], fields[11], fields[13]
        external_attr, header_offset = fields[15], fields[16]
        index = self._directory_entries
        member = self._members[index] if index < len(self._members) else None
        if member is None:
            raise CannotUnpack(f"central directory entry {index} names no streamed member")
        raw_name = record[_CENTRAL.size : _CENTRAL.size + name_length]
        extra = record[_CENTRAL.size + name_length : _CENTRAL.size + name_length + extra_length]
        try:
            zip64 = _zip64_fields(extra)
        except ValueError as exc:
            raise CannotUnpack(str(exc)) from None
        if zip64 is not None:
            # As zipfile reads it: only the fields whose 32-bit value is saturated, in order.
            values = iter(struct.unpack_from(f"<{len(zip64) // 8}Q", zip64))
            size = next(values, None) if size == _MAX32 else size
            compressed = next(values, None) if compressed == _MAX32 else compressed
            header_offset = next(values, None) if header_offset == _MAX32 else header_offset
        info = member.info
        name = _decode_name(raw_name, flags)
        streamed = (info.orig_filename, info.compress_type, info.CRC, info.compress_size, info.file_size)
        if (name, method, crc, compressed, size) != streamed or header_offset != info.header_offset or disk:
            raise CannotUnpack(f"the central directory disagrees with the local header at {info.header_offset}")
        listed = zipfile.ZipInfo(info.orig_filename)
        listed.flag_bits = flags
        listed.external_attr = external_attr
        check_member_kind(listed)
        self._directory_entries += 1

    def _end64_record(self, record: bytes) -> None:
        fields = _END64.unpack_from(record)
        disk, directory_disk, on_disk, entries, size, start = fields[4:10]
        if disk or directory_disk or on_disk != entries:
            raise CannotUnpack("a multi-disk ZIP64 end record")
        self._end64 = (self.offset, entries, size, start)

    def _locator(self, record: bytes) -> None:
        _, disk, end64_offset, disks = _LOCATOR64.unpack_from(record)
        assert self._end64 is not None
        if disk or end64_offset != self._end64[0] or disks > 1:
            raise CannotUnpack("a ZIP64 locator that does not point at its end record")
        self._locator_seen = True

    def _end_record(self, record: bytes) -> None:
        _, disk, directory_disk, on_disk, entries, size, start, comment = _END.unpack_from(record)
        streamed = len(self._members)
        if self._directory_entries != streamed:
            raise CannotUnpack(f"the central directory lists {self._directory_entries} of {streamed} members")
        directory_size = (self._end64[0] if self._end64 is not None else self.offset) - self._directory_start
        if self._end64 is not None:
            _, entries64, size64, start64 = self._end64
            if (entries64, size64, start64) != (streamed, directory_size, self._directory_start):
                raise CannotUnpack("a ZIP64 end record that does not match the central directory")

        def agrees(value: int, actual: int, saturated: int) -> bool:
            return value == actual or (self._end64 is not None and value == saturated)

        consistent = (
            not disk
            and not directory_disk
            and on_disk == entries
            and agrees(entries, streamed, _MAX16)
            and agrees(size, directory_size, _MAX32)
            and agrees(start, self._directory_start, _MAX32)
        )
        if not consistent:
            raise CannotUnpack("an end record that does not match the central directory")
        if self.offset + len(record) != self.size:
            raise CannotUnpack("data after the end record")
        self._state = _DONE
        del comment

    # --- the end ----------------------------------------------------------------------------

    def finish(self) -> ExtractResult:
        """Check that the stream ended with the end record and the whole archive's limits; the
        extracted package."""
        if self._broken:
            raise CannotUnpack("the extraction already stopped")
        if self._state is not _DONE or self.offset != self.size:
            self._broken = True
            raise _corrupt(None, f"the stream ends at {self.offset} of {self.size} bytes before its end record")
        total, limits = self._declared_total, self.limits
        if total > limits.ratio_min_bytes and total > limits.max_ratio * self._declared_compressed:
            self._broken = True
            raise ArchiveLimitError("Archive compression ratio too high")
        logger.info("Extracted {} files ({} bytes) into {} while received", self.files, self.written, self.root)
        return ExtractResult(root=self.root, files=self.files, bytes_written=self.written)

    def restore(self, write_at: WriteAt) -> None:
        """Write the stored members' bytes staged so far, and a record being read, back with
        ``write_at``: with what went to ``keep``, the archive's first :attr:`offset` bytes."""
        if self._out is not None:
            self._out.flush()
        for member in self._members:
            if not member.stored_bytes:
                continue
            assert member.path is not None
            with open_beneath(self.root, member.path.as_posix(), "rb") as source:
                done = 0
                while done < member.stored_bytes:
                    block = source.read(min(_CHUNK, member.stored_bytes - done))
                    if not block:
                        raise OSError(f"staged member {shown(member.info.orig_filename)} shrank")
                    write_at(member.data_offset + done, memoryview(block))
                    done += len(block)
        if self._buffer:
            write_at(self.offset, memoryview(bytes(self._buffer)))

    def discard(self) -> None:
        """Close what is open and remove the staging directory (errors are logged)."""
        self._broken = True
        out, self._out = self._out, None
        if out is not None:
            try:
                out.close()
            except OSError as error:
                logger.debug("closing a staged member failed: {}", error)
        try:
            remove_tree(self.root)
        except OSError as error:
            logger.error("Could not remove partial extraction {}: {}", self.root, error)
