"""The sans-IO rules of choosing a worker (requirements, preference) and of job slots."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtcxfer.client.worker_choice import (
    RequirementError,
    WorkerInfo,
    describe_room,
    matching,
    parse_requirement,
    queue_position,
    rank,
)
from rtcxfer.worker.slots import JobSlots

BIG = WorkerInfo("big", {"state": "idle", "slots": 1, "running": 0, "gpus": [{"model": "A100", "memory_mb": 40960}],
                         "labels": {"site": "hpc"}, "transports": ["shared-fs", "direct"], "shared_root": "a" * 32})
SMALL = WorkerInfo("small", {"state": "idle", "slots": 2, "running": 0, "gpus": [{"model": "T4", "memory_mb": 16000}],
                             "transports": ["direct"], "shared_root": "b" * 32})
BUSY = WorkerInfo("busy", {"state": "busy", "slots": 1, "running": 1, "gpus": [{"model": "H100", "memory_mb": 81920}]})
HALF = WorkerInfo("half", {"state": "idle", "slots": 2, "running": 1})
DRAINING = WorkerInfo("draining", {"state": "draining", "slots": 4, "running": 0})
BARE = WorkerInfo("bare")
ROOM = [BIG, SMALL, BUSY, HALF, DRAINING, BARE]


@pytest.mark.parametrize(
    ("expressions", "expected"),
    [
        (["gpu_memory_mb>=16000"], ["big", "small", "busy"]),
        (["gpu_memory_mb>16000"], ["big", "busy"]),
        (["label.site=hpc"], ["big"]),
        (["label.site!=hpc"], ["small", "busy", "half", "draining", "bare"]),
        (["transport=shared-fs"], ["big"]),
        (["shared_root=yes"], ["big", "small"]),
        (["gpu_count=0"], ["half", "draining", "bare"]),
        (["free_slots>=1", "slots>=2"], ["small", "half"]),
        (["state=busy"], ["busy"]),
        (["id=bare"], ["bare"]),
        ([" gpu_model = T4 "], ["small"]),
    ],
)
def test_requirements_filter(expressions: list[str], expected: list[str]) -> None:
    requirements = [parse_requirement(text) for text in expressions]
    assert [w.peer_id for w in matching(ROOM, requirements)] == expected


@pytest.mark.parametrize("text", ["gpu_memory_mb", "gpu_memory_mb>=lots", "colour=red", "label.site>=3", "", "=1"])
def test_bad_requirements_say_why(text: str) -> None:
    with pytest.raises(RequirementError):
        parse_requirement(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_requirement_error(text: str) -> None:
    try:
        requirement = parse_requirement(text)
    except RequirementError:
        return
    for worker in ROOM:
        assert requirement.met_by(worker) in (True, False)


def test_rank_prefers_idle_then_fewest_running_then_gpu_memory_then_shared_root() -> None:
    order = [w.peer_id for w in rank(ROOM, own_fingerprint=None, rng=random.Random(1))]
    assert order[:2] == ["big", "small"]  # idle, nothing running; more GPU memory first
    assert order.index("half") > order.index("bare")  # one job running on it
    assert order[-1] == "busy" and "draining" not in order
    twins = [WorkerInfo(n, {"state": "idle", "slots": 1, "running": 0, "shared_root": f}) for n, f in
             (("far", "c" * 32), ("near", "d" * 32))]
    assert [w.peer_id for w in rank(twins, own_fingerprint="d" * 32)][0] == "near"


def test_equal_workers_are_tried_in_varying_order() -> None:
    twins = [WorkerInfo(f"w{n}", {"state": "idle", "slots": 1, "running": 0}) for n in range(3)]
    firsts = {rank(twins, rng=random.Random(seed))[0].peer_id for seed in range(30)}
    assert len(firsts) > 1


def test_room_description_and_queue_position() -> None:
    text = describe_room([BIG, BARE])
    assert "big (idle, 0/1 slots, A100 40960 MiB, site=hpc)" in text and "bare" in text
    assert describe_room([]) == "no workers at all"
    assert queue_position(clients_ahead=5, busy_slots=3) == 3
    assert queue_position(clients_ahead=0, busy_slots=3) == 1


def test_job_slots_refuse_when_full_or_draining_and_report_changes() -> None:
    changes: list[str] = []
    slots = JobSlots(2)
    slots.on_change = lambda: changes.append(slots.state)
    assert slots.take("s1") is None and slots.take("s1") is None
    assert slots.take("s2") is None and slots.state == "busy"
    assert slots.take("s3") == "all 2 job slots are taken"
    assert JobSlots(1).take("a") is None
    slots.release("s1")
    slots.drain()
    assert "draining" in slots.take("s4")
    slots.release("s2")
    assert changes == ["idle", "busy", "idle", "draining", "draining"] and slots.peak == 2
    with pytest.raises(ValueError):
        JobSlots(0)
