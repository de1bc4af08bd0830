"""Two real aiortc peers, connected through a real signaling server on 127.0.0.1.

For integration tests of transports, the worker and the client::

    async with linked_peers() as peers:
        transport = RtcChunkedTransport(peers.client.link, context)
        peers.client.link.add_handler("rtc-chunked", transport)
        ...

:func:`linked_peers` starts a :class:`~rtcxfer.net.signaling.SignalingServer` on 127.0.0.1 with an
ephemeral port (or uses the one given, so that several sessions can follow each other through
one server), registers a worker and a client in a fresh room, connects two loopback-only
peers through it (:func:`~rtcxfer.net.peer.connect_via` with
:func:`~rtcxfer.net.peer.signaling_adapter`; the client offers), builds a
:class:`~rtcxfer.protocol.engine.Session` and a :class:`~rtcxfer.net.link.Link` per side, and starts both
links' receive loops. On exit everything is closed and awaited, each step bounded by
``timeout``. No packet leaves the loopback interface.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import attrs

from rtcxfer.log import logger
from rtcxfer.net.link import Link
from rtcxfer.net.peer import DataChannel, PeerConnection, PeerOptions, connect_via, signaling_adapter
from rtcxfer.net.signaling import SignalingClient, SignalingServer
from rtcxfer.protocol.engine import Engine
from rtcxfer.transport.host import PluginHost

__all__ = ["LinkedPeers", "PeerSide", "linked_peers"]

LOOPBACK = "127.0.0.1"


@attrs.define(eq=False)
class PeerSide:
    """One side of a connected pair: its role, connection, channel, protocol engine and link."""

    role: str
    peer: PeerConnection
    channel: DataChannel
    engine: Engine
    link: Link
    #: The task running ``link.run()``.
    task: asyncio.Task[None]

    async def drop(self, timeout: float = 10.0) -> None:
        """Close this side's peer connection (as a crash or network loss would) and wait
        until its link has seen the close."""
        await self.peer.close()
        await asyncio.wait_for(self.link.wait_closed(), timeout)


@attrs.define(eq=False)
class LinkedPeers:
    """What :func:`linked_peers` yields."""

    server: SignalingServer
    host: PluginHost
    worker: PeerSide
    client: PeerSide

    @property
    def sides(self) -> tuple[PeerSide, PeerSide]:
        return (self.worker, self.client)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Wait until both links have stopped (after a drop of either side)."""
        await asyncio.wait_for(asyncio.gather(self.worker.link.wait_closed(), self.client.link.wait_closed()), timeout)


@asynccontextmanager
async def linked_peers(
    *,
    server: SignalingServer | None = None,
    host: PluginHost | None = None,
    options: PeerOptions | None = None,
    room: str | None = None,
    prepare: Callable[[PeerSide], None] | None = None,
    timeout: float = 30.0,
) -> AsyncIterator[LinkedPeers]:
    """Connect a worker and a client through a signaling server on 127.0.0.1; see the module.

    ``server``: an already started server to use (default: start one for this pair).
    ``host``: where sessions find their claims and frame catalogue (default
    ``PluginHost(autoload=False)``, built-ins only). ``options`` must be loopback-only.
    ``prepare(side)`` runs for each side before its link starts receiving, the place to add
    handlers that must see the very first message.
    """
    options = options if options is not None else PeerOptions()
    if not options.loopback_only:
        raise ValueError("linked_peers is for tests: options must be loopback_only")
    host = host if host is not None else PluginHost(autoload=False)
    room = room if room is not None else f"test-{secrets.token_hex(4)}"
    async with AsyncExitStack() as stack:
        if server is None:
            server = await stack.enter_async_context(SignalingServer(LOOPBACK, 0))
        worker_sig = SignalingClient(server.url, room, "worker", "worker-1")
        client_sig = SignalingClient(server.url, room, "client", "client-1")
        async with worker_sig, client_sig:
            await worker_sig.wait_for_peer("client", timeout=timeout)
            await client_sig.wait_for_peer("worker", timeout=timeout)
            worker_send, worker_receive = signaling_adapter(worker_sig, client_sig.peer_id)
            client_send, client_receive = signaling_adapter(client_sig, worker_sig.peer_id)
            results = await asyncio.gather(
                connect_via(worker_send, worker_receive, "answerer", options, timeout),
                connect_via(client_send, client_receive, "offerer", options, timeout),
                return_exceptions=True,
            )
        # The data channel carries everything from here on; the signaling clients have left.
        for result in results:
            if not isinstance(result, BaseException):
                stack.push_async_callback(result[0].close)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        (worker_pc, worker_channel), (client_pc, client_channel) = results

        sides = []
        for role, peer, channel in (("worker", worker_pc, worker_channel), ("client", client_pc, client_channel)):
            engine = Engine(host.claim, catalogue=host.catalogue)
            link = Link(channel, engine, name=role)
            side = PeerSide(role, peer, channel, engine, link, task=None)  # type: ignore[arg-type]
            if prepare is not None:
                prepare(side)
            sides.append(side)
        for side in sides:
            side.task = asyncio.create_task(side.link.run(), name=f"link-{side.role}")
            stack.push_async_callback(_stop_link, side, timeout)
        logger.debug("linked peers ready in room {} via {}", room, server.url)
        yield LinkedPeers(server=server, host=host, worker=sides[0], client=sides[1])


async def _stop_link(side: PeerSide, timeout: float) -> None:
    # Closing the connection ends the link's receive loop; the exit stack closes the peer
    # connections only after this, so close this side's first to wake the loop now.
    await side.peer.close()
    try:
        await asyncio.wait_for(asyncio.shield(side.task), timeout)
    except asyncio.TimeoutError:
        side.task.cancel()
        await asyncio.gather(side.task, return_exceptions=True)
        raise
