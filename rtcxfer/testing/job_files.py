"""The files of a test's jobs: packages that run a program, what the sample job must write
(computed independently of ``rtcxfer.client.sample``), and where ``rtcxfer submit`` put them."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

from rtcxfer.client.sample import build_sample_package
from rtcxfer.testing.processes import describe

__all__ = ["expected_sample_results", "files_under", "job_package", "results_dir_of", "sample_summary"]


def job_package(path: Path, program: str, **manifest: Any) -> Path:
    """A job package at ``path`` whose job runs ``program`` (as ``python job.py``), named after the
    file; ``manifest`` adds to or overrides ``rtcxfer.json`` (``timeout_seconds=2``)."""
    return build_sample_package(
        path, program=program, manifest={"name": path.stem, "command": ["python", "job.py"], **manifest}
    )


def sample_summary(data: bytes) -> str:
    """The ``summary.txt`` the sample job writes for ``data.txt`` holding ``data``."""
    lines = data.splitlines()
    words = sum(len(line.split()) for line in lines)
    return f"lines={len(lines)} words={words} sha256={hashlib.sha256(data).hexdigest()}\n"


def expected_sample_results(data: bytes) -> dict[str, bytes]:
    """Every file the sample job writes for ``data.txt`` holding ``data``, by relative name."""
    return {"summary.txt": sample_summary(data).encode(), "copy/data.txt": data}


def files_under(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory``, by its relative POSIX name."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def results_dir_of(run: subprocess.CompletedProcess[str], cwd: Path | None = None) -> Path:
    """Where ``rtcxfer submit`` said it put the job's results (its ``results: PATH`` line), a
    relative path taken from ``cwd``."""
    match = re.search(r"^results: (.+)$", run.stdout, re.MULTILINE)
    assert match, describe(run)
    path = Path(match.group(1))
    return cwd / path if cwd is not None and not path.is_absolute() else path
