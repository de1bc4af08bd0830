"""Extraction while the bytes arrive: the same tree as extract_zip, the same verdicts on hostile
archives, and the archive given back byte for byte whenever the stream cannot be extracted."""

from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rtcxfer.files.safezip import ZipLimits, extract_zip
from rtcxfer.files.stream_unzip import StreamingUnzip
from rtcxfer.files.unpacking import CannotUnpack
from rtcxfer.protocol.errors import ArchiveError, ArchiveLimitError, CorruptArchiveError, UnsafeArchiveError
from tests.files.test_safezip import CORRUPTIONS, HOSTILE
from tests.support.zips import (
    Member,
    build,
    central_entries,
    late_descriptor_archive,
    piped_archive,
    set_flag_bits,
    set_header_offset,
    set_sizes,
    tree,
)

MiB = 1024 * 1024


class Sink:
    """What the receiving side keeps: the bytes the extractor gives to ``keep``, at their offsets."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def keep(self, offset: int, data: memoryview) -> None:
        assert offset + len(data) <= len(self.data)
        self.data[offset : offset + len(data)] = data


def cuts(size: int, pieces: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges covering ``size`` bytes, cut after each of ``pieces`` bytes."""
    ranges, start = [], 0
    for piece in pieces:
        if start >= size:
            break
        ranges.append((start, min(size, start + piece)))
        start += piece
    if start < size:
        ranges.append((start, size))
    return ranges


def stream(data: bytes, parent: Path, pieces: list[int], limits: ZipLimits = ZipLimits()):
    """What the worker does with ``data``: extract it as it arrives, or, handed back, extract
    the rebuilt archive afterwards. Returns (the extracted root, whether it streamed); the
    exception either way raises with nothing left in ``parent``."""
    unzip = StreamingUnzip.start(parent, len(data), limits)
    sink = Sink(len(data))
    end = 0
    try:
        for start, end in cuts(len(data), pieces):
            unzip.feed(memoryview(data)[start:end], sink.keep)
        return unzip.finish().root, True
    except CannotUnpack:
        unzip.restore(sink.keep)
        unzip.discard()
        sink.keep(end, memoryview(data)[end:])  # the rest is written as it arrives
        assert bytes(sink.data) == data  # the archive given back byte for byte
        return extract_zip(io.BytesIO(bytes(sink.data)), parent, limits).root, False
    except BaseException:
        unzip.discard()
        raise


def verdict(function, *args) -> type[BaseException] | None:
    try:
        function(*args)
    except ArchiveError as error:
        return type(error)
    return None


def sample_archive() -> bytes:
    return build(
        [
            Member("rtcxfer.json", b'{"command": ["true"]}'),
            Member("data/"),
            Member("data/train.bin", os.urandom(300_000), compress=zipfile.ZIP_STORED),
            Member("data/notes.txt", b"words " * 20_000),
            Member("empty.txt", b""),
            Member("data/deep/er/x.bin", os.urandom(5000)),
        ]
    )


SAMPLE = sample_archive()


def _zip64_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("rtcxfer.json", b"{}")
        with archive.open("data.bin", "w", force_zip64=True) as member:  # as the benchmark's package
            member.write(os.urandom(70_000))
        with archive.open("more.bin", "w", force_zip64=True) as member:
            member.write(b"abc" * 1000)
    return buffer.getvalue()


def _zip64_end_records_archive() -> bytes:
    """ZIP64 end records, as zipfile writes them beyond 65,535 members (the limit lowered here)."""
    buffer = io.BytesIO()
    limit = zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP_FILECOUNT_LIMIT = 2
    try:
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for index in range(5):
                archive.writestr(f"f{index}.txt", f"file {index}\n" * 100)
    finally:
        zipfile.ZIP_FILECOUNT_LIMIT = limit
    data = buffer.getvalue()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    return data


def _commented_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"a")
        archive.comment = b"an archive comment"
    return buffer.getvalue()


GOOD = {
    "sample": SAMPLE,
    "zip64": _zip64_archive(),
    "zip64 end records": _zip64_end_records_archive(),
    "comment": _commented_archive(),
    "empty archive": build([]),
    "only dirs": build([Member("a/"), Member("a/b/"), Member("./")]),
    "many small": build([Member(f"d{i % 7}/f{i}", bytes([i % 256]) * (i % 50)) for i in range(300)]),
}


@pytest.mark.parametrize("kind", list(GOOD))
@pytest.mark.parametrize("piece", [1, 7, 4096, 65536, 10**9])
def test_good_archives_give_the_tree_extract_zip_gives(tmp_path: Path, kind: str, piece: int) -> None:
    data = GOOD[kind]
    parent, reference = tmp_path / "streamed", tmp_path / "reference"
    parent.mkdir()
    reference.mkdir()
    root, streamed = stream(data, parent, [piece] * (len(data) // piece + 1))
    assert streamed
    assert tree(root) == tree(extract_zip(io.BytesIO(data), reference).root)


def test_the_archive_is_given_back_byte_for_byte_at_any_point(tmp_path: Path) -> None:
    data = SAMPLE
    for stop in (0, 1, 29, 31, 100, len(data) // 3, len(data) // 2, len(data) - 30, len(data)):
        unzip = StreamingUnzip.start(tmp_path, len(data))
        sink = Sink(len(data))
        for start, end in cuts(stop, [5000] * (stop // 5000 + 1)):
            unzip.feed(memoryview(data)[start:end], sink.keep)
        unzip.restore(sink.keep)
        unzip.discard()
        assert bytes(sink.data[:stop]) == data[:stop]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "data",
    [piped_archive(method=zipfile.ZIP_DEFLATED), piped_archive(method=zipfile.ZIP_STORED), late_descriptor_archive()],
    ids=["data descriptors, deflated", "data descriptors, stored", "a data descriptor after a stored member"],
)
def test_data_descriptors_are_handed_back_and_extracted_whole(tmp_path: Path, data: bytes) -> None:
    root, streamed = stream(data, tmp_path, [3000] * len(data))
    assert not streamed
    reference = tmp_path / "reference"
    reference.mkdir()
    assert tree(root) == tree(extract_zip(io.BytesIO(data), reference).root)


def test_what_it_does_not_stream_is_handed_back(tmp_path: Path) -> None:
    lzma = io.BytesIO()
    with zipfile.ZipFile(lzma, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("a.txt", b"lzma " * 100)
    prefixed = b"#!/bin/sh\nexit 0\n" + SAMPLE  # a self-extracting archive's shape
    trailing = SAMPLE + b"trailing bytes"
    for data in (lzma.getvalue(), prefixed, trailing):
        unzip = StreamingUnzip.start(tmp_path, len(data))
        sink = Sink(len(data))
        with pytest.raises(CannotUnpack):
            unzip.feed(data, sink.keep)
            unzip.finish()
        unzip.restore(sink.keep)
        unzip.discard()
        assert bytes(sink.data) == data
    assert os.listdir(tmp_path) == []


# --- hostile archives: extract_zip's verdict, nothing left behind ---------------------------------


def _hostile_cases() -> dict[str, tuple[bytes, ZipLimits]]:
    cases = {f"hostile: {kind}": (build(members), ZipLimits()) for kind, (members, _) in HOSTILE.items()}
    cases.update({f"corrupt: {kind}": (data, ZipLimits()) for kind, data in CORRUPTIONS.items() if data})
    two = build([Member("a.bin", os.urandom(2000)), Member("b.bin", os.urandom(2000))])
    named = build([Member("aaaa.txt", b"x")])
    at = named.find(b"aaaa.txt")
    cases.update(
        {
            "bomb": (build([Member("zeros.bin", b"\0" * (8 * MiB))]), ZipLimits()),
            "overall ratio": (build([Member(f"z{i}.bin", b"\0" * (MiB // 2)) for i in range(8)]), ZipLimits()),
            "too many members": (build([Member(f"f{i}", b"x") for i in range(6)]), ZipLimits(max_members=5)),
            "total": (
                build([Member("a", os.urandom(600)), Member("b", os.urandom(600))]),
                ZipLimits(max_total_bytes=1000),
            ),
            "member": (build([Member("a", os.urandom(101))]), ZipLimits(max_member_bytes=100)),
            "lying size, deflated": (
                set_sizes(build([Member("ok", b"ok"), Member("liar", os.urandom(10_000))]), 1, uncompressed=100),
                ZipLimits(),
            ),
            "lying size, stored": (
                set_sizes(build([Member("liar", os.urandom(9999), compress=zipfile.ZIP_STORED)]), 0, uncompressed=100),
                ZipLimits(),
            ),
            "inflates beyond its size": (
                set_sizes(build([Member("liar.bin", b"\0" * (4 * MiB))]), 0, uncompressed=10),
                ZipLimits(max_member_bytes=MiB),
            ),
            "overlapping": (set_header_offset(two, 1, 0), ZipLimits()),
            "central name differs": (named[:at] + b"bbbb.txt" + named[at + 8 :], ZipLimits()),
            "encrypted": (set_flag_bits(build([Member("p.txt", b"x"), Member("s.bin", b"x")]), 1, 0x1), ZipLimits()),
            "central crc differs": (_patch_central(two, 1, 16, 0x12345678), ZipLimits()),
        }
    )
    return cases


def _patch_central(data: bytes, index: int, field: int, value: int) -> bytes:
    at = central_entries(data)[index] + field
    return data[:at] + struct.pack("<I", value) + data[at + 4 :]


def _drop_last_central_entry(data: bytes) -> bytes:
    """The central directory without its last entry, the end record patched to match."""
    entries = central_entries(data)
    end = data.rfind(b"PK\x05\x06")
    removed = end - entries[-1]
    record = bytearray(data[end:])
    count, size = struct.unpack_from("<HHI", record, 8)[0], struct.unpack_from("<I", record, 12)[0]
    struct.pack_into("<HHI", record, 8, count - 1, count - 1, size - removed)
    return data[: entries[-1]] + bytes(record)


HOSTILE_STREAMS = _hostile_cases()


@pytest.mark.parametrize("kind", list(HOSTILE_STREAMS))
@pytest.mark.parametrize("piece", [1000, 10**9])
def test_hostile_archives_get_extract_zips_verdict_and_leave_nothing(tmp_path: Path, kind: str, piece: int) -> None:
    data, limits = HOSTILE_STREAMS[kind]
    expected = verdict(extract_zip, io.BytesIO(data), tmp_path, limits)
    assert expected is not None, "not hostile after all"
    assert os.listdir(tmp_path) == []
    with pytest.raises(ArchiveError) as raised:
        stream(data, tmp_path, [piece] * (len(data) // piece + 1), limits)
    assert type(raised.value) is expected, (kind, raised.value)
    assert os.listdir(tmp_path) == []


def test_a_central_directory_that_lists_less_is_believed_as_before(tmp_path: Path) -> None:
    """zipfile reads the directory only: a member it does not list is not extracted. The stream
    hands such an archive back, and the package is what it was."""
    data = _drop_last_central_entry(build([Member("a.bin", os.urandom(2000)), Member("b.bin", os.urandom(2000))]))
    (tmp_path / "streamed").mkdir()
    (tmp_path / "reference").mkdir()
    root, streamed = stream(data, tmp_path / "streamed", [1000] * 10)
    assert not streamed and tree(root) == tree(extract_zip(io.BytesIO(data), tmp_path / "reference").root)
    assert set(tree(root)) == {"a.bin"}


def test_checks_that_need_the_central_directory_wait_for_it(tmp_path: Path) -> None:
    """A symlink's mode bits are in the central directory only: the member is written as a
    plain file meanwhile, and the whole goes when the directory says what it is."""
    data = build([Member("ok.txt", b"fine"), Member("link", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)])
    unzip = StreamingUnzip.start(tmp_path, len(data))
    sink = Sink(len(data))
    first_central = central_entries(data)[0]
    unzip.feed(data[:first_central], sink.keep)
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        unzip.feed(data[first_central:], sink.keep)
    unzip.discard()
    assert os.listdir(tmp_path) == []


def test_a_bomb_is_refused_before_its_bytes_are_written(tmp_path: Path) -> None:
    """The archive's size bounds what the rest can compress: the sizes declared so far are
    enough to refuse it."""
    members = [Member(f"z{i}.bin", b"\0" * MiB) for i in range(40)]
    data = build(members)
    unzip = StreamingUnzip.start(tmp_path, len(data))
    with pytest.raises(ArchiveLimitError, match="ratio"):
        unzip.feed(data, Sink(len(data)).keep)
    assert unzip.written < 40 * MiB // 2
    unzip.discard()


def test_a_truncated_stream_is_corrupt(tmp_path: Path) -> None:
    data = SAMPLE[: len(SAMPLE) - 10]
    unzip = StreamingUnzip.start(tmp_path, len(data))
    unzip.feed(data, Sink(len(data)).keep)
    with pytest.raises(CorruptArchiveError):
        unzip.finish()
    unzip.discard()
    assert os.listdir(tmp_path) == []


# --- hypothesis ------------------------------------------------------------------------------------

ARCHIVES = {**GOOD, "late descriptor": late_descriptor_archive(), "pipe": piped_archive(method=zipfile.ZIP_DEFLATED)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(ARCHIVES)), pieces=st.lists(st.integers(min_value=1, max_value=70_000), max_size=40))
def test_any_cut_of_a_valid_archive_gives_extract_zips_tree(kind: str, pieces: list[int]) -> None:
    data = ARCHIVES[kind]
    with tempfile.TemporaryDirectory() as parent:
        root, streamed = stream(data, Path(parent), pieces)
        event(f"streamed: {streamed}")
        with tempfile.TemporaryDirectory() as other:
            assert tree(root) == tree(extract_zip(io.BytesIO(data), other).root)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["sample", "zip64", "many small"]),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
    pieces=st.lists(st.integers(min_value=1, max_value=70_000), max_size=20),
)
def test_corruption_never_writes_outside_the_staging_directory_nor_raises_anything_else(
    kind: str, flips: list[tuple[int, int]], cut: int | None, pieces: list[int]
) -> None:
    corrupted = bytearray(GOOD[kind])
    for position, mask in flips:
        corrupted[position % len(corrupted)] ^= mask
    if cut is not None:
        corrupted = corrupted[: cut % (len(corrupted) + 1)]
    with tempfile.TemporaryDirectory() as base:
        parent = Path(base) / "parent"
        parent.mkdir()
        unzip = StreamingUnzip.start(parent, len(corrupted))
        sink = Sink(len(corrupted))
        outcome, end = "extracted", 0
        try:
            for start, end in cuts(len(corrupted), pieces):
                unzip.feed(memoryview(bytes(corrupted))[start:end], sink.keep)
            unzip.finish()
        except CannotUnpack:
            outcome = "handed back"
            unzip.restore(sink.keep)
            sink.keep(end, memoryview(bytes(corrupted))[end:])
            assert bytes(sink.data) == bytes(corrupted)
        except ArchiveError as error:
            outcome = type(error).__name__
        event(outcome)
        assert os.listdir(base) == ["parent"]
        assert os.listdir(parent) == [unzip.root.name]
        unzip.discard()
        assert os.listdir(parent) == []
