"""What this worker tells its room about itself: it looks at the machine (GPUs from
``nvidia-smi``, CPUs, memory, free space) and builds a description that the schema of
:mod:`rtcxfer.protocol.worker_description` accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtcxfer.files.shared_storage import shared_root_fingerprint
from rtcxfer.protocol.characters import first_unshowable
from rtcxfer.protocol.worker_description import (
    MAX_GPUS,
    MAX_MB,
    MAX_TEXT,
    MAX_TRANSPORTS,
    TRANSPORT_RE,
    state_of,
    validate_description,
)

NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")


def parse_nvidia_smi(output: str) -> list[dict[str, Any]]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``.

    Lines that do not parse (an error text, ``[N/A]`` memory) give what they can or nothing.
    """
    gpus: list[dict[str, Any]] = []
    for line in output.splitlines():
        name, _, memory = line.strip().rpartition(",")
        name, memory = name.strip(), memory.strip()
        if not name or first_unshowable(name) is not None or len(gpus) >= MAX_GPUS:
            continue
        gpu: dict[str, Any] = {"model": name[:MAX_TEXT]}
        if memory.isdigit() and int(memory) <= MAX_MB:
            gpu["memory_mb"] = int(memory)
        gpus.append(gpu)
    return gpus


def query_gpus(timeout: float = 10.0) -> list[dict[str, Any]]:
    """This machine's GPUs as ``nvidia-smi`` reports them; none without it."""
    if shutil.which(NVIDIA_SMI_QUERY[0]) is None:
        return []
    try:
        done = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else []


def memory_mb() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return None


def disk_free_mb(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free // (1024 * 1024)
    except OSError:
        return None


def gather_hardware(work_dir: Path, shared_root: Path | None) -> dict[str, Any]:
    """The parts of a description that do not change while the worker runs (disk aside)."""
    found: dict[str, Any] = {"gpus": query_gpus(), "cpu_count": os.cpu_count() or 1}
    memory = memory_mb()
    if memory is not None:
        found["memory_mb"] = min(memory, MAX_MB)
    found["shared_root"] = shared_root_fingerprint(shared_root)
    return found


def build_description(
    hardware: Mapping[str, Any],
    *,
    work_dir: Path,
    transports: list[str],
    labels: Mapping[str, str],
    slots: int,
    running: int,
    draining: bool,
    started_at: float,
) -> dict[str, Any]:
    """A complete description, validated (a worker must not send what the server refuses)."""
    description: dict[str, Any] = {
        "state": state_of(running, slots, draining),
        "slots": slots,
        "running": min(running, slots),
        **hardware,
        # A third party's plugin may be named outside the alphabet: it is left out, not fatal.
        "transports": [name for name in transports if TRANSPORT_RE.fullmatch(name)][:MAX_TRANSPORTS],
        "labels": dict(labels),
        "started_at": round(started_at, 3),
    }
    free = disk_free_mb(work_dir)
    if free is not None:
        description["disk_free_mb"] = min(free, MAX_MB)
    return validate_description(description)
