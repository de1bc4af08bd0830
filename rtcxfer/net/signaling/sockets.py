"""What the signaling server and client share about their WebSockets: close codes, and a close
that cannot hang on a peer that stopped reading."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection

__all__ = ["CLOSE_NORMAL", "CLOSE_POLICY", "CLOSE_TRY_AGAIN_LATER", "close_bounded"]

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


async def close_bounded(ws: ServerConnection | ClientConnection, code: int, reason: str, timeout: float) -> None:
    """Close ``ws``; if the peer does not read, the close frame never drains, so abort."""
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout)
    except asyncio.TimeoutError:
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()
