"""One address cannot take the signaling server's sockets or a room's places: the per-address
limits of a real server on 127.0.0.1, attacked from a second loopback address."""

from __future__ import annotations

import asyncio
import sys

import pytest

from rtcxfer.net.signaling import SignalingClient, SignalingServer
from rtcxfer.testing import run_async
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
