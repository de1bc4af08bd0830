"""What the author of a third-party client gets wrong first gets a clear answer, not silence
(docs/protocol.md), and job paths are absolute whatever the worker was given."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.net import peer as rtc
from rtcxfer.net.signaling import Relay, SignalingClient, SignalingServer
from rtcxfer.protocol.errors import RemoteProtocolError
from rtcxfer.testing import run_async
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support.worker_harness import TOKEN, attached_client, start_serving, stop_serving

LOOPBACK = "127.0.0.1"


async def _relays_from(client: SignalingClient, sender: str, seconds: float) -> list[dict]:
    """Every payload relayed by ``sender`` within ``seconds``."""
    payloads = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            event = await client.receive(timeout=left)
        except asyncio.TimeoutError:
            break
        if isinstance(event, Relay) and event.sender == sender:
            payloads.append(event.payload)
    return payloads


# Slow: it counts the worker's rate-limited replies over a window of seconds.
@pytest.mark.slow
def test_a_browser_style_offer_is_answered_with_what_the_worker_expects(tmp_path) -> None:
    async def scenario() -> tuple[list[dict], list[dict], bool]:
        async with SignalingServer(LOOPBACK, 0) as server:
            worker = RTCWorkerClient(token=TOKEN, work_dir=tmp_path / "work")
            serving = await start_serving(worker, server.url, "lab")
            async with SignalingClient(server.url, "lab", "client", "stranger") as stranger:
                # RTCSessionDescription.toJSON() in a browser: "type", not "kind".
                await stranger.send_to("worker", {"type": "offer", "sdp": "v=0\r\n"})
                first = await _relays_from(stranger, "worker", 2.0)
                # A flood of them costs the worker a bounded number of replies, and nothing else.
                for _ in range(40):
                    await stranger.send_to("worker", {"type": "offer", "sdp": "v=0\r\n"})
                flood = await _relays_from(stranger, "worker", 1.5)
            still_serving = not serving.done()
            await stop_serving(serving)
            return first, flood, still_serving

    first, flood, still_serving = run_async(scenario())
    assert len(first) == 1 and first[0]["kind"] == "error"
    assert '"kind": "offer"' in first[0]["message"] and "type" in first[0]["message"]
    assert len(flood) <= 6  # the worker's replies are rate-limited (burst 5, then 1/s)
    assert still_serving


# Slow: it watches the relays for a fixed 5 s window.
@pytest.mark.slow
def test_the_client_shows_the_error_a_peer_relays_instead_of_an_answer(tmp_path) -> None:
    async def scenario() -> str:
        async with SignalingServer(LOOPBACK, 0) as server:
            async with SignalingClient(server.url, "lab", "worker", "fake-worker") as fake_worker, SignalingClient(
                server.url, "lab", "client", "client"
            ) as client:
                send, receive = rtc.signaling_adapter(client, "fake-worker")
                connecting = asyncio.create_task(rtc.connect_via(send, receive, "offerer", None, 20))
                offer = await _relays_from(fake_worker, "client", 5.0)
                assert offer and offer[0]["kind"] == "offer"
                await fake_worker.send_to("client", {"kind": "error", "message": "no such job\x1b[31m here"})
                try:
                    await connecting
                except RemoteProtocolError as error:
                    return str(error)
                raise AssertionError("the handshake went on after an error payload")

    reason = run_async(scenario())
    assert "no such job" in reason and "\x1b" not in reason


def test_a_relative_work_dir_gives_jobs_absolute_paths(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    worker = RTCWorkerClient(token=TOKEN, work_dir="work")
    assert worker.work_dir.is_absolute() and worker.work_dir == tmp_path / "work"
    data = sample_text(50) + f"relative work dir {secrets.token_hex(4)}\n".encode()
    package = build_sample_package(tmp_path / "package.zip", data=data)

    async def scenario():
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        async with attached_client(worker, client):
            return await client.submit(package, transport="rtc-chunked")

    result = run_async(scenario())
    # The sample job writes to $RTCXFER_OUTPUT_DIR from inside its package folder: a relative
    # path there would name a directory that does not exist.
    assert result.ok, result.failure
    assert (result.results_dir / "copy" / "data.txt").read_bytes() == data
