"""A job's results on disk: the regular files a job wrote, and copying them onto and off the
shared storage without following a link or leaving half a copy behind.

The worker lists what a job wrote with :func:`result_files` (links and devices are never sent);
the ``shared-fs`` transport publishes them under the client's output directory on the shared
storage with :func:`publish_beneath`, and the client copies them out of its own mount of that
storage with :func:`copy_out_of`. The paths on both sides come from a peer: every one is opened
relative to a directory descriptor with no symlink followed (:mod:`rtcxfer.files.paths`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from rtcxfer.files import paths
from rtcxfer.log import logger
from rtcxfer.protocol import texts
from rtcxfer.protocol.errors import StorageFullError

#: Bytes copied at a time.
COPY_BLOCK = 1 << 20


def result_files(output_dir: Path) -> list[tuple[str, int]]:
    """Regular files under ``output_dir`` as (relative POSIX name, size), in a stable order;
    links and other non-regular files are skipped (and logged). Blocking."""
    found = []
    for directory, subdirs, names in os.walk(output_dir, followlinks=False):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                logger.warning("result {} is not a regular file; not sent", path)
                continue
            found.append((path.relative_to(output_dir).as_posix(), info.st_size))
    return found


def publish_beneath(
    root: Path, output_dir: Path, files: Sequence[tuple[str, int]], relative_output: str, label: str
) -> None:
    """Copy ``files`` (as :func:`result_files` lists them) of ``output_dir`` under
    ``relative_output`` of ``root``, fsync'ed; on a full disk remove what was written and raise
    :class:`StorageFullError` with the specification's text. Blocking.

    Every directory is held open by descriptor (reached with no symlink followed) and every
    file is created fresh in it (:func:`paths.create_fresh_at`), so neither a directory swapped
    for a symlink nor a hard link planted in the output directory makes the worker write, or
    remove, anything outside ``root``: cleanup unlinks names in the very directories the files
    were made in. ``label`` names the session in the log."""
    directories: dict[str, int] = {}
    created: list[tuple[int, str]] = []
    started = time.perf_counter()
    try:
        for name, _ in files:
            parent, _, base = f"{relative_output}/{name}".rpartition("/")
            if parent not in directories:
                directories[parent] = paths.open_directory_beneath(root, parent, create=True)
            with paths.open_beneath(output_dir, name) as source, paths.create_fresh_at(
                directories[parent], base
            ) as sink:
                created.append((directories[parent], base))
                shutil.copyfileobj(source, sink, COPY_BLOCK)
                sink.flush()
                os.fsync(sink.fileno())
        for fd in directories.values():
            paths.fsync_directory_at(fd)
    except (OSError, StorageFullError) as error:
        for fd, base in created:
            with contextlib.suppress(OSError):
                os.unlink(base, dir_fd=fd)
        if isinstance(error, StorageFullError) or error.errno in (errno.ENOSPC, errno.EDQUOT):
            logger.error("{}: shared storage full; removed {} partial result files", label, len(created))
            raise StorageFullError(texts.DISK_FULL) from None
        raise
    finally:
        for fd in directories.values():
            os.close(fd)
    logger.info(
        "{}: wrote {} result files to shared {} in {:.3f} s", label, len(files), relative_output,
        time.perf_counter() - started,
    )


def copy_out_of(root: Path, relative: str, destination: Path) -> None:
    """Copy the results a peer published at ``relative`` under our ``root`` into
    ``destination``. The path came from the peer, so it is validated like any other, and links
    inside it are not followed. Blocking."""
    source = paths.resolve_peer_path(relative, root)
    for directory, subdirs, names in os.walk(source, followlinks=False):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if not stat.S_ISREG(path.lstat().st_mode):
                logger.warning("shared result {} is not a regular file; skipped", path)
                continue
            inside = path.relative_to(source).as_posix()
            target = destination / inside
            target.parent.mkdir(parents=True, exist_ok=True)
            with paths.open_beneath(root, f"{relative}/{inside}") as handle, open(target, "xb") as out:
                shutil.copyfileobj(handle, out, COPY_BLOCK)
