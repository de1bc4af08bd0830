"""Signaling servers sharing their rooms through a real Redis (``SignalingServer(redis_url=...)``,
:mod:`rtcxfer.net.signaling.redis_rooms`), in one process over real WebSockets on 127.0.0.1: what
the rooms promise one server's peers holds across servers (membership, descriptions, relay, room
events, the per-address and per-room limits, duplicate ids), and a replica that stops renewing
its membership is forgotten. Slow: each test starts a ``redis-server``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.net.signaling import SignalingClient, SignalingServer, SignalingServerError
from rtcxfer.net.signaling.client import split_signal_urls
from rtcxfer.net.signaling.messages import PeerJoined, PeerLeft, PeerUpdated, Relay
from rtcxfer.net.signaling.rooms import Member
from rtcxfer.protocol.errors import SharedRoomsError
from rtcxfer.testing.redis_server import RedisServer, free_port, redis_server_available, running_redis
from tests.support.signaling import assert_closed, async_test, raw, register

STEP = 5.0


def needs_redis(test):
    """Slow (it starts a redis-server), and skipped where there is none."""
    skip = pytest.mark.skipif(not redis_server_available(), reason="needs redis-server (apt-get install redis-server)")
    return pytest.mark.slow(skip(test))


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


def replica(redis: RedisServer, **options) -> SignalingServer:
    return SignalingServer("127.0.0.1", 0, redis_url=redis.url, **options)


async def counted(redis: RedisServer, kind: str, expected: int) -> None:
    """Wait until the replicas' ``kind`` counts (``conns``, ``unreg``) of 127.0.0.1 add up to
    ``expected``: a replica counts a socket once its WebSocket is open, so a test's next socket
    may reach another replica before the count does."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis.url)
    try:
        total = None
        for _ in range(int(STEP / 0.02)):
            total = 0
            async for key in client.scan_iter(f"rtcxfer:{kind}:*"):
                total += int(await client.hget(key, "127.0.0.1") or 0)
            if total == expected:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{kind} of 127.0.0.1: {total}, not {expected}")
    finally:
        await client.aclose()


@needs_redis
def test_a_peer_on_one_replica_is_seen_reached_and_followed_from_another(redis: RedisServer) -> None:
    @async_test(30.0)
    async def scenario() -> None:
        async with replica(redis) as a, replica(redis) as b:
            async with SignalingClient(a.url, "lab", "worker", "gpu1", description={"slots": 1}) as worker:
                async with SignalingClient(b.url, "lab", "client", "c1") as client:
                    assert client.workers == {"gpu1": {"slots": 1}}
                    assert await worker.receive(STEP) == PeerJoined("c1", "client", None)
                    await client.send_to("gpu1", {"kind": "offer", "sdp": "x"})
                    assert await worker.receive(STEP) == Relay("c1", {"kind": "offer", "sdp": "x"})
                    await worker.send_to("c1", {"kind": "answer", "sdp": "y"})
                    assert await client.receive(STEP) == Relay("gpu1", {"kind": "answer", "sdp": "y"})
                    await worker.describe({"slots": 2})
                    assert await client.receive(STEP) == PeerUpdated("gpu1", "worker", {"slots": 2})
                    assert a.rooms == {"lab": ["gpu1"]} and b.rooms == {"lab": ["c1"]}
                    await worker.close()
                    assert await client.receive(STEP) == PeerLeft("gpu1", "worker")
                    # Relays in order: a burst from one replica arrives as sent.
                async with SignalingClient(a.url, "lab", "worker", "gpu2") as worker2:
                    async with SignalingClient(b.url, "lab", "client", "c2") as client2:
                        await worker2.receive(STEP)
                        # (Within the server's burst of 200 messages per socket.)
                        for n in range(150):
                            await client2.send_to("gpu2", {"n": n})
                        got = [(await worker2.receive(STEP)).payload["n"] for _ in range(150)]
                        assert got == list(range(150))

    scenario()


@needs_redis
def test_relays_cross_replicas_after_a_quiet_spell_longer_than_any_redis_read_timeout(redis: RedisServer) -> None:
    @async_test(30.0)
    async def scenario() -> None:
        async with replica(redis) as a, replica(redis) as b:
            async with SignalingClient(a.url, "lab", "worker", "gpu1") as worker:
                async with SignalingClient(b.url, "lab", "client", "c1") as client:
                    await worker.receive(STEP)
                    await asyncio.sleep(6.0)  # the commands' read timeout is 5 s; a subscription has none
                    await client.send_to("gpu1", {"kind": "offer", "sdp": "x"})
                    assert await worker.receive(STEP) == Relay("c1", {"kind": "offer", "sdp": "x"})

    scenario()


@needs_redis
def test_ids_room_places_and_per_address_caps_hold_across_replicas(redis: RedisServer) -> None:
    @async_test(30.0)
    async def scenario() -> None:
        limits = {"max_peers_per_room": 3, "max_connections_per_address": 4, "max_unregistered_per_address": 2,
                  "max_peers_per_address_in_room": 8}
        async with replica(redis, **limits) as a, replica(redis, **limits) as b:
            async with SignalingClient(a.url, "lab", "worker", "gpu1"):
                with pytest.raises(SignalingServerError) as duplicate:
                    async with SignalingClient(b.url, "lab", "worker", "gpu1"):
                        pass
                assert duplicate.value.code == "duplicate-peer"
                async with SignalingClient(b.url, "lab", "client", "c1"), SignalingClient(a.url, "lab", "client", "c2"):
                    with pytest.raises(SignalingServerError) as full:
                        async with SignalingClient(b.url, "lab", "client", "c3"):
                            pass
                    assert full.value.code == "room-full"
                    # Three sockets from 127.0.0.1 on A and B; a fourth is the last one allowed.
                    fourth = await raw(b)
                    await counted(redis, "conns", 4)
                    fifth = await raw(a)
                    reply = await fifth.recv()
                    assert '"server-full"' in reply
                    await assert_closed(fifth, 1013)
                    await fourth.close()
                # Unregistered sockets: two at most from one address, counted across replicas.
                await counted(redis, "conns", 1)
                idle = [await raw(a), await raw(b)]
                await counted(redis, "unreg", 2)
                third = await raw(b)
                assert '"server-full"' in await third.recv()
                for ws in idle:
                    reply = await register(ws, "other", "client", f"late-{idle.index(ws)}")
                    assert reply["type"] == "registered", reply
                    await ws.close()

    scenario()


@needs_redis
def test_a_replica_that_stops_renewing_is_forgotten_and_its_rooms_told_after_the_grace(redis: RedisServer) -> None:
    from rtcxfer.net.signaling.redis_rooms import RedisRooms

    @async_test(30.0)
    async def scenario() -> None:
        # A book of its own, standing for a replica that dies: it registers a worker, then its
        # heartbeat and everything else stop without a word to Redis.
        dead = RedisRooms(redis.url, membership_ttl=0.6, rejoin_grace=0.5)
        await dead.open(lambda connection, text: None, lambda: None)
        key = dead.connection_key(1)
        await dead.connect(key, "127.0.0.1")
        await dead.register(key, "lab", "gpu-dead", "worker")
        async with replica(redis, membership_ttl=0.6, rejoin_grace=0.5) as live:
            async with SignalingClient(live.url, "lab", "client", "c1") as client:
                assert client.peers == {"gpu-dead": "worker"}
                await dead.abandon()
                assert await client.receive(STEP) == PeerLeft("gpu-dead", "worker")
            async with SignalingClient(live.url, "lab", "client", "c2") as later:
                assert later.peers == {}

    scenario()


@needs_redis
def test_a_redis_restart_closes_the_replicas_sockets_and_they_register_again(redis: RedisServer) -> None:
    @async_test(60.0)
    async def scenario() -> None:
        async with replica(redis, membership_ttl=0.6) as a:
            worker = SignalingClient(a.url, "lab", "worker", "gpu1")
            await worker.connect()
            await asyncio.to_thread(redis.restart, 0.5)
            with pytest.raises(Exception):  # noqa: B017, PT011 - the connection ends, whichever way
                while True:
                    await worker.receive(STEP * 4)
            for _ in range(100):
                try:
                    async with SignalingClient(a.url, "lab", "worker", "gpu1"):
                        async with SignalingClient(a.url, "lab", "client", "c1") as client:
                            assert client.peers == {"gpu1": "worker"}
                            return
                except SignalingServerError as refused:
                    assert refused.code in ("server-full", "duplicate-peer"), refused
                    await asyncio.sleep(0.2)
            pytest.fail("never registered again after Redis restarted")

    scenario()


@pytest.mark.slow
def test_an_unreachable_or_malformed_redis_url_fails_the_start() -> None:
    @async_test(30.0)
    async def scenario() -> None:
        with pytest.raises(SharedRoomsError, match=r"cannot use Redis at redis://:\*\*\*@127\.0\.0\.1"):
            async with SignalingServer(redis_url=f"redis://:secret@127.0.0.1:{free_port()}/0"):
                pass
        with pytest.raises(SharedRoomsError, match="not a Redis URL"):
            async with SignalingServer(redis_url="nonsense://x"):
                pass

    scenario()


# --- without Redis ----------------------------------------------------------------------------


@given(st.lists(st.text(alphabet="ws:/,. 1a", max_size=20), max_size=5))
def test_signal_urls_split_into_distinct_non_blank_urls_in_order(values: list[str]) -> None:
    try:
        urls = split_signal_urls(values)
    except ValueError:
        assert all(not part.strip() for value in values for part in value.split(","))
        return
    assert urls and all(url and url == url.strip() and "," not in url for url in urls)
    assert len(set(urls)) == len(urls)
    expected = [part.strip() for value in values for part in value.split(",") if part.strip()]
    assert list(urls) == list(dict.fromkeys(expected))


def test_members_survive_their_trip_through_redis_values() -> None:
    pytest.importorskip("redis")
    from rtcxfer.net.signaling.redis_rooms import decode_member, encode_member

    member = Member("r1/7", "10.0.0.1", "lab", "gpu1", "worker", {"labels": {"a": "b\n\t"}}, True)
    value = "r1\t42\t10.0.0.1\t1\tr1/7\n" + encode_member(member)
    assert decode_member(value) == (42, member)
