"""Partial uploads kept across sessions, so a re-run of the same ``submit`` continues.

A job's input is received under its session's private directory, which goes when the session
ends (nothing a client sent outlives it there). A partial input left by an interrupted upload
(Ctrl-C, a dropped connection) is moved instead into the worker's *kept partials* directory,
``<work dir>/partial-uploads``, named as before: ``.<name>.<transfer id>.part``. The transfer id
is derived from the file's name, size and SHA-256 (or, for ``direct``, its inode and mtime:
``submit DIR`` sends the very same file again from :mod:`rtcxfer.client.pack_cache`), so the next
upload of the same package, in any session, adopts it and the sender continues from its end;
the whole file is still checked against the SHA-256 it announces.

The worker checks the directory at start-up and keeps it open (:mod:`rtcxfer.files.private_dirs`):
the functions here are given the path through that descriptor, so a link or another user's
directory put in its place is never pruned or written into.

The directory is bounded: a kept partial older than :data:`MAX_AGE_SECONDS` goes, and beyond
:data:`MAX_BYTES` in all the oldest go first. It lies inside the worker's work directory, so a
worker that made a temporary work directory removes it with everything else at stop.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

from rtcxfer.files.receiving import PART_NAME, is_being_received, is_receiving_into, is_restoring_into
from rtcxfer.log import logger

DIRECTORY_NAME = "partial-uploads"
#: A kept partial older than this is removed (seconds).
MAX_AGE_SECONDS = 24 * 3600
#: Kept partials in all, at most (bytes), and at most :data:`MAX_SHARE` of their filesystem;
#: the oldest go first.
MAX_BYTES = 16 * 1024**3
MAX_SHARE = 0.1


def receiving_into(directory: Path) -> bool:
    """Whether a transfer of this process is still writing a partial at the top of ``directory``."""
    return is_receiving_into(directory)


def restoring_into(directory: Path) -> bool:
    """Whether a transfer of this process that stopped is still writing the bytes its unpacker
    held back into a partial at the top of ``directory`` (so that it can be kept)."""
    return is_restoring_into(directory)


def keep_partials(directory: Path, kept: Path) -> int:
    """Move the partial files at the top of ``directory`` (a job's input directory) that no
    transfer is writing into ``kept``; returns how many. Blocking: run in a thread."""
    moved = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not PART_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        if entry.stat(follow_symlinks=False).st_size == 0:
            continue  # nothing to resume from; goes with the session's directory
        if is_being_received(directory, entry.name):
            continue
        try:
            kept.mkdir(mode=0o700, exist_ok=True)
            os.replace(entry.path, kept / entry.name)
            # Its age counts from the interruption, not from the upload's start.
            os.utime(kept / entry.name)
            moved += 1
        except OSError as error:
            logger.warning("could not keep partial upload {} for a resume: {}", entry.name, error)
    if moved:
        logger.info("kept {} partial upload(s) for a resume in {}", moved, kept)
    return moved


def prune(
    kept: Path, *, max_age: float = MAX_AGE_SECONDS, max_bytes: int | None = None, now: float | None = None
) -> int:
    """Remove kept partials older than ``max_age`` and, oldest first, beyond ``max_bytes``
    (default: :data:`MAX_BYTES`, or :data:`MAX_SHARE` of the filesystem if less); returns how
    many went. Blocking."""
    now = time.time() if now is None else now
    if max_bytes is None:
        max_bytes = MAX_BYTES
        with contextlib.suppress(OSError):
            info = os.statvfs(kept)
            max_bytes = min(max_bytes, int(info.f_blocks * info.f_frsize * MAX_SHARE))
    try:
        entries = [entry for entry in os.scandir(kept) if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    aged = sorted(((entry.stat(follow_symlinks=False), entry) for entry in entries), key=lambda pair: -pair[0].st_mtime)
    removed, total = 0, 0
    for info, entry in aged:  # newest first: the newest are kept while they fit
        total += info.st_size
        if now - info.st_mtime > max_age or total > max_bytes or not stat.S_ISREG(info.st_mode):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError as error:
                logger.warning("could not remove kept partial upload {}: {}", entry.name, error)
    return removed
