"""Worker descriptions: validation (fuzzed), the hardware probes, and how the signaling server
keeps and passes them on, over real WebSockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtcxfer.files.shared_storage import ROOT_MARKER, shared_root_fingerprint
from rtcxfer.net.signaling import PeerJoined, PeerUpdated, SignalingClient, SignalingServer
from rtcxfer.protocol.worker_description import (
    MAX_DESCRIPTION_BYTES,
    DescriptionError,
    parse_label,
    validate_description,
)
from rtcxfer.testing import run_async
from rtcxfer.worker.description import build_description, parse_nvidia_smi
from tests.support.signaling import LOOPBACK, STEP, assert_silent, async_test, raw, recv_json, registered, send_json

GOOD = {
    "state": "busy",
    "slots": 2,
    "running": 2,
    "gpus": [{"model": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960}],
    "cpu_count": 32,
    "memory_mb": 257000,
    "disk_free_mb": 1000,
    "shared_root": "0123456789abcdef0123456789abcdef",
    "transports": ["shared-fs", "direct", "rtc-chunked"],
    "labels": {"site": "hpc"},
    "started_at": 1796000000.5,
}

# Captured from `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`
# on a two-GPU machine, with a line of the kind a broken driver prints.
NVIDIA_SMI_SAMPLE = """NVIDIA A100-SXM4-40GB, 40960
NVIDIA GeForce RTX 3090, 24576
Tesla K80, [N/A]
"""


def test_a_complete_description_passes_unchanged() -> None:
    assert validate_description(GOOD) == GOOD


@pytest.mark.parametrize(
    "change",
    [
        {"state": "sleeping"},
        {"slots": 0},
        {"slots": True},
        {"running": 3},
        {"gpus": [{"model": "x", "memory_mb": -1}]},
        {"gpus": [{"model": "x\nFAKE LINE"}]},
        {"gpus": [{"memory_mb": 1}]},
        {"labels": {"bad key": "v"}},
        {"labels": {"k": ""}},
        {"transports": ["shared fs"]},
        {"shared_root": "/home/alice/storage"},
        {"started_at": float("inf")},
        {"owner": "mallory"},
        {"labels": {f"k{i}": "v" * 200 for i in range(30)}},
    ],
)
def test_bad_descriptions_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(DescriptionError):
        validate_description({**GOOD, **change})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "other"]), json_values, max_size=8))
def test_validation_accepts_or_raises_description_error_only(candidate: dict[str, Any]) -> None:
    try:
        checked = validate_description(candidate)
    except DescriptionError:
        return
    assert set(checked) <= set(GOOD)
    assert len(json.dumps(checked).encode()) <= MAX_DESCRIPTION_BYTES + 64


def test_nvidia_smi_output_is_parsed() -> None:
    assert parse_nvidia_smi(NVIDIA_SMI_SAMPLE) == [
        {"model": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960},
        {"model": "NVIDIA GeForce RTX 3090", "memory_mb": 24576},
        {"model": "Tesla K80"},
    ]
    assert parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the driver.") == []
    assert parse_nvidia_smi("") == []


def test_labels_parse() -> None:
    assert parse_label("site=hpc") == ("site", "hpc")
    assert parse_label("a=b=c") == ("a", "b=c")
    for bad in ("site", "=x", "si te=x", "k="):
        with pytest.raises(DescriptionError):
            parse_label(bad)


def test_shared_root_fingerprint_is_the_storage_not_the_path(tmp_path: Path) -> None:
    storage = tmp_path / "export"
    storage.mkdir()
    other_mount = tmp_path / "elsewhere"
    other_mount.symlink_to(storage)  # the same storage seen at another path
    first = shared_root_fingerprint(storage)
    assert first is not None and len(first) == 32
    assert shared_root_fingerprint(other_mount) == first
    assert str(storage) not in first and "export" not in first
    different = tmp_path / "other"
    different.mkdir()
    assert shared_root_fingerprint(different) not in (None, first)
    assert shared_root_fingerprint(None) is None
    assert (storage / ROOT_MARKER).is_file()


def test_built_descriptions_validate(tmp_path: Path) -> None:
    hardware = {"gpus": [], "cpu_count": os.cpu_count() or 1, "shared_root": None}
    built = build_description(
        hardware, work_dir=tmp_path, transports=["direct"], labels={"site": "lab"}, slots=2, running=2,
        draining=False, started_at=1.0,
    )
    assert built["state"] == "busy" and built["disk_free_mb"] >= 0
    drained = build_description(
        hardware, work_dir=tmp_path, transports=[], labels={}, slots=1, running=0, draining=True, started_at=1.0
    )
    assert drained["state"] == "draining"


# -- the server -------------------------------------------------------------------------------


@async_test()
async def test_descriptions_reach_the_room_and_updates_follow() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        async with SignalingClient(server.url, "lab", "worker", "gpu1", description=GOOD) as worker:
            async with SignalingClient(server.url, "lab", "client", "c1") as client:
                assert client.workers == {"gpu1": GOOD}
                idle = {**GOOD, "state": "idle", "running": 0}
                await worker.describe(idle)
                event = await client.receive(STEP)
                assert event == PeerUpdated("gpu1", "worker", idle)
                assert client.workers == {"gpu1": idle}
                async with SignalingClient(server.url, "lab", "worker", "gpu2") as bare:
                    joined = await client.receive(STEP)
                    assert joined == PeerJoined("gpu2", "worker")
                    assert client.workers == {"gpu1": idle, "gpu2": {}}
                    await bare.describe({"state": "idle", "slots": 1, "running": 0})
                    assert (await client.receive(STEP)).description["slots"] == 1


@async_test()
async def test_clients_cannot_describe_and_nobody_changes_another_peer() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "lab", "worker", "gpu1")
        sneaky = await raw(server)
        await send_json(sneaky, {"type": "register", "room": "lab", "role": "client", "peer_id": "c",
                                 "description": GOOD})
        reply = await recv_json(sneaky)
        assert (reply["type"], reply["code"]) == ("error", "forbidden")
        await send_json(sneaky, {"type": "register", "room": "lab", "role": "client", "peer_id": "c"})
        assert (await recv_json(sneaky))["type"] == "registered"
        assert (await recv_json(worker))["type"] == "peer-joined"
        await send_json(sneaky, {"type": "describe", "description": GOOD})
        assert (await recv_json(sneaky))["code"] == "forbidden"
        await send_json(sneaky, {"type": "describe", "peer_id": "gpu1", "description": GOOD})
        assert (await recv_json(sneaky))["code"] == "forbidden"
        other = await registered(server, "lab", "worker", "gpu2")
        assert (await recv_json(worker))["type"] == "peer-joined"
        assert (await recv_json(sneaky))["type"] == "peer-joined"
        await send_json(other, {"type": "describe", "peer_id": "gpu1", "description": GOOD})
        assert (await recv_json(other))["code"] == "forbidden"
        await assert_silent(worker)
        await assert_silent(sneaky)


@async_test()
async def test_oversize_or_malformed_descriptions_are_refused() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "lab", "worker", "gpu1")
        watcher = await registered(server, "lab", "client", "c")
        await recv_json(worker)  # c joined
        huge = {**GOOD, "labels": {f"k{i}": "v" * 250 for i in range(20)}}
        await send_json(worker, {"type": "describe", "description": huge})
        reply = await recv_json(worker)
        assert reply["code"] == "bad-message" and str(MAX_DESCRIPTION_BYTES) in reply["message"]
        await send_json(worker, {"type": "describe", "description": "idle"})
        assert (await recv_json(worker))["code"] == "bad-message"
        await assert_silent(watcher)
        late = await raw(server)
        await send_json(late, {"type": "register", "room": "lab", "role": "worker", "peer_id": "w3",
                               "description": {"state": "idle", "gpus": "many"}})
        assert (await recv_json(late))["code"] == "bad-message"


@async_test()
async def test_a_second_worker_with_a_taken_id_is_told_to_use_peer_id() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        await registered(server, "lab", "worker", "worker")
        second = await raw(server)
        await send_json(second, {"type": "register", "room": "lab", "role": "worker", "peer_id": "worker"})
        reply = await recv_json(second)
        assert reply["code"] == "duplicate-peer" and "--peer-id" in reply["message"]
        await asyncio.sleep(0)


def test_a_worker_refuses_bad_labels_at_once_and_leaves_out_odd_transport_names(tmp_path: Path) -> None:
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

    with pytest.raises(DescriptionError):
        RTCWorkerClient(token="t", work_dir=tmp_path, labels={"bad key": "x"})
    built = build_description(
        {}, work_dir=tmp_path, transports=["direct", "my transport"], labels={}, slots=1, running=0,
        draining=False, started_at=1.0,
    )
    assert built["transports"] == ["direct"]


# Slow: every example takes WebSockets to a real server (the validator's own fuzzing stays quick).
@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "other"]), json_values, max_size=8))
def test_the_server_passes_on_exactly_the_valid_descriptions(candidate: dict[str, Any]) -> None:
    try:
        expected: dict[str, Any] | None = validate_description(candidate)
    except DescriptionError:
        expected = None

    async def scenario() -> None:
        async with SignalingServer(LOOPBACK, 0) as server:
            worker = await registered(server, "lab", "worker", "gpu1")
            watcher = await registered(server, "lab", "client", "c")
            await recv_json(worker)  # c joined
            await send_json(worker, {"type": "describe", "description": candidate})
            if expected is None:
                assert (await recv_json(worker))["code"] == "bad-message"
                await assert_silent(watcher, 0.05)
            else:
                update = await recv_json(watcher)
                assert update == {"type": "peer-updated", "peer_id": "gpu1", "role": "worker",
                                  "description": json.loads(json.dumps(expected))}

    run_async(scenario(), 10)


# Finding 10 of the second hardening round: format characters in what a worker says of itself.
HIDING_CHARACTERS = ["\u202e", "\u200b", "\u2066", "\u2028", "\x1b", "\u061c"]


@pytest.mark.parametrize("hiding", HIDING_CHARACTERS, ids=lambda char: f"U+{ord(char):04X}")
def test_format_and_control_characters_are_refused_in_every_text_field(hiding: str) -> None:
    for change in (
        {"labels": {"site": f"hpc{hiding}evil"}},
        {"gpus": [{"model": f"A100{hiding}", "memory_mb": 1}]},
    ):
        with pytest.raises(DescriptionError, match="format"):
            validate_description({**GOOD, **change})
    with pytest.raises(DescriptionError):
        parse_label(f"note=a{hiding}b")
    parsed = parse_nvidia_smi(f"NVIDIA{hiding} A100, 40960\nNVIDIA H100, 81559\n")
    assert {"model": "NVIDIA H100", "memory_mb": 81559} in parsed
    assert not any(hiding in gpu["model"] for gpu in parsed)


@async_test()
async def test_the_server_refuses_a_description_with_a_bidi_override() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await raw(server)
        await send_json(worker, {"type": "register", "room": "lab", "role": "worker", "peer_id": "w",
                                 "description": {**GOOD, "labels": {"site": "\u202ecph"}}})
        assert (await recv_json(worker))["code"] == "bad-message"


def test_the_workers_table_escapes_whatever_a_description_holds() -> None:
    from rtcxfer.cli.workers import worker_rows
    from rtcxfer.client.worker_choice import WorkerInfo

    # A description as an older or hostile server might pass it on, unchecked.
    hostile = {**GOOD, "labels": {"site": "\u202eevil\u200b"}, "gpus": [{"model": "A\x1b[31mred", "memory_mb": 1}]}
    (row,) = worker_rows([WorkerInfo("w\u2066", hostile)], now=1796000001.0)
    shown = "".join(row)
    assert all(char.isprintable() for char in shown), ascii(shown)
    assert "\\u202eevil\\u200b" in shown and "\\x1b[31mred" in shown
