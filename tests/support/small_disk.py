"""Mounts for tests: a small filesystem where a full disk is the point (a size-limited tmpfs),
and one directory under two names without a link (a bind mount). Root only; the test is
skipped, saying why, where one cannot be mounted."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, *, inodes: int | None = None, busy_ok: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"512k"``), and of ``inodes`` inodes where given, mounted at ``path``
    (made if missing). Unmounted afterwards: lazily where ``busy_ok`` (a worker the test started
    may still hold a file there), otherwise strictly, so that a file left open fails the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    # 0700, as a worker's own directory must be (a tmpfs is 1777 by default).
    options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes is not None else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if busy_ok:
            subprocess.run(["umount", "-l", str(path)], check=False)
        else:
            subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` mounted again at ``target`` (an existing directory): the same directory under
    two names, without a link between them. Unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount")
    mounted = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
