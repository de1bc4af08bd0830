"""What a worker says about itself in its room: hardware, storage, transports, labels, state.

A worker sends its description to the signaling server when it registers and again whenever
its state changes; the server checks it with :func:`validate_description` (it is peer input
like any other) and passes it on to the room. A description is a small JSON object::

    {"state": "idle"|"busy"|"draining", "slots": 2, "running": 1,
     "gpus": [{"model": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960}],
     "cpu_count": 32, "memory_mb": 257000, "disk_free_mb": 900000,
     "shared_root": "3f0c...(32 hex)" | null, "transports": ["shared-fs", "direct"],
     "labels": {"site": "hpc"}, "started_at": 1796000000.0}

Every field is optional for the reader; :func:`validate_description` refuses unknown fields,
wrong types, out-of-range numbers and anything over :data:`MAX_DESCRIPTION_BYTES` encoded.

The validation half is sans-IO; :func:`gather_hardware`, :func:`query_gpus` and
:func:`shared_root_fingerprint` look at this machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Encoded (compact JSON, UTF-8) size a description may have.
MAX_DESCRIPTION_BYTES = 4096
STATES = ("idle", "busy", "draining")
MAX_SLOTS = 1024
MAX_GPUS = 16
MAX_LABELS = 32
MAX_TRANSPORTS = 32
MAX_TEXT = 128
MAX_LABEL_VALUE = 256
#: Sizes in MiB up to an exbibyte: larger is nonsense, not hardware.
MAX_MB = 1 << 40
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TRANSPORT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FINGERPRINT_RE = re.compile(r"[0-9a-f]{32}")
#: The file under a shared root whose content identifies that storage wherever it is mounted.
ROOT_MARKER = ".rtcxfer/storage-id"
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class DescriptionError(ValueError):
    """A worker description that breaks the rules above (the message says which)."""


def _integer(value: object, name: str, upper: int) -> int:
    # bool is an int subclass: True is not a CPU count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise DescriptionError(f"{name} must be an integer from 0 to {upper}")
    return value


def _text(value: object, name: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or _CONTROL_RE.search(value):
        raise DescriptionError(f"{name} must be 1 to {limit} printable characters")
    return value


def _gpus(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_GPUS:
        raise DescriptionError(f"gpus must be a list of at most {MAX_GPUS}")
    checked = []
    for gpu in value:
        if not isinstance(gpu, dict) or set(gpu) - {"model", "memory_mb"} or "model" not in gpu:
            raise DescriptionError("each gpu is {'model': text, 'memory_mb': integer}")
        entry: dict[str, Any] = {"model": _text(gpu["model"], "gpu model")}
        if "memory_mb" in gpu:
            entry["memory_mb"] = _integer(gpu["memory_mb"], "gpu memory_mb", MAX_MB)
        checked.append(entry)
    return checked


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_LABELS:
        raise DescriptionError(f"labels must be an object of at most {MAX_LABELS} entries")
    for key, item in value.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise DescriptionError("a label key must match [A-Za-z0-9_.-]{1,64}")
        _text(item, f"label {key}", MAX_LABEL_VALUE)
    return dict(value)


def _transports(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_TRANSPORTS:
        raise DescriptionError(f"transports must be a list of at most {MAX_TRANSPORTS} names")
    for name in value:
        if not isinstance(name, str) or not TRANSPORT_RE.fullmatch(name):
            raise DescriptionError("a transport name must match [A-Za-z0-9_.-]{1,64}")
    return list(value)


def _started_at(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DescriptionError("started_at must be a non-negative number (seconds since the epoch)")
    return float(value)


def _fingerprint(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not FINGERPRINT_RE.fullmatch(value):
        raise DescriptionError("shared_root must be null or 32 lowercase hex digits")
    return value


_FIELDS = {
    "state": lambda v: v if v in STATES else _raise(f"state must be one of {', '.join(STATES)}"),
    "slots": lambda v: _integer(v, "slots", MAX_SLOTS) or _raise("slots must be at least 1"),
    "running": lambda v: _integer(v, "running", MAX_SLOTS),
    "gpus": _gpus,
    "cpu_count": lambda v: _integer(v, "cpu_count", 1 << 20),
    "memory_mb": lambda v: _integer(v, "memory_mb", MAX_MB),
    "disk_free_mb": lambda v: _integer(v, "disk_free_mb", MAX_MB),
    "shared_root": _fingerprint,
    "transports": _transports,
    "labels": _labels,
    "started_at": _started_at,
}


def _raise(message: str) -> Any:
    raise DescriptionError(message)


def validate_description(value: object) -> dict[str, Any]:
    """``value`` checked field by field; :class:`DescriptionError` says what is wrong."""
    if not isinstance(value, dict):
        raise DescriptionError("a description must be a JSON object")
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        raise DescriptionError("a description must be plain JSON") from None
    if len(encoded.encode("utf-8")) > MAX_DESCRIPTION_BYTES:
        raise DescriptionError(f"a description may be at most {MAX_DESCRIPTION_BYTES} bytes")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise DescriptionError(f"unknown description field {unknown[0][:64]!r}")
    checked = {name: _FIELDS[name](item) for name, item in value.items()}
    if "running" in checked and "slots" in checked and checked["running"] > checked["slots"]:
        raise DescriptionError("running cannot exceed slots")
    return checked


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--label``; :class:`DescriptionError` when it is not one."""
    key, sep, value = text.partition("=")
    if not sep:
        raise DescriptionError(f"a label is KEY=VALUE, not {text!r}")
    if not LABEL_KEY_RE.fullmatch(key):
        raise DescriptionError(f"label key {key!r} must match [A-Za-z0-9_.-]{{1,64}}")
    _text(value, f"label {key}", MAX_LABEL_VALUE)
    return key, value


def state_of(running: int, slots: int, draining: bool) -> str:
    if draining:
        return "draining"
    return "busy" if running >= slots else "idle"


# --- looking at this machine ----------------------------------------------------------------

NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")


def parse_nvidia_smi(output: str) -> list[dict[str, Any]]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``.

    Lines that do not parse (an error text, ``[N/A]`` memory) give what they can or nothing.
    """
    gpus: list[dict[str, Any]] = []
    for line in output.splitlines():
        name, _, memory = line.strip().rpartition(",")
        name, memory = name.strip(), memory.strip()
        if not name or _CONTROL_RE.search(name) or len(gpus) >= MAX_GPUS:
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


def shared_root_fingerprint(root: Path | None) -> str | None:
    """A stable id of the storage mounted at ``root``, the same on every machine that mounts it.

    It hashes the content of a marker file (:data:`ROOT_MARKER`, random, made by the first
    rtcxfer to look), not the path: two machines mounting the same export at different places
    match, two different storages that happen to share a mount point do not, and the absolute
    path is never revealed. None when there is no root, or no marker and no way to write one.
    """
    if root is None:
        return None
    marker = Path(root) / ROOT_MARKER
    try:
        content = _read_marker(marker)
        if content is None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                fd = None  # another machine or process made it first: theirs counts
            if fd is not None:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(16))
            content = _read_marker(marker)
    except OSError:
        return None
    if not content:
        return None
    return hashlib.sha256(b"rtcxfer-shared-root\0" + content).hexdigest()[:32]


def _read_marker(marker: Path) -> bytes | None:
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(256).strip()


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
