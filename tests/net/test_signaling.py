"""The signaling server and client, tested over real WebSockets on 127.0.0.1.

pytest-asyncio is not used: each test is an ``async def`` run by :func:`async_test`, which
bounds it with a timeout so that a failing test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger
from websockets.exceptions import ConnectionClosed

from rtcxfer.net.signaling import (
    PeerJoined,
    Relay,
    SignalingClient,
    SignalingServer,
    SignalingServerError,
    SignalingTimeoutError,
    run_signaling_server,
)
from rtcxfer.net.signaling.messages import ERROR_CODES
from rtcxfer.protocol.errors import SignalingError
from rtcxfer.testing import run_async
from tests.support.signaling import (
    LOOPBACK,
    QUIET,
    STEP,
    assert_closed,
    assert_silent,
    async_test,
    raw,
    recv_json,
    register,
    registered,
    relay,
    send_json,
)


@pytest.fixture(autouse=True)
def no_handler_crash(caplog: pytest.LogCaptureFixture):
    """Whatever a test sends, no exception may escape a connection handler."""
    errors: list[str] = []
    sink = logger.add(lambda message: errors.append(str(message)), level="ERROR")
    caplog.set_level(logging.ERROR, logger="websockets")
    yield
    logger.remove(sink)
    assert errors == []
    assert [r for r in caplog.records if r.name.startswith("websockets")] == []


# -- the happy path ---------------------------------------------------------------------------


@async_test()
async def test_worker_and_client_exchange_offer_and_answer() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        assert server.port != 0 and server.url == f"ws://127.0.0.1:{server.port}"
        async with (
            SignalingClient(server.url, "job-7", "worker", "gpu-1") as worker,
            SignalingClient(server.url, "job-7", "client", "laptop") as client,
        ):
            assert await client.wait_for_peer("worker", timeout=STEP) == "gpu-1"
            assert await worker.wait_for_peer("client", timeout=STEP) == "laptop"
            assert client.peers == {"gpu-1": "worker"}

            await client.send_to("gpu-1", {"kind": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 x"})
            assert await worker.receive(STEP) == PeerJoined("laptop", "client")
            assert await worker.receive(STEP) == Relay("laptop", {"kind": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 x"})

            await worker.send_to("laptop", {"kind": "answer", "sdp": "v=0 answer"})
            assert await client.receive(STEP) == Relay("gpu-1", {"kind": "answer", "sdp": "v=0 answer"})
        # The server notices the two closed sockets on its own schedule.
        for _ in range(100):
            if server.rooms == {}:
                break
            await asyncio.sleep(0.02)
        assert server.rooms == {}


@async_test()
async def test_registered_lists_earlier_peers_and_others_hear_of_joins_and_leaves() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await raw(server)
        assert await register(worker, "r", "worker", "w") == {
            "type": "registered",
            "room": "r",
            "peer_id": "w",
            "peers": [],
        }
        client = await raw(server)
        reply = await register(client, "r", "client", "c")
        assert reply["peers"] == [{"peer_id": "w", "role": "worker"}]
        assert await recv_json(worker) == {"type": "peer-joined", "peer_id": "c", "role": "client"}
        assert server.rooms == {"r": ["w", "c"]}

        await client.close()
        assert await recv_json(worker) == {"type": "peer-left", "peer_id": "c", "role": "client"}
        assert server.rooms == {"r": ["w"]}
        await worker.close()


@async_test()
async def test_wait_for_peer_returns_a_peer_that_joins_later() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        async with SignalingClient(server.url, "r", "client", "c") as client:
            waiting = asyncio.ensure_future(client.wait_for_peer("worker", timeout=STEP))
            async with SignalingClient(server.url, "r", "client", "other-client"):
                await asyncio.sleep(0.05)
                assert not waiting.done()  # a client is not a worker
                async with SignalingClient(server.url, "r", "worker", None) as worker:
                    assert await waiting == worker.peer_id
                    assert worker.peer_id.startswith("worker-")
                    # Without a role: the earliest to join.
                    assert await client.wait_for_peer(timeout=STEP) == "other-client"


# -- identity and rooms -----------------------------------------------------------------------


@async_test()
async def test_sender_is_taken_from_the_socket_not_from_the_message() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "r", "worker", "w")
        await registered(server, "r", "client", "honest")
        mallory = await registered(server, "r", "client", "mallory")
        assert (await recv_json(worker))["peer_id"] == "honest"
        assert (await recv_json(worker))["peer_id"] == "mallory"

        forged = {
            "type": "relay",
            "to": "w",
            "from": "honest",
            "peer_id": "honest",
            "role": "worker",
            "payload": {"kind": "offer", "from": "honest"},
        }
        await send_json(mallory, forged)
        # The payload is opaque and goes through untouched; the envelope is the server's.
        assert await recv_json(worker) == {
            "type": "relay",
            "from": "mallory",
            "payload": {"kind": "offer", "from": "honest"},
        }
        await assert_silent(mallory)


@async_test()
async def test_rooms_are_isolated() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker_a = await registered(server, "room-a", "worker", "worker-1")
        worker_b = await registered(server, "room-b", "worker", "worker-1")  # same id, fine
        client_b = await registered(server, "room-b", "client", "client-b")
        assert (await recv_json(worker_b))["type"] == "peer-joined"
        client_a = await registered(server, "room-a", "client", "client-a")
        assert await recv_json(worker_a) == {"type": "peer-joined", "peer_id": "client-a", "role": "client"}

        await send_json(client_a, relay("client-b", kind="offer"))
        error = await recv_json(client_a)
        assert (error["type"], error["code"], error["peer_id"]) == ("error", "unknown-peer", "client-b")
        await send_json(client_a, relay("worker-1", kind="offer"))
        assert await recv_json(worker_a) == {"type": "relay", "from": "client-a", "payload": {"kind": "offer"}}
        await assert_silent(worker_b)
        await assert_silent(client_b, 0)


@async_test()
async def test_duplicate_peer_id_is_refused_and_the_socket_may_try_another() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        first = await registered(server, "r", "worker", "w")
        second = await raw(server)
        reply = await register(second, "r", "client", "w")
        assert (reply["type"], reply["code"]) == ("error", "duplicate-peer")
        assert (await register(second, "r", "client", "c"))["type"] == "registered"
        assert (await recv_json(first))["peer_id"] == "c"  # only the successful join is heard
        reply = await register(second, "r", "client", "c2")
        assert reply["code"] == "already-registered"
        await assert_silent(first)


@async_test()
async def test_room_full() -> None:
    async with SignalingServer(LOOPBACK, 0, max_peers_per_room=2) as server:
        worker = await registered(server, "r", "worker", "w")
        client = await registered(server, "r", "client", "c1")
        third = await raw(server)
        assert (await register(third, "r", "client", "c2"))["code"] == "room-full"
        await client.close()
        assert (await recv_json(worker))["type"] == "peer-joined"
        assert (await recv_json(worker))["type"] == "peer-left"
        assert (await register(third, "r", "client", "c2"))["type"] == "registered"


# -- tokens -----------------------------------------------------------------------------------


@async_test()
async def test_wrong_or_missing_token_is_refused_and_the_room_keeps_working() -> None:
    async with SignalingServer(LOOPBACK, 0, tokens={"lab": "s3cret"}) as server:
        worker = await registered(server, "lab", "worker", "w", token="s3cret")

        for token in ("wrong", None, ""):
            intruder = await raw(server)
            reply = await register(intruder, "lab", "client", "w", token)  # even a taken id
            assert (reply["type"], reply["code"]) == ("error", "bad-token")
            assert "s3cret" not in reply["message"]
            await assert_closed(intruder, 1008)

        with pytest.raises(SignalingServerError) as refused:
            await SignalingClient(server.url, "lab", "client", "c", "s3cre").connect()
        assert refused.value.code == "bad-token"
        assert server.rooms == {"lab": ["w"]}
        await assert_silent(worker)

        async with SignalingClient(server.url, "lab", "client", "c", "s3cret") as client:
            await client.send_to("w", {"kind": "offer"})
            assert (await recv_json(worker))["type"] == "peer-joined"
            assert await recv_json(worker) == {"type": "relay", "from": "c", "payload": {"kind": "offer"}}
        # A room without a configured token is open.
        await registered(server, "elsewhere", "worker", "w")


@async_test()
async def test_default_token_covers_every_room_without_its_own() -> None:
    async with SignalingServer(LOOPBACK, 0, {"special": "sp"}, default_token="dflt") as server:
        await registered(server, "any-room", "worker", "w", token="dflt")
        await registered(server, "special", "worker", "w", token="sp")
        for room, token in (("any-room", None), ("other", "sp"), ("special", "dflt")):
            ws = await raw(server)
            assert (await register(ws, room, "client", "c", token))["code"] == "bad-token"


# -- refusals that keep the connection --------------------------------------------------------


@async_test()
async def test_relay_to_an_unknown_peer_is_an_error_and_the_connection_stays() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "r", "worker", "w")
        client = await registered(server, "r", "client", "c")
        await recv_json(worker)
        await send_json(client, relay("ghost", kind="offer"))
        error = await recv_json(client)
        assert (error["type"], error["code"], error["peer_id"]) == ("error", "unknown-peer", "ghost")
        await send_json(client, relay("w", kind="offer"))
        assert (await recv_json(worker))["from"] == "c"


@async_test()
async def test_relay_before_register_is_refused() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "r", "worker", "w")
        early = await raw(server)
        await send_json(early, relay("w", kind="offer"))
        assert (await recv_json(early))["code"] == "not-registered"
        await assert_silent(worker)
        assert (await register(early, "r", "client", "c"))["type"] == "registered"


@async_test()
async def test_client_surfaces_server_errors_from_receive() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        async with (
            SignalingClient(server.url, "r", "worker", "w") as worker,
            SignalingClient(server.url, "r", "client", "c") as client,
        ):
            await client.send_to("ghost", {"kind": "offer"})
            with pytest.raises(SignalingServerError) as error:
                await client.receive(STEP)
            assert (error.value.code, error.value.peer_id) == ("unknown-peer", "ghost")
            await worker.send_to("c", {"kind": "hello"})
            assert (await client.receive(STEP)).payload == {"kind": "hello"}
            with pytest.raises(SignalingTimeoutError):
                await client.receive(QUIET)
            with pytest.raises(TypeError):
                await client.send_to("w", ["not", "an", "object"])  # type: ignore[arg-type]


# -- hostile input ----------------------------------------------------------------------------

GARBAGE = {
    "not-json": "{{{ nope",
    "empty": "",
    "array": "[1, 2]",
    "number": "42",
    "string": '"register"',
    "null": "null",
    "no-type": '{"to": "w", "payload": {}}',
    "type-not-string": '{"type": 5}',
    "unknown-type": '{"type": "dance"}',
    "relay-no-to": '{"type": "relay", "payload": {}}',
    "relay-to-list": '{"type": "relay", "to": ["w"], "payload": {}}',
    "relay-no-payload": '{"type": "relay", "to": "w"}',
    "relay-payload-string": '{"type": "relay", "to": "w", "payload": "offer"}',
    "relay-to-self": '{"type": "relay", "to": "mallory", "payload": {}}',
    "nan": '{"type": "relay", "to": "w", "payload": {"x": NaN}}',
    "huge-int": '{"type": "relay", "to": "w", "payload": {"x": ' + "9" * 5000 + "}}",
    "deep-nesting": "[" * 100_000,
    "binary": b"\x00\xff\x01",
    "binary-json": json.dumps(relay("w", kind="offer")).encode(),
}


@pytest.mark.parametrize("frame", list(GARBAGE.values()), ids=list(GARBAGE))
@async_test()
async def test_garbage_gets_bad_message_and_changes_nothing(frame: str | bytes) -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "r", "worker", "w")
        mallory = await registered(server, "r", "client", "mallory")
        await recv_json(worker)

        await mallory.send(frame)
        error = await recv_json(mallory)
        assert (error["type"], error["code"]) == ("error", "bad-message")
        await assert_silent(worker)
        # Mallory's registration and connection are intact, and so is everyone else.
        await send_json(mallory, relay("w", kind="still-here"))
        assert await recv_json(worker) == {"type": "relay", "from": "mallory", "payload": {"kind": "still-here"}}
        assert server.rooms == {"r": ["w", "mallory"]}


REGISTER_GARBAGE = {
    "no-room": {"role": "client", "peer_id": "c"},
    "room-int": {"room": 7, "role": "client", "peer_id": "c"},
    "empty-room": {"room": "", "role": "client", "peer_id": "c"},
    "bad-role": {"room": "r", "role": "admin", "peer_id": "c"},
    "no-peer-id": {"room": "r", "role": "client"},
    "peer-id-newline": {"room": "r", "role": "client", "peer_id": "c\nINFO forged log line"},
    "peer-id-too-long": {"room": "r", "role": "client", "peer_id": "c" * 129},
    "token-int": {"room": "r", "role": "client", "peer_id": "c", "token": 1234},
    "role-list": {"room": "r", "role": ["worker"], "peer_id": "c"},
    "started-at-beyond-float": {"room": "r", "role": "worker", "peer_id": "c", "description": {"started_at": 10**400}},
}


@pytest.mark.parametrize("fields", list(REGISTER_GARBAGE.values()), ids=list(REGISTER_GARBAGE))
@async_test()
async def test_malformed_register_gets_bad_message(fields: dict[str, Any]) -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "r", "worker", "w")
        ws = await raw(server)
        await send_json(ws, {"type": "register", **fields})
        assert (await recv_json(ws))["code"] == "bad-message"
        await assert_silent(worker)
        assert server.rooms == {"r": ["w"]}
        assert (await register(ws, "r", "client", "c"))["type"] == "registered"


@async_test()
async def test_oversize_messages() -> None:
    limit = 16 * 1024
    async with SignalingServer(LOOPBACK, 0, max_message_bytes=limit) as server:
        worker = await registered(server, "r", "worker", "w")
        mallory = await registered(server, "r", "client", "mallory")
        await recv_json(worker)

        # Over the limit in bytes though not in characters: the limit counts UTF-8 bytes.
        for blob in ("x" * (limit + 1), "\u20ac" * (limit // 2)):
            await send_json(mallory, relay("w", blob=blob))
            assert (await recv_json(mallory))["code"] == "bad-message"
        await send_json(mallory, relay("w", blob="x" * (limit - 100)))
        assert len((await recv_json(worker))["payload"]["blob"]) == limit - 100

        # Far over it, websockets itself cuts the connection off (1009: message too big).
        await mallory.send("x" * (2 * limit + 1))
        await assert_closed(mallory, 1009)
        assert (await recv_json(worker)) == {"type": "peer-left", "peer_id": "mallory", "role": "client"}
        client = await registered(server, "r", "client", "c")
        await send_json(client, relay("w", kind="offer"))
        assert (await recv_json(worker))["type"] == "peer-joined"
        assert (await recv_json(worker))["from"] == "c"


@async_test()
async def test_flooding_is_rate_limited_then_closed_and_others_are_unaffected() -> None:
    options = {"rate_limit": 50, "rate_burst": 20, "max_rate_violations": 10}
    async with SignalingServer(LOOPBACK, 0, **options) as server:
        worker = await registered(server, "r", "worker", "w")
        client = await registered(server, "r", "client", "c")
        flooder = await registered(server, "r", "client", "flooder")
        assert (await recv_json(worker))["peer_id"] == "c"
        assert (await recv_json(worker))["peer_id"] == "flooder"

        try:
            for i in range(2000):
                await send_json(flooder, relay("w", n=i))
        except ConnectionClosed:
            pass  # the server may hang up before the flood is all written
        codes = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                codes.append((await recv_json(flooder))["code"])
        assert closed.value.rcvd.code == 1008
        assert codes and set(codes) == {"rate-limited"}

        await send_json(client, relay("w", kind="offer"))
        from_flooder = 0
        while True:
            message = await recv_json(worker)
            if message["type"] == "relay" and message["from"] == "flooder":
                from_flooder += 1
            elif message["type"] == "relay":
                assert message == {"type": "relay", "from": "c", "payload": {"kind": "offer"}}
                break
            else:
                assert message == {"type": "peer-left", "peer_id": "flooder", "role": "client"}
        # The burst (less the one token its registration took) plus what the bucket refilled
        # during the flood (well under a second).
        assert 19 <= from_flooder <= 60


@async_test()
async def test_abrupt_disconnect_is_announced_as_peer_left() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        worker = await registered(server, "r", "worker", "w")
        client = await registered(server, "r", "client", "c")
        await recv_json(worker)
        client.transport.abort()  # no close frame, just a reset TCP connection
        assert await recv_json(worker) == {"type": "peer-left", "peer_id": "c", "role": "client"}
        assert server.rooms == {"r": ["w"]}


@async_test(timeout=15)
async def test_a_peer_that_does_not_read_is_dropped_without_stalling_its_senders() -> None:
    options = {"max_message_bytes": 16 * 1024, "max_outbox_bytes": 64 * 1024, "rate_limit": None}
    async with SignalingServer(LOOPBACK, 0, **options) as server:
        sleeper = await raw(server, max_queue=1)
        assert (await register(sleeper, "r", "worker", "sleeper"))["type"] == "registered"
        sender = await registered(server, "r", "client", "sender")
        bystander = await registered(server, "r", "client", "bystander")
        assert (await recv_json(sender))["peer_id"] == "bystander"
        # From here the sleeper reads nothing: its socket buffers fill, then its outbox.

        blob = "z" * (15 * 1024)
        left = asyncio.ensure_future(recv_json(sender, timeout=12))
        for _ in range(20_000):
            if left.done():
                break
            await send_json(sender, relay("sleeper", blob=blob))
            await asyncio.sleep(0)
        assert (await left) == {"type": "peer-left", "peer_id": "sleeper", "role": "worker"}
        await send_json(bystander, relay("sender", kind="offer"))
        while (message := await recv_json(sender))["type"] != "relay":
            assert message["code"] == "unknown-peer"  # relays sent after the drop
        assert message == {"type": "relay", "from": "bystander", "payload": {"kind": "offer"}}
        assert server.rooms == {"r": ["sender", "bystander"]}
        sleeper.transport.abort()


@async_test()
async def test_a_socket_that_never_registers_is_closed() -> None:
    async with SignalingServer(LOOPBACK, 0, register_timeout=0.3) as server:
        idle = await raw(server)
        closed = await assert_closed(idle, 1008)
        assert closed.rcvd.reason == "register timeout"


@async_test()
async def test_server_full() -> None:
    async with SignalingServer(LOOPBACK, 0, max_connections=1) as server:
        first = await registered(server, "r", "worker", "w")
        second = await raw(server)
        assert (await recv_json(second))["code"] == "server-full"
        await assert_closed(second, 1013)
        await first.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
MESSAGES = JSON | st.fixed_dictionaries(
    {"type": st.sampled_from(["register", "relay", "error", "peer-left"])},
    optional={
        "room": JSON | st.just("r"),
        "role": JSON | st.sampled_from(["worker", "client"]),
        "peer_id": JSON | st.just("w"),
        "token": JSON,
        "to": JSON | st.just("w"),
        "from": JSON | st.just("w"),
        "payload": JSON,
    },
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES, min_size=1, max_size=6))
def test_fuzzed_messages_only_ever_get_error_replies(messages: list[Any]) -> None:
    async def scenario() -> None:
        async with SignalingServer(LOOPBACK, 0) as server:
            worker = await registered(server, "r", "worker", "w")
            fuzzer = await registered(server, "r", "client", "fz")
            await recv_json(worker)
            for message in messages:
                await send_json(fuzzer, message)
            await send_json(fuzzer, relay("end-marker"))
            while (reply := await recv_json(fuzzer))["type"] == "error":
                assert reply["code"] in ERROR_CODES
                if reply.get("peer_id") == "end-marker":
                    break
            else:
                pytest.fail(f"unexpected reply {reply!r}")
            await send_json(worker, relay("fz", kind="ping"))
            assert await recv_json(fuzzer) == {"type": "relay", "from": "w", "payload": {"kind": "ping"}}
            # Whatever reached the worker came from the fuzzer's socket, as a clean relay.
            await send_json(fuzzer, relay("w", kind="end-marker"))
            while (delivered := await recv_json(worker))["payload"] != {"kind": "end-marker"}:
                assert delivered["type"] == "relay" and delivered["from"] == "fz"
                assert set(delivered) == {"type", "from", "payload"}

    run_async(scenario(), 10)


# -- lifecycle --------------------------------------------------------------------------------


@async_test()
async def test_client_errors_without_a_server() -> None:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        free_port = probe.getsockname()[1]
    with pytest.raises(SignalingError) as error:
        await SignalingClient(f"ws://127.0.0.1:{free_port}", "r", "client", "c").connect()
    assert not isinstance(error.value, SignalingServerError)

    with pytest.raises(ValueError):
        SignalingClient("ws://127.0.0.1:1", "r", "boss", "c")
    with pytest.raises(ValueError):
        SignalingClient("ws://127.0.0.1:1", "r", "client", "has space")


@async_test()
async def test_client_sees_the_server_going_away() -> None:
    server = SignalingServer(LOOPBACK, 0)
    await server.start()
    client = SignalingClient(server.url, "r", "client", "c")
    await client.connect()
    waiting = asyncio.ensure_future(client.wait_for_peer("worker", timeout=STEP))
    await server.stop()
    with pytest.raises(SignalingError) as error:
        await client.receive(STEP)
    assert "1001" in str(error.value)  # going away
    with pytest.raises(SignalingError):
        await client.receive(STEP)
    with pytest.raises(SignalingError):
        await waiting
    with pytest.raises(SignalingError):
        await client.send_to("w", {})
    await client.close()
    await client.close()


@async_test()
async def test_wait_for_peer_times_out() -> None:
    async with SignalingServer(LOOPBACK, 0) as server:
        async with SignalingClient(server.url, "r", "client", "c") as client:
            with pytest.raises(SignalingTimeoutError) as error:
                await client.wait_for_peer("worker", timeout=QUIET)
            # Both, also on Python 3.10 where they are two classes: code that waits with
            # asyncio catches asyncio's.
            assert isinstance(error.value, TimeoutError) and isinstance(error.value, asyncio.TimeoutError)


@async_test()
async def test_run_signaling_server_serves_until_cancelled() -> None:
    ready: asyncio.Future[SignalingServer] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(run_signaling_server(LOOPBACK, 0, {"r": "tok"}, on_ready=ready.set_result))
    server = await asyncio.wait_for(ready, STEP)
    url = server.url
    async with SignalingClient(url, "r", "worker", "w", "tok") as worker:
        assert worker.connected
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(SignalingError):
        await SignalingClient(url, "r", "worker", "w", "tok").connect()


@async_test()
async def test_registrations_refusals_and_disconnects_are_logged() -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    try:
        async with SignalingServer(LOOPBACK, 0, tokens={"r": "t"}) as server:
            worker = await registered(server, "r", "worker", "w", token="t")
            intruder = await raw(server)
            await register(intruder, "r", "client", "x", "nope")
            await worker.close()
            await assert_closed(intruder, 1008)
            await asyncio.sleep(0.05)
    finally:
        logger.remove(sink)
    text = "\n".join(lines)
    assert "registered conn#1" in text and "'w'" in text
    assert "refused bad-token" in text
    assert "disconnected" in text
    assert "nope" not in text  # a presented token is never logged
