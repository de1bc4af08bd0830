"""A file unpacked while it is received (:class:`IncomingFile` with ``unpack``): handed over
only once verified, the archive never written in the fast path, and written back whole when it
cannot be unpacked or when the transfer stops and is resumed."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest

from rtcxfer.files import kept_partials
from rtcxfer.files.receiving import IncomingFile, is_restoring_into, part_name
from rtcxfer.files.safezip import ExtractResult, ZipLimits, extract_zip
from rtcxfer.files.stream_unzip import StreamingUnzip
from rtcxfer.files.unpacking import UnpackerFactory
from rtcxfer.protocol.errors import (
    ArchiveLimitError,
    CorruptArchiveError,
    IntegrityError,
    TransferError,
    UnsafeArchiveError,
)
from rtcxfer.testing.contract import run_async
from tests.support.zips import Member, build, late_descriptor_archive, piped_archive, tree

TID = "cd" * 16
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package(size: int = 3 * MiB) -> bytes:
    return build(
        [
            Member("rtcxfer.json", b'{"command": ["true"]}'),
            Member("data/big.bin", os.urandom(size), compress=zipfile.ZIP_STORED),
            Member("data/text.txt", b"line\n" * 10_000),
        ]
    )


class Staging:
    """The worker's side of ``unpack``: a :class:`StreamingUnzip` beneath ``directory``."""

    def __init__(self, directory: Path, limits: ZipLimits = ZipLimits()) -> None:
        self.directory = directory
        self.limits = limits
        self.started: list[StreamingUnzip] = []

    def __call__(self, name: str, size: int) -> StreamingUnzip:
        unzip = StreamingUnzip.start(self.directory, size, self.limits)
        self.started.append(unzip)
        return unzip


def opened(incoming_dir: Path, data: bytes, staging: UnpackerFactory | None, **overrides) -> IncomingFile:
    fields = {"transfer_id": TID, "name": "pkg.zip", "size": len(data), "sha256": sha256(data), "transport": "test"}
    fields.update(overrides)
    return IncomingFile.open(incoming_dir, unpack=staging, **fields)


def write_in_pieces(incoming: IncomingFile, data: bytes, piece: int = 65536) -> None:
    for start in range(incoming.received, len(data), piece):
        incoming.write(data[start : start + piece])


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    incoming_dir, job_dir = tmp_path / "in", tmp_path / "job"
    job_dir.mkdir()
    return incoming_dir, job_dir


def test_a_package_is_extracted_as_it_arrives_and_handed_over_once_verified(dirs):
    incoming_dir, job_dir = dirs
    data = package()
    staging = Staging(job_dir)

    async def scenario():
        incoming = await opened(incoming_dir, data, staging)
        assert incoming.unpacking
        write_in_pieces(incoming, data)
        # The stored member's bytes never reach the partial: it is sparse, a few KiB on disk.
        assert os.stat(incoming.partial_path).st_blocks * 512 < 512 * 1024
        delivered = []

        async def deliver(received):
            delivered.append(received)

        received = await incoming.complete(deliver=deliver)
        assert delivered == [received] and incoming.published and incoming.finished
        return received

    received = run_async(scenario())
    assert isinstance(received.unpacked, ExtractResult) and received.unpack_error is None
    assert received.sha256 == sha256(data)
    reference = job_dir.parent / "reference"
    reference.mkdir()
    assert tree(received.unpacked.root) == tree(extract_zip(io.BytesIO(data), reference).root)
    assert not received.path.exists()
    assert os.listdir(incoming_dir) == []  # no partial, no ZIP
    assert os.listdir(job_dir) == [received.unpacked.root.name]


def test_nothing_is_handed_over_before_the_sha256_matched(dirs):
    incoming_dir, job_dir = dirs
    data = package(MiB)

    async def scenario():
        incoming = await opened(incoming_dir, data, Staging(job_dir), sha256="0" * 64)
        write_in_pieces(incoming, data)
        with pytest.raises(IntegrityError):
            await incoming.complete(deliver=pytest.fail)

    run_async(scenario())
    assert os.listdir(incoming_dir) == [] and os.listdir(job_dir) == []


@pytest.mark.parametrize(
    "data",
    [piped_archive(), late_descriptor_archive(), b"not a zip at all" * 1000],
    ids=["data descriptors", "a data descriptor after a stored member", "not a zip"],
)
@pytest.mark.parametrize("piece", [1000, 65536])
def test_what_cannot_be_extracted_as_it_arrives_is_received_whole_as_before(dirs, data: bytes, piece: int):
    incoming_dir, job_dir = dirs

    async def scenario():
        incoming = await opened(incoming_dir, data, Staging(job_dir))
        write_in_pieces(incoming, data, piece)
        return await incoming.complete()

    received = run_async(scenario())
    assert received.unpacked is None and received.unpack_error is None
    assert received.path.read_bytes() == data
    assert os.listdir(job_dir) == []


HOSTILE = {
    "traversal": (build([Member("ok.txt", b"ok"), Member("../../evil", b"x")]), UnsafeArchiveError),
    "bad CRC": (None, CorruptArchiveError),
    "bomb": (build([Member("zeros.bin", b"\0" * (8 * MiB))]), ArchiveLimitError),
    "truncated": (None, CorruptArchiveError),
}


def _hostile(kind: str) -> bytes:
    data = HOSTILE[kind][0]
    if data is not None:
        return data
    good = package(MiB)
    if kind == "truncated":
        return good[: len(good) - 10]
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # inside the stored member
    return bytes(flipped)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_package_is_verified_then_handed_over_with_its_error_and_nothing_kept(dirs, kind: str):
    incoming_dir, job_dir = dirs
    data = _hostile(kind)

    async def scenario():
        incoming = await opened(incoming_dir, data, Staging(job_dir))
        write_in_pieces(incoming, data, 4096)
        return await incoming.complete()

    received = run_async(scenario())
    assert isinstance(received.unpack_error, HOSTILE[kind][1]), received.unpack_error
    assert received.unpacked is None
    assert os.listdir(incoming_dir) == [] and os.listdir(job_dir) == []


@pytest.mark.parametrize("stop_at", [10, 100_000, MiB + 7, -200])
def test_an_interrupted_transfer_keeps_the_archive_bytes_and_resumes_whole(dirs, stop_at: int):
    """abandon(keep=True) part-way: the partial holds the archive's first bytes exactly (the
    staged members written back in a thread), a later session resumes from there, and the
    file it publishes is the archive byte for byte."""
    incoming_dir, job_dir = dirs
    data = package(2 * MiB)
    stop = stop_at % len(data)

    async def scenario():
        incoming = await opened(incoming_dir, data, Staging(job_dir))
        write_in_pieces(incoming, data[:stop])
        incoming.abandon(keep=True)
        assert is_restoring_into(incoming_dir) or incoming.finished
        while not incoming.finished:
            await asyncio.sleep(0.01)
        assert not is_restoring_into(incoming_dir)
        assert (incoming_dir / part_name("pkg.zip", TID)).read_bytes() == data[:stop]
        assert os.listdir(job_dir) == []  # the staged members went
        # The session's end moves it aside; the next session adopts and resumes it.
        kept = job_dir.parent / "kept"
        assert kept_partials.keep_partials(incoming_dir, kept) == 1
        resumed = await opened(job_dir.parent / "in2", data, Staging(job_dir), kept_partials_dir=kept)
        assert resumed.offset == stop and not resumed.unpacking
        write_in_pieces(resumed, data)
        return await resumed.complete()

    received = run_async(scenario())
    assert received.path.read_bytes() == data and received.unpacked is None


def test_a_partial_being_unpacked_is_never_taken_over(dirs):
    incoming_dir, job_dir = dirs
    data = package(MiB)

    async def scenario():
        first = await opened(incoming_dir, data, Staging(job_dir))
        first.write(data[:100_000])
        with pytest.raises(Exception, match="busy"):
            await opened(incoming_dir, data, Staging(job_dir))
        first.abandon(keep=False)
        assert first.finished

    run_async(scenario())
    assert os.listdir(incoming_dir) == [] and os.listdir(job_dir) == []


def test_a_resumed_file_is_not_unpacked(dirs):
    incoming_dir, job_dir = dirs
    data = package(MiB)
    incoming_dir.mkdir()
    (incoming_dir / part_name("pkg.zip", TID)).write_bytes(data[:5000])
    staging = Staging(job_dir)

    async def scenario():
        incoming = await opened(incoming_dir, data, staging)
        assert incoming.offset == 5000 and not incoming.unpacking
        write_in_pieces(incoming, data)
        return await incoming.complete()

    assert run_async(scenario()).path.read_bytes() == data
    assert staging.started == []


def test_writes_from_a_thread_unpack_too(dirs):
    """direct and s3 write from a thread lent the file: a fallback there writes back in place."""
    incoming_dir, job_dir = dirs
    for data, streams in ((package(MiB), True), (late_descriptor_archive(), False)):

        async def scenario(data=data):
            incoming = await opened(incoming_dir, data, Staging(job_dir))
            await incoming.run_in_thread(write_in_pieces, incoming, data, MiB)
            return await incoming.complete()

        received = run_async(scenario())
        assert (received.unpacked is not None) == streams
        if received.unpacked is None:
            assert received.path.read_bytes() == data
            received.path.unlink()


def test_abandoned_while_the_whole_is_checked_the_file_is_kept_whole(dirs):
    """The session ends while the unpacker checks the central directory: nothing is handed over
    and the partial kept holds the whole archive (for a re-run to resume)."""
    incoming_dir, job_dir = dirs
    data = package(MiB)
    checking, release = threading.Event(), threading.Event()

    class SlowFinish(StreamingUnzip):
        def finish(self):  # type: ignore[no-untyped-def]
            checking.set()
            release.wait(10)
            return super().finish()

    def slow(name: str, size: int) -> StreamingUnzip:
        return SlowFinish(Path(tempfile.mkdtemp(dir=job_dir, prefix="pkg-")), size)

    async def scenario():
        incoming = await opened(incoming_dir, data, slow)
        write_in_pieces(incoming, data)
        completing = asyncio.ensure_future(incoming.complete(deliver=pytest.fail))
        await asyncio.to_thread(checking.wait, 10)
        incoming.abandon(keep=True)
        release.set()
        with pytest.raises(TransferError, match="abandoned"):
            await completing
        while not incoming.finished:
            await asyncio.sleep(0.01)

    run_async(scenario())
    assert (incoming_dir / part_name("pkg.zip", TID)).read_bytes() == data
    assert os.listdir(job_dir) == []


def test_a_late_fallback_on_the_loop_writes_back_in_a_thread_while_the_rest_arrives(dirs):
    """rtc-chunked writes on the event loop: handing back an archive whose stored members
    already arrived must not stall it. The rest is written meanwhile; complete() waits."""
    incoming_dir, job_dir = dirs
    data = late_descriptor_archive()
    writing_back, release = threading.Event(), threading.Event()

    class SlowRestore(StreamingUnzip):
        def restore(self, write_at):  # type: ignore[no-untyped-def]
            writing_back.set()
            release.wait(10)
            super().restore(write_at)

    def slow(name: str, size: int) -> StreamingUnzip:
        return SlowRestore(Path(tempfile.mkdtemp(dir=job_dir, prefix="pkg-")), size)

    async def scenario():
        incoming = await opened(incoming_dir, data, slow)
        write_in_pieces(incoming, data, 1000)  # on the loop, as rtc-chunked does
        assert incoming.received == len(data) and not incoming.unpacking
        assert await asyncio.to_thread(writing_back.wait, 10) and incoming.busy  # still writing back
        release.set()
        return await incoming.complete()

    received = run_async(scenario())
    assert received.path.read_bytes() == data and received.unpacked is None
    assert os.listdir(job_dir) == []
