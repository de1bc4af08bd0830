"""One address cannot take the signaling server's sockets or a room's places: the per-address
limits of a real server on 127.0.0.1, attacked from a second loopback address."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from rtcxfer.net.signaling import SignalingClient, SignalingServer, SignalingServerError
from rtcxfer.protocol.auth import signaling_token
from rtcxfer.testing import run_async
from rtcxfer.testing.processes import start_signaling
from tests.support.cli import environment
from tests.support.worker_harness import (
    hold_sockets,
    raw_websocket,
    )

LOOPBACK = "127.0.0.1"
#: A second loopback address: "another host" for the per-address limits, still only lo.
OTHER_HOST = "127.0.0.2"

LINUX_LOOPBACK_NET = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="binds 127.0.0.2, which only Linux routes to lo by default"
)


@LINUX_LOOPBACK_NET
def test_one_address_cannot_hold_the_servers_unregistered_sockets():
    async def scenario():
        async with SignalingServer(LOOPBACK, 0, max_connections=20, max_unregistered_per_address=4) as server:
            refused, held = await hold_sockets(server.url, OTHER_HOST, 12)
            async with SignalingClient(server.url, "r", "worker", "w") as legit:
                registered = legit.connected
            for ws in held:
                await ws.close()
            return refused, registered

    refused, registered = run_async(scenario())
    assert refused == 8 and registered


# Slow: it waits out the server's idle timeout.
@pytest.mark.slow
@LINUX_LOOPBACK_NET
def test_squatters_are_capped_per_address_and_timed_out_when_idle():
    async def scenario():
        async with SignalingServer(
            LOOPBACK, 0, max_peers_per_room=16, max_peers_per_address_in_room=4, idle_timeout=1.0
        ) as server:
            squatters = []
            refused = 0
            for n in range(15):
                ws = await raw_websocket(server.url, OTHER_HOST)
                await ws.send(f'{{"type":"register","room":"r","role":"client","peer_id":"s{n}"}}')
                reply = await ws.recv()
                refused += '"room-full"' in reply or '"server-full"' in reply
                squatters.append(ws)
            in_room_before = len(server.rooms["r"])
            for _ in range(200):  # idle since registering: closed after the 1 s idle timeout
                if not server.rooms.get("r"):
                    break
                await asyncio.sleep(0.05)
            in_room_after = len(server.rooms.get("r", []))
            async with SignalingClient(server.url, "r", "worker", "w"):
                async with SignalingClient(server.url, "r", "client", "real") as client:
                    await client.send_to("w", {"kind": "offer", "sdp": "x"})
                    await asyncio.sleep(1.5)  # past the idle timeout, but it has relayed
                    stayed = "real" in server.rooms["r"]
            for ws in squatters:
                await ws.close()
            return refused, in_room_before, in_room_after, stayed

    refused, before, after, stayed = run_async(scenario())
    assert (refused, before, after) == (11, 4, 0)
    assert stayed


# --- peers that proved the room's token are not capped by their address ---------------------------


async def register_lab(url: str, token: str | None, workers: int, people: int) -> list[str]:
    """``workers`` workers and ``people`` clients of one lab, all behind one address; what each
    registration got: "ok" or the server's refusal code."""
    outcomes = []
    async with contextlib.AsyncExitStack() as stack:
        roles = ["worker"] * workers + ["client"] * people
        for n, role in enumerate(roles):
            try:
                await stack.enter_async_context(SignalingClient(url, "lab", role, f"{role}-{n}", token))
                outcomes.append("ok")
            except SignalingServerError as error:
                outcomes.append(error.code)
    return outcomes


def test_a_lab_behind_one_address_fills_its_room_when_every_peer_gives_the_token(tmp_path):
    """Three workers and six people submitting, behind one NAT address (here 127.0.0.1), with the
    room's token: all admitted, past the per-address cap of 8 (the default of a real
    ``rtcxfer signal``), which is for peers without the token."""
    server, url = start_signaling(tmp_path, token="lab-token", env=environment())
    try:
        # What rtcxfer's commands send for the token (an HMAC of it, not the token itself).
        outcomes = run_async(register_lab(url, signaling_token("lab-token"), workers=3, people=6))
    finally:
        server.stop()
    assert outcomes == ["ok"] * 9


def test_peers_without_a_token_stay_capped_per_address(tmp_path):
    server, url = start_signaling(tmp_path, token=None, env=environment())
    try:
        outcomes = run_async(register_lab(url, None, workers=3, people=6))
    finally:
        server.stop()
    assert outcomes == ["ok"] * 8 + ["room-full"]
