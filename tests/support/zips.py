"""ZIP archives built member by member for the extraction tests, and doctored afterwards: odd
modes and flags, lying size fields, overlapping or renamed members."""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

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
