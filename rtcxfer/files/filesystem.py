"""FilesystemAdapter: a thin wrapper over an fsspec filesystem, for absolute local paths.

The worker specification names it (``fs_adapter.exists()``). It is deliberately thin: paths
reach it only after :mod:`rtcxfer.files.paths` validated them, and peer text is never handed to
fsspec (``fsspec.open`` would interpret ``::`` chains and protocols).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem


class FilesystemAdapter:
    """File operations on the storage under ``root`` (local by default)."""

    def __init__(self, root: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> None:
        self.root = Path(root)
        self.fs = fs or LocalFileSystem()

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return bool(self.fs.exists(os.fspath(path)))

    def info(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return self.fs.info(os.fspath(path))

    def size(self, path: str | os.PathLike[str]) -> int:
        return int(self.info(path)["size"])

    def isdir(self, path: str | os.PathLike[str]) -> bool:
        return bool(self.fs.isdir(os.fspath(path)))

    def makedirs(self, path: str | os.PathLike[str]) -> None:
        self.fs.makedirs(os.fspath(path), exist_ok=True)

    def rm(self, path: str | os.PathLike[str], recursive: bool = False) -> None:
        self.fs.rm(os.fspath(path), recursive=recursive)

    def ls(self, path: str | os.PathLike[str]) -> list[str]:
        return sorted(self.fs.ls(os.fspath(path), detail=False))

    def open(self, path: str | os.PathLike[str], mode: str = "rb") -> BinaryIO:
        return self.fs.open(os.fspath(path), mode)

    def __repr__(self) -> str:
        return f"FilesystemAdapter({str(self.root)!r}, {type(self.fs).__name__})"
