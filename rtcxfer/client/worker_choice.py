"""Which worker of a room runs a job: requirements, preference, and the queue (sans-IO).

``--require EXPR`` filters: ``KEY OP VALUE`` with OP one of ``>= <= > < = == !=``. Keys:

* numbers: ``gpu_memory_mb`` (the largest GPU's), ``gpu_count``, ``cpu_count``, ``memory_mb``,
  ``disk_free_mb``, ``slots``, ``free_slots``;
* text (``=``/``!=`` only): ``id``, ``state``, ``gpu_model``, ``transport`` (the worker offers
  it), ``shared_root`` (``yes``/``no``, or a fingerprint), ``label.NAME``.

Among the workers that meet every requirement (draining ones never), :func:`rank` prefers an
idle worker, then the fewest running jobs, then the most GPU memory, then one whose shared-root
fingerprint matches the client's (so ``shared-fs`` can move the files), then chance: clients
that start together spread instead of all knocking on the same door.
"""

from __future__ import annotations

import operator
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

NUMERIC_KEYS = ("gpu_memory_mb", "gpu_count", "cpu_count", "memory_mb", "disk_free_mb", "slots", "free_slots")
TEXT_KEYS = ("id", "state", "gpu_model", "transport", "shared_root")
_EXPR_RE = re.compile(r"\s*(label\.[A-Za-z0-9_.-]{1,64}|[a-z_]{1,32})\s*(>=|<=|==|!=|=|>|<)\s*(.*?)\s*")
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
}


class RequirementError(ValueError):
    """A ``--require`` expression that cannot be understood."""


@attrs.frozen
class WorkerInfo:
    """A worker of the room and what it said about itself (possibly nothing)."""

    peer_id: str
    description: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def state(self) -> str:
        state = self.description.get("state")
        return state if isinstance(state, str) else "unknown"

    @property
    def slots(self) -> int:
        return int(self.description.get("slots", 1))

    @property
    def running(self) -> int:
        return int(self.description.get("running", 0))

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.running) if self.state != "draining" else 0

    @property
    def gpus(self) -> list[Mapping[str, Any]]:
        return list(self.description.get("gpus", []))

    @property
    def gpu_memory_mb(self) -> int:
        return max((int(gpu.get("memory_mb", 0)) for gpu in self.gpus), default=0)

    @property
    def transports(self) -> list[str]:
        return list(self.description.get("transports", []))

    @property
    def labels(self) -> Mapping[str, str]:
        return dict(self.description.get("labels", {}))

    def value(self, key: str) -> Any:
        """The value ``key`` of a requirement names (None when the worker did not say)."""
        if key.startswith("label."):
            return self.labels.get(key[len("label."):])
        if key == "id":
            return self.peer_id
        if key == "state":
            return self.state
        if key == "gpu_count":
            return len(self.gpus)
        if key == "gpu_memory_mb":
            return self.gpu_memory_mb
        if key == "gpu_model":
            return self.gpus[0].get("model") if self.gpus else None
        if key == "free_slots":
            return self.free_slots
        if key == "slots":
            return self.slots
        return self.description.get(key)

    def summary(self) -> str:
        """One line for messages: id, state, slots, GPU, labels."""
        gpu = f"{self.gpus[0].get('model')} {self.gpu_memory_mb} MiB" if self.gpus else "no GPU"
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "no labels"
        return f"{self.peer_id} ({self.state}, {self.running}/{self.slots} slots, {gpu}, {labels})"


@attrs.frozen
class Requirement:
    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    def met_by(self, worker: WorkerInfo) -> bool:
        compare = _OPERATORS[self.op]
        if self.key == "transport":
            offered = self.value in worker.transports
            return offered if self.op != "!=" else not offered
        if self.key == "shared_root":
            fingerprint = worker.description.get("shared_root")
            if self.value in ("yes", "no"):
                has = fingerprint is not None
                return compare(has, self.value == "yes")
            return compare(fingerprint, self.value)
        have = worker.value(self.key)
        if self.key in NUMERIC_KEYS:
            if have is None:
                return False
            return compare(have, float(self.value))
        return compare(None if have is None else str(have), self.value)


def parse_requirement(text: str) -> Requirement:
    """``gpu_memory_mb>=16000`` -> Requirement; :class:`RequirementError` says what is wrong."""
    match = _EXPR_RE.fullmatch(text)
    if match is None:
        raise RequirementError(f"{text!r} is not KEY OP VALUE (e.g. gpu_memory_mb>=16000, label.site=hpc)")
    key, op, value = match.groups()
    if key in NUMERIC_KEYS:
        try:
            float(value)
        except ValueError:
            raise RequirementError(f"{key} compares with a number, not {value!r}") from None
    elif key in TEXT_KEYS or key.startswith("label."):
        if op not in ("=", "==", "!="):
            raise RequirementError(f"{key} is text: use = or != (not {op})")
    else:
        known = ", ".join(NUMERIC_KEYS + TEXT_KEYS + ("label.NAME",))
        raise RequirementError(f"unknown key {key!r} in {text!r}; known: {known}")
    return Requirement(key, op, value)


def matching(workers: Iterable[WorkerInfo], requirements: Iterable[Requirement]) -> list[WorkerInfo]:
    """The workers that meet every requirement, whatever their state."""
    needed = list(requirements)
    return [worker for worker in workers if all(r.met_by(worker) for r in needed)]


def rank(
    workers: Iterable[WorkerInfo], own_fingerprint: str | None = None, rng: random.Random | None = None
) -> list[WorkerInfo]:
    """Candidates best first (see the module docstring); draining workers are left out."""
    rng = rng or random.Random()

    def preference(worker: WorkerInfo) -> tuple:
        shares_root = own_fingerprint is not None and worker.description.get("shared_root") == own_fingerprint
        return (worker.free_slots == 0, worker.running, -worker.gpu_memory_mb, not shares_root, rng.random())

    return sorted((w for w in workers if w.state != "draining"), key=preference)


def describe_room(workers: Iterable[WorkerInfo]) -> str:
    """What the room has, for an error message."""
    lines = [worker.summary() for worker in workers]
    return "; ".join(lines) if lines else "no workers at all"


def queue_position(clients_ahead: int, busy_slots: int) -> int:
    """Roughly where a waiting client stands: the earlier clients not already being served."""
    return max(1, clients_ahead - busy_slots + 1)


def uptime(description: Mapping[str, Any], now: float | None = None) -> float | None:
    started = description.get("started_at")
    if not isinstance(started, (int, float)):
        return None
    return max(0.0, (time.time() if now is None else now) - started)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
