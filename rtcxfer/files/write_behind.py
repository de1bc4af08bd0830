"""Writing a partial file back to disk while the rest of it arrives.

A received file is fsynced before it takes its final name (:mod:`rtcxfer.files.receiving`).
Left to itself the kernel writes nothing back until a tenth of memory is dirty, so that fsync
would wait for the whole file at the very end of the transfer: measured between the two hosts
of the test bed, about a tenth of a 256 MiB ``direct`` transfer. Here the bytes are handed to
the disk every :data:`WRITE_BEHIND_BYTES` as they arrive, and the final fsync waits for the
last few MiB only.

Linux: ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts the write-back of just the new range
and returns without waiting (the standard library has no binding, so it is called through
``ctypes``). Elsewhere, or where the call fails (some FUSE and network file systems): a thread
runs ``fsync`` on the file every :data:`FALLBACK_SYNC_BYTES`, never two at once.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from contextlib import suppress

from rtcxfer.log import logger

#: Bytes written between two requests to start writing back.
WRITE_BEHIND_BYTES = 8 * 1024 * 1024
#: Without ``sync_file_range``: bytes written between two background fsyncs.
FALLBACK_SYNC_BYTES = 64 * 1024 * 1024

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>

SyncRange = Callable[[int, int, int], None]


def _load_sync_file_range() -> SyncRange | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def sync_range(fd: int, offset: int, length: int) -> None:
        if function(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    return sync_range


#: ``sync_range(fd, offset, length)``, or ``None`` where the system has no such call.
sync_file_range: SyncRange | None = _load_sync_file_range()


class WriteBehind:
    """Write-back of one file that is being appended to, starting at ``offset``.

    :meth:`written` after each write (bytes still in Python's buffer are simply left to the
    final fsync); :meth:`close` before the descriptor is closed. Errors here are never
    reported: the final fsync reports any that matter.
    """

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._start = offset  # first byte not yet handed to the disk
        self._end = offset
        self._sync_range = sync_file_range
        self._syncing: threading.Thread | None = None

    def written(self, length: int) -> None:
        self._end += length
        pending = self._end - self._start
        if self._sync_range is not None:
            if pending >= WRITE_BEHIND_BYTES:
                try:
                    self._sync_range(self._fd, self._start, pending)
                except OSError as error:
                    logger.debug("write-behind: sync_file_range failed ({}); using fsync instead", error)
                    self._sync_range = None
                    return
                self._start = self._end
        elif pending >= FALLBACK_SYNC_BYTES and (self._syncing is None or not self._syncing.is_alive()):
            self._syncing = threading.Thread(target=self._fsync, name="rtcxfer-write-behind", daemon=True)
            self._syncing.start()
            self._start = self._end

    def _fsync(self) -> None:
        with suppress(OSError):  # the final fsync reports it
            os.fsync(self._fd)

    def close(self) -> None:
        """Wait for a background fsync still running (so the descriptor may be closed)."""
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None
