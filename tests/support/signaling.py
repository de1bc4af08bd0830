"""Helpers for tests against the signaling server over real WebSockets on 127.0.0.1: raw
sockets that speak its JSON messages, and a decorator for async tests with a hang guard."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from rtcxfer.net.signaling import SignalingServer, connect_directly
from rtcxfer.testing import run_async

LOOPBACK = "127.0.0.1"
STEP = 2.0  # seconds: the longest any single expected message may take
QUIET = 0.2  # seconds: how long "nothing arrives" is watched


def async_test(timeout: float = 10.0) -> Callable[[Callable[..., Awaitable[None]]], Callable]:
    """An ``async def`` test run in a fresh event loop, failing after ``timeout`` seconds."""

    def decorate(fn: Callable[..., Awaitable[None]]) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            run_async(fn(*args, **kwargs), timeout)

        return wrapper

    return decorate


async def raw(server: SignalingServer, **options: Any) -> ClientConnection:
    return await connect_directly(server.url, open_timeout=STEP, **options)


async def recv_json(ws: ClientConnection, timeout: float = STEP) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def send_json(ws: ClientConnection, message: Any) -> None:
    await ws.send(json.dumps(message, ensure_ascii=False))


async def register(
    ws: ClientConnection, room: str, role: str, peer_id: str, token: str | None = None
) -> dict[str, Any]:
    message = {"type": "register", "room": room, "role": role, "peer_id": peer_id}
    if token is not None:
        message["token"] = token
    await send_json(ws, message)
    return await recv_json(ws)


async def registered(
    server: SignalingServer, room: str, role: str, peer_id: str, token: str | None = None
) -> ClientConnection:
    ws = await raw(server)
    reply = await register(ws, room, role, peer_id, token)
    assert reply["type"] == "registered", reply
    return ws


async def assert_silent(ws: ClientConnection, within: float = QUIET) -> None:
    with pytest.raises(asyncio.TimeoutError):
        message = await asyncio.wait_for(ws.recv(), within)
        pytest.fail(f"unexpected message {message!r}")


async def assert_closed(ws: ClientConnection, code: int) -> ConnectionClosed:
    """Read (and drop) whatever is left until the server closes the socket with ``code``."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), STEP)
    # From the exception: ws.close_code only exists from websockets 14.1 on.
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    return closed.value


def relay(to: str, **payload: Any) -> dict[str, Any]:
    return {"type": "relay", "to": to, "payload": payload}
