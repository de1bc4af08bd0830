"""A full worker refuses a session with WORKER_BUSY; the client says so, waits in the queue,
and gets the slot once it is free: real aiortc peers and a real signaling server on 127.0.0.1,
in one process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.client.sample import build_sample_package
from rtcxfer.net.signaling import SignalingServer
from rtcxfer.testing import run_async
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support.worker_harness import start_serving, stop_serving

TOKEN = "busy-test-token"


def test_a_full_worker_refuses_and_the_client_queues_until_the_slot_is_free(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SignalingServer("127.0.0.1", 0) as server:
            worker = RTCWorkerClient(token=TOKEN, work_dir=tmp_path / "work", slots=1, shared_storage_root=None)
            serving = await start_serving(worker, server.url, "r", peer_id="solo")
            first = RTCClient(token=TOKEN, results_dir=tmp_path / "first", detect_shared_storage=False)
            notices: list[str] = []
            second = RTCClient(
                token=TOKEN, results_dir=tmp_path / "second", detect_shared_storage=False,
                on_event=lambda event: notices.append(event.data.get("message", "")),
            )
            try:
                await first.connect(server.url, "r", timeout=30)
                assert first.worker_id == "solo" and worker.job_slots.running == 1
                waiting = asyncio.create_task(second.connect(server.url, "r", timeout=30, worker_id="solo"))
                for _ in range(600):
                    if any("waiting in the queue" in text for text in notices):
                        break
                    await asyncio.sleep(0.05)
                assert "worker solo is busy: its job slot is taken; trying the next worker" in notices
                assert any("every matching worker is busy (solo); waiting in the queue" in t for t in notices)
                assert not waiting.done() and worker.job_slots.peak == 1
                await first.close()  # the slot frees, the room hears of it, the queued client gets it
                await asyncio.wait_for(waiting, 30)
                assert second.worker_id == "solo"
                result = await second.submit(build_sample_package(tmp_path / "p.zip"))
                assert result.ok and result.worker_id == "solo" and result.bytes_received > 0
            finally:
                await first.close()
                await second.close()
                await stop_serving(serving)
                worker.close()

    run_async(scenario(), 120)
