"""ZIP archives built member by member for the extraction tests, and doctored afterwards: odd
modes and flags, lying size fields, overlapping or renamed members."""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CENTRAL_SIG = b"PK\x01\x02"


@dataclass
class Member:
    """One archive member as written, odd modes and flags included."""

    name: str
    data: bytes = b""
    mode: int | None = None  # full st_mode for external_attr's high 16 bits
    compress: int = zipfile.ZIP_DEFLATED


def build(members: Iterable[Member]) -> bytes:
    """A ZIP archive holding ``members`` exactly as given (duplicates and odd modes included)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is what some tests want
        with zipfile.ZipFile(buffer, "w") as archive:
            for member in members:
                info = zipfile.ZipInfo(member.name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = member.compress
                if member.mode is not None:
                    info.external_attr = (member.mode & 0xFFFF) << 16
                elif member.name.endswith("/"):
                    info.external_attr = (stat.S_IFDIR | 0o755) << 16
                else:
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                archive.writestr(info, member.data)
    return buffer.getvalue()


def central_entries(data: bytes) -> list[int]:
    """Offsets of the central directory file headers."""
    offsets = []
    start = 0
    while (found := data.find(CENTRAL_SIG, start)) >= 0:
        offsets.append(found)
        start = found + 4
    return offsets


def patch_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4 :]


def set_sizes(data: bytes, index: int, *, uncompressed: int | None = None, compressed: int | None = None) -> bytes:
    """Rewrite the sizes of member ``index`` in both its local and central headers."""
    central = central_entries(data)[index]
    local = struct.unpack_from("<I", data, central + 42)[0]
    if uncompressed is not None:
        data = patch_u32(data, central + 24, uncompressed)
        data = patch_u32(data, local + 22, uncompressed)
    if compressed is not None:
        data = patch_u32(data, central + 20, compressed)
        data = patch_u32(data, local + 18, compressed)
    return data


def set_flag_bits(data: bytes, index: int, bits: int) -> bytes:
    """OR ``bits`` into member ``index``'s general purpose flags (zipfile resets them on write)."""
    central = central_entries(data)[index]
    local = struct.unpack_from("<I", data, central + 42)[0]
    for offset in (central + 8, local + 6):
        value = struct.unpack_from("<H", data, offset)[0] | bits
        data = data[:offset] + struct.pack("<H", value) + data[offset + 2 :]
    return data


def set_compression(data: bytes, index: int, method: int) -> bytes:
    central = central_entries(data)[index]
    return data[: central + 10] + struct.pack("<H", method) + data[central + 12 :]


def set_header_offset(data: bytes, index: int, offset: int) -> bytes:
    return patch_u32(data, central_entries(data)[index] + 42, offset)


def rename(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace a member name everywhere (same length), e.g. to plant a NUL byte."""
    assert len(old) == len(new)
    return data.replace(old, new)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``root``, by relative name; links or
    special files fail the test."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            assert stat.S_ISREG(mode) or stat.S_ISDIR(mode), path
            found[path.relative_to(root).as_posix()] = path.read_bytes() if stat.S_ISREG(mode) else None
    return found


class _Pipe(io.RawIOBase):
    """A write-only stream that cannot seek: zipfile then puts sizes after each member's data."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        self.data += data
        return len(data)


def piped_archive(files: dict[str, bytes] | None = None, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """What zipfile writes to a pipe (as ``zip -`` does): sizes in data descriptors. By default
    a manifest and 20,000 random bytes."""
    if files is None:
        files = {"rtcxfer.json": b"{}", "data.bin": os.urandom(20_000)}
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", method) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return bytes(pipe.data)


def late_descriptor_archive() -> bytes:
    """A stored member that streams, then a deflated one whose sizes follow its data."""
    data = build([Member("first.bin", os.urandom(50_000), compress=zipfile.ZIP_STORED), Member("b.txt", b"w " * 5000)])
    entries = central_entries(data)
    local = struct.unpack_from("<I", data, entries[1] + 42)[0]
    crc, compressed, size = struct.unpack_from("<III", data, local + 14)
    name_length, extra_length = struct.unpack_from("<HH", data, local + 26)
    data_start = local + 30 + name_length + extra_length
    assert data_start + compressed == entries[0]
    header = bytearray(data[local:data_start])
    struct.pack_into("<H", header, 6, struct.unpack_from("<H", header, 6)[0] | 0x8)
    struct.pack_into("<III", header, 14, 0, 0, 0)
    descriptor = struct.pack("<4sIII", b"PK\x07\x08", crc, compressed, size)
    central = bytearray(data[entries[0] :])
    flags_at = entries[1] - entries[0] + 8
    struct.pack_into("<H", central, flags_at, struct.unpack_from("<H", central, flags_at)[0] | 0x8)
    end = central.rfind(b"PK\x05\x06")
    struct.pack_into("<I", central, end + 16, struct.unpack_from("<I", central, end + 16)[0] + len(descriptor))
    return data[:local] + bytes(header) + data[data_start : entries[0]] + descriptor + bytes(central)
