"""Write-behind of partial files: new bytes are handed to the disk as they arrive, so the fsync
before the rename waits only for the tail (:mod:`rtcxfer.files.write_behind`)."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from rtcxfer.files import write_behind
from rtcxfer.files.write_behind import FALLBACK_SYNC_BYTES, WRITE_BEHIND_BYTES, WriteBehind

MiB = 1024 * 1024


def _append(handle, behind: WriteBehind, total: int, piece: int = MiB) -> None:
    block = os.urandom(piece)
    for _ in range(total // piece):
        handle.write(block)
        behind.written(piece)


@pytest.mark.skipif(write_behind.sync_file_range is None, reason="sync_file_range is Linux-only")
def test_each_range_is_handed_to_the_disk_once_and_in_order(tmp_path, monkeypatch):
    calls = []
    real = write_behind.sync_file_range

    def spy(fd, offset, length):
        calls.append((offset, length))
        real(fd, offset, length)  # the kernel accepts it, or this raises

    monkeypatch.setattr(write_behind, "sync_file_range", spy)
    resumed_at = 3 * MiB
    with open(tmp_path / "part", "wb", buffering=0) as handle:
        handle.write(b"\0" * resumed_at)
        behind = WriteBehind(handle.fileno(), resumed_at)
        _append(handle, behind, 5 * WRITE_BEHIND_BYTES + 2 * MiB)
        behind.close()
    assert len(calls) == 5
    assert calls[0][0] == resumed_at
    for (offset, length), (next_offset, _) in zip(calls, calls[1:]):
        assert offset + length == next_offset
    assert all(length == WRITE_BEHIND_BYTES for _, length in calls)
    # The last 2 MiB are left to the final fsync.
    assert calls[-1][0] + calls[-1][1] == resumed_at + 5 * WRITE_BEHIND_BYTES


def test_a_failing_sync_file_range_falls_back_to_background_fsync(tmp_path, monkeypatch):
    def refuse(fd, offset, length):
        raise OSError(errno.EINVAL, "not on this file system")

    synced = []
    real_fsync = os.fsync

    def fsync_spy(fd):
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(write_behind, "sync_file_range", refuse)
    monkeypatch.setattr(write_behind, "FALLBACK_SYNC_BYTES", 4 * MiB)
    monkeypatch.setattr(write_behind.os, "fsync", fsync_spy)
    with open(tmp_path / "part", "wb", buffering=0) as handle:
        behind = WriteBehind(handle.fileno(), 0)
        _append(handle, behind, WRITE_BEHIND_BYTES + 4 * MiB)
        behind.close()  # waits for the background fsync
        assert synced and set(synced) == {handle.fileno()}


def test_without_sync_file_range_a_thread_fsyncs_and_close_waits_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(write_behind, "sync_file_range", None)
    finished = []
    real_fsync = os.fsync

    def slow_fsync(fd):
        real_fsync(fd)
        finished.append(fd)

    monkeypatch.setattr(write_behind.os, "fsync", slow_fsync)
    with open(tmp_path / "part", "wb", buffering=0) as handle:
        behind = WriteBehind(handle.fileno(), 0)
        _append(handle, behind, FALLBACK_SYNC_BYTES - MiB)
        assert behind._syncing is None  # not yet a full fallback interval
        _append(handle, behind, MiB)
        assert behind._syncing is not None
        behind.close()
        assert finished == [handle.fileno()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux-only")
def test_linux_has_sync_file_range():
    # A regression guard: on Linux the cheap path must be found, or every receiver falls back.
    assert write_behind.sync_file_range is not None
