"""Safe ZIP extraction: good packages extract, hostile ones leave nothing behind."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from rtcxfer.files.safezip import ExtractResult, ZipLimits, extract_zip
from rtcxfer.protocol.errors import (
    ArchiveError,
    ArchiveLimitError,
    CorruptArchiveError,
    StorageFullError,
    UnsafeArchiveError,
)
from tests.support.small_disk import small_tmpfs
from tests.support.zips import (
    Member,
    build,
    central_entries,
    rename,
    set_compression,
    set_flag_bits,
    set_header_offset,
    set_sizes,
    tree,
)

MiB = 1024 * 1024


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest


def test_good_archive_extracts(parent: Path) -> None:
    payload = os.urandom(3 * MiB // 2)
    data = build(
        [
            Member("config.json", b'{"epochs": 3}'),
            Member("data/"),
            Member("data/train/part-0.bin", payload),
            Member("data/empty.txt", b""),
            Member("model/weights.bin", b"\0" * 1000),  # tiny and highly compressible: allowed
            Member("./notes/./readme.md", b"hi"),
            Member("stored.bin", b"abc" * 10, compress=zipfile.ZIP_STORED),
        ]
    )
    calls: list[tuple[int, int]] = []
    result = extract_zip(io.BytesIO(data), parent, progress=lambda done, total: calls.append((done, total)))
    assert isinstance(result, ExtractResult)
    assert result.root.parent == parent.resolve()
    assert result.root.name.startswith("pkg-")
    assert result.files == 6
    expected_bytes = 13 + len(payload) + 1000 + 2 + 30
    assert result.bytes_written == expected_bytes
    extracted = tree(result.root)
    assert extracted["data/train/part-0.bin"] == payload
    assert extracted["notes/readme.md"] == b"hi"
    assert extracted["data/empty.txt"] == b""
    assert extracted["data"] is None
    assert calls[-1] == (expected_bytes, expected_bytes)
    assert os.listdir(parent) == [result.root.name]


def test_archive_given_as_a_path_and_fresh_dirs(tmp_path: Path, parent: Path) -> None:
    archive = tmp_path / "pkg.zip"
    archive.write_bytes(build([Member("a.txt", b"a")]))
    first = extract_zip(archive, parent)
    second = extract_zip(str(archive), parent)
    assert first.root != second.root
    assert (first.root / "a.txt").read_bytes() == b"a"


def test_files_get_no_special_modes(parent: Path) -> None:
    data = build([Member("run.sh", b"#!/bin/sh\n", mode=stat.S_IFREG | 0o6777)])
    result = extract_zip(io.BytesIO(data), parent)
    mode = (result.root / "run.sh").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID)


HOSTILE: dict[str, tuple[list[Member], type[ArchiveError]]] = {
    "absolute": ([Member("/etc/cron.d/x", b"x")], UnsafeArchiveError),
    "traversal": ([Member("../../evil", b"x")], UnsafeArchiveError),
    "inner traversal": ([Member("a/../../evil", b"x")], UnsafeArchiveError),
    "backslash traversal": ([Member("..\\..\\evil", b"x")], UnsafeArchiveError),
    "drive letter": ([Member("C:/evil", b"x")], UnsafeArchiveError),
    "drive letter relative": ([Member("c:evil", b"x")], UnsafeArchiveError),
    "scheme": ([Member("file:evil", b"x")], UnsafeArchiveError),
    "lookalike": ([Member("\uff0e\uff0e/evil", b"x")], UnsafeArchiveError),
    "control": ([Member("a\x1bb", b"x")], UnsafeArchiveError),
    "symlink": ([Member("link", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)], UnsafeArchiveError),
    "symlink then write": (
        [Member("link", b"/tmp", mode=stat.S_IFLNK | 0o777), Member("link/evil", b"x")],
        UnsafeArchiveError,
    ),
    "fifo": ([Member("fifo", b"", mode=stat.S_IFIFO | 0o644)], UnsafeArchiveError),
    "char device": ([Member("null", b"", mode=stat.S_IFCHR | 0o644)], UnsafeArchiveError),
    "dir mode on file name": ([Member("x", b"", mode=stat.S_IFDIR | 0o755)], UnsafeArchiveError),
    "duplicate": ([Member("a.txt", b"1"), Member("a.txt", b"2")], UnsafeArchiveError),
    "duplicate after normalisation": ([Member("a/b.txt", b"1"), Member("./a//b.txt", b"2")], UnsafeArchiveError),
    "duplicate dir": ([Member("a/"), Member("a/")], UnsafeArchiveError),
    "file and dir": ([Member("a", b"1"), Member("a/b", b"2")], UnsafeArchiveError),
    "file and explicit dir": ([Member("a", b"1"), Member("a/")], UnsafeArchiveError),
    "too long name": ([Member("/".join(["n" * 250] * 5), b"")], ArchiveLimitError),
    "too deep": ([Member("/".join(["d"] * 70) + "/f", b"")], ArchiveLimitError),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_members_are_rejected(parent: Path, kind: str) -> None:
    members, expected = HOSTILE[kind]
    with pytest.raises(expected):
        extract_zip(io.BytesIO(build(members)), parent)
    assert os.listdir(parent) == []


@pytest.mark.parametrize("bits", [0x1, 0x40 | 0x1])
def test_encrypted_member_is_rejected(parent: Path, bits: int) -> None:
    data = set_flag_bits(build([Member("plain.txt", b"x"), Member("secret.bin", b"x")]), 1, bits)
    with pytest.raises(UnsafeArchiveError, match="encrypted"):
        extract_zip(io.BytesIO(data), parent)
    assert os.listdir(parent) == []


def test_nul_in_name_is_rejected(parent: Path) -> None:
    data = rename(build([Member("goodXname.txt", b"x")]), b"goodXname.txt", b"good\x00name.txt")
    with pytest.raises(UnsafeArchiveError):
        extract_zip(io.BytesIO(data), parent)
    assert os.listdir(parent) == []


def test_zip_bomb_by_ratio(parent: Path) -> None:
    data = build([Member("zeros.bin", b"\0" * (8 * MiB))])
    assert len(data) < 8 * MiB // 200
    with pytest.raises(ArchiveLimitError):
        extract_zip(io.BytesIO(data), parent)
    assert os.listdir(parent) == []


def test_overall_ratio(parent: Path) -> None:
    # Each member stays below the per-member floor; together they are a bomb.
    members = [Member(f"z{i}.bin", b"\0" * (MiB // 2)) for i in range(8)]
    with pytest.raises(ArchiveLimitError):
        extract_zip(io.BytesIO(build(members)), parent)
    assert os.listdir(parent) == []


@pytest.mark.parametrize(
    ("limits", "members"),
    [
        (ZipLimits(max_members=5), [Member(f"f{i}", b"x") for i in range(6)]),
        (ZipLimits(max_total_bytes=1000), [Member("a", os.urandom(600)), Member("b", os.urandom(600))]),
        (ZipLimits(max_member_bytes=100), [Member("a", os.urandom(101))]),
        (ZipLimits(max_name_bytes=10), [Member("abcdefghijk", b"")]),
        (ZipLimits(max_depth=2), [Member("a/b/c", b"")]),
    ],
    ids=["members", "total", "member", "name", "depth"],
)
def test_limits(parent: Path, limits: ZipLimits, members: list[Member]) -> None:
    with pytest.raises(ArchiveLimitError):
        extract_zip(io.BytesIO(build(members)), parent, limits=limits)
    assert os.listdir(parent) == []


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ZipLimits(max_members=0)


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_size_header_smaller_than_real_data(parent: Path, compress: int) -> None:
    real = os.urandom(10_000)
    data = set_sizes(build([Member("ok.txt", b"ok"), Member("liar.bin", real, compress=compress)]), 1, uncompressed=100)
    with pytest.raises(ArchiveError):
        extract_zip(io.BytesIO(data), parent)
    assert os.listdir(parent) == []


def test_size_header_smaller_than_real_data_defeats_limits(parent: Path) -> None:
    # The header claims a tiny member, the data inflates far beyond the member limit.
    data = set_sizes(build([Member("liar.bin", b"\0" * (4 * MiB))]), 0, uncompressed=10)
    with pytest.raises(ArchiveError):
        extract_zip(io.BytesIO(data), parent, limits=ZipLimits(max_member_bytes=MiB))
    assert os.listdir(parent) == []


def test_size_header_larger_than_real_data(parent: Path) -> None:
    data = build([Member("short.bin", os.urandom(1000), compress=zipfile.ZIP_DEFLATED)])
    data = set_sizes(data, 0, uncompressed=5000)
    with pytest.raises(CorruptArchiveError):
        extract_zip(io.BytesIO(data), parent)
    assert os.listdir(parent) == []


def test_overlapping_members(parent: Path) -> None:
    data = build([Member("a.bin", os.urandom(2000)), Member("b.bin", os.urandom(2000))])
    data = set_header_offset(data, 1, 0)
    with pytest.raises(ArchiveError):
        extract_zip(io.BytesIO(data), parent)
    assert os.listdir(parent) == []


def _corruptions() -> dict[str, bytes]:
    good = build([Member("a.bin", os.urandom(5000), compress=zipfile.ZIP_STORED), Member("b.txt", b"hello" * 100)])
    flipped = bytearray(good)
    flipped[100] ^= 0xFF  # inside a.bin's stored data: CRC mismatch
    deflate_broken = bytearray(good)
    b_offset = good.find(b"b.txt") + len("b.txt")
    deflate_broken[b_offset + 2 : b_offset + 6] = b"\xff\xff\xff\xff"
    return {
        "not a zip": b"this is not a zip file at all" * 10,
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "truncated central directory": good[:-30],
        "crc": bytes(flipped),
        "deflate stream": bytes(deflate_broken),
        "unsupported compression method": set_compression(good, 1, 99),
    }


CORRUPTIONS = _corruptions()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_archives(parent: Path, kind: str) -> None:
    with pytest.raises(CorruptArchiveError) as info:
        extract_zip(io.BytesIO(CORRUPTIONS[kind]), parent)
    assert str(parent) not in str(info.value)
    assert os.listdir(parent) == []


def test_missing_archive_file(tmp_path: Path, parent: Path) -> None:
    with pytest.raises(CorruptArchiveError):
        extract_zip(tmp_path / "missing.zip", parent)


def test_local_and_central_names_differ(parent: Path) -> None:
    data = build([Member("aaaa.txt", b"x")])
    local_name = data.find(b"aaaa.txt")
    data = data[:local_name] + b"bbbb.txt" + data[local_name + 8 :]
    assert len(central_entries(data)) == 1
    with pytest.raises(CorruptArchiveError):
        extract_zip(io.BytesIO(data), parent)
    assert os.listdir(parent) == []


def test_progress_failure_cleans_up(parent: Path) -> None:
    def boom(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_zip(io.BytesIO(build([Member("a", b"x")])), parent, progress=boom)
    assert os.listdir(parent) == []


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 256 KiB tmpfs with 100 inodes, so that writing really runs out of space (needs root)."""
    with small_tmpfs(tmp_path / "small", "256k", inodes=100) as mount_point:
        yield mount_point


@pytest.mark.parametrize(
    "members",
    [
        [Member("big.bin", os.urandom(512 * 1024), compress=zipfile.ZIP_STORED)],
        # Small files fit the write buffer: the disk fills up on the flush at close.
        [Member(f"small-{i}.bin", os.urandom(3000), compress=zipfile.ZIP_STORED) for i in range(200)],
        [Member(f"dir-{i}/", b"") for i in range(5000)],
    ],
    ids=["one big file", "many small files", "many dirs"],
)
def test_disk_full(small_fs: Path, members: list[Member]) -> None:
    data = build(members)
    with pytest.raises(StorageFullError):
        extract_zip(io.BytesIO(data), small_fs)
    assert os.listdir(small_fs) == []
