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

This module is the sans-IO schema, shared by the worker that writes a description, the
signaling server that checks it and the client that reads it; the worker looks at its machine
in :mod:`rtcxfer.worker.description`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from rtcxfer.protocol.characters import first_unshowable

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


class DescriptionError(ValueError):
    """A worker description that breaks the rules above (the message says which)."""


def _integer(value: object, name: str, upper: int) -> int:
    # bool is an int subclass: True is not a CPU count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise DescriptionError(f"{name} must be an integer from 0 to {upper}")
    return value


def _text(value: object, name: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or first_unshowable(value) is not None:
        raise DescriptionError(
            f"{name} must be 1 to {limit} printable characters (no control, format or separator characters)"
        )
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
    try:
        # An integer too large for a float raises OverflowError, in isfinite() as in float().
        seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise DescriptionError("started_at must be a non-negative number (seconds since the epoch)")
    return seconds


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
