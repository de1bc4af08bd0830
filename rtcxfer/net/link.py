"""The I/O edge of one session: the data channel on one side, the engine and handlers on the other.

A :class:`Link` pumps every message received on a data channel through a sans-IO
:class:`~rtcxfer.protocol.engine.Engine` and hands each event to the handler that claimed it: a
transport's per-session object, or the application (worker or client). Replies to unusable
input are sent back on the spot, and the loop goes on; nothing the peer sends ends it.

Events are dispatched one at a time, in order, which keeps the chunks of a transfer in
sequence. A handler with long work to do (running a job) starts a task instead of blocking
the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from rtcxfer.log import logger
from rtcxfer.net.rate_limits import LogThrottle
from rtcxfer.protocol.engine import APPLICATION, ChunkReceived, Engine, FrameReceived, ProtocolViolation
from rtcxfer.protocol.errors import ConnectionClosedError, RemoteProtocolError, describe
from rtcxfer.protocol.frames import Frame, quote_for_log, reply_to

#: Refused inputs logged in full per link; later ones are summarised (a flood must not flood the log).
LOGGED_VIOLATIONS = 5


class Channel(Protocol):
    """What a link needs of a data channel (``rtcxfer.net.peer.DataChannel`` provides it).

    A channel may also tell about the connection under it (:class:`ConnectionAddresses`), for
    transports that open connections of their own; :func:`connection_addresses` asks.
    """

    async def send_text(self, text: str) -> None: ...
    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None: ...
    async def recv(self) -> str | bytes: ...
    def close(self) -> None: ...


class ConnectionAddresses(Protocol):
    """The addresses of the connection a channel runs over (``rtcxfer.net.peer.DataChannel``
    provides them): where this side may listen, and which peer addresses it may reach.

    ``loopback_only``: the connection sends nothing to any address but 127.0.0.1, and whatever
    rides on it must not either. ``local_host_addresses()``: the addresses of this side's own
    ICE host candidates. ``remote_candidate_addresses()``: those of the peer's ICE candidates.
    ``peer_path_address()``: the peer's own address on the candidate pair ICE selected (None
    before, or when it is a TURN relay's). ``local_candidate_addresses()``: the addresses of all
    this side's candidates (host, its NAT's public one, its relay).
    """

    @property
    def loopback_only(self) -> bool: ...
    def local_host_addresses(self) -> tuple[str, ...]: ...
    def remote_candidate_addresses(self) -> frozenset[str]: ...
    def peer_path_address(self) -> str | None: ...
    def local_candidate_addresses(self) -> frozenset[str]: ...


def connection_addresses(channel: object) -> ConnectionAddresses | None:
    """``channel`` itself if it tells the addresses of its connection, else None (a channel
    that cannot tell, such as a test's stand-in: treat it as loopback-only).

    Attribute lookup, not ``isinstance``: wrappers that delegate by ``__getattr__`` (the
    worker's replaying channel, a test's recording one) tell what the channel they wrap tells.
    """
    names = ("local_host_addresses", "remote_candidate_addresses", "peer_path_address", "local_candidate_addresses")
    if all(callable(getattr(channel, name, None)) for name in names) and hasattr(channel, "loopback_only"):
        return channel  # type: ignore[return-value]
    return None


class Handler(Protocol):
    """Receives the events claimed for it. ``on_chunk`` is needed only by byte transports."""

    async def on_frame(self, frame: Frame) -> None: ...


FramePredicate = Callable[[Frame], bool]


class Link:
    """Connects a data channel, a session engine and the session's handlers."""

    def __init__(
        self, channel: Channel, engine: Engine, *, name: str = "link", max_violations: int | None = None
    ) -> None:
        self.channel = channel
        self.engine = engine
        self.name = name
        #: Unusable messages tolerated before the link closes (None: no limit). The owner may
        #: change it as the session's trust changes (tight before authentication).
        self.max_violations = max_violations
        #: Unusable messages (undecodable, unclaimed) received so far.
        self.violations = 0
        self._handlers: dict[str, Handler] = {}
        self._waiters: list[tuple[FramePredicate, asyncio.Future[Frame]]] = []
        self._closed = asyncio.Event()
        self._closing = False
        self._logged = 0
        self._log_throttle = LogThrottle()

    def add_handler(self, name: str, handler: Handler) -> None:
        """Deliver events claimed by ``name`` (a transport name or :data:`APPLICATION`)."""
        self._handlers[name] = handler

    # --- sending ----------------------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        """Send a control frame."""
        await self.channel.send_text(self.engine.send(frame))

    async def send_chunk(self, transfer_id: str, offset: int, payload: bytes | memoryview) -> None:
        """Send the bytes at ``offset`` of an open transfer (header and payload in one message)."""
        await self.channel.send_bytes(self.engine.chunk_header(transfer_id, offset) + payload)

    # --- waiting ----------------------------------------------------------------------

    async def wait_for(self, predicate: FramePredicate, timeout: float | None = None) -> Frame:
        """The next received frame for which ``predicate`` is true.

        Such a frame goes to the waiter instead of its handler. Raises
        :class:`ConnectionClosedError` if the link closes first, ``TimeoutError`` on timeout.
        """
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    # --- the receive loop -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def run(self) -> None:
        """Receive and dispatch until the channel closes. Returns normally on close."""
        try:
            while True:
                try:
                    message = await self.channel.recv()
                except ConnectionClosedError:
                    logger.debug("{}: channel closed", self.name)
                    return
                await self._dispatch(self.engine.receive(message))
        finally:
            self._closed.set()
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(ConnectionClosedError(f"{self.name}: closed while waiting"))
            for handler in self._handlers.values():
                on_closed = getattr(handler, "on_closed", None)
                if on_closed is not None:
                    on_closed()

    def _log_refusal(self, what: str) -> None:
        """Log a refused input: the first few in full, later ones summarised now and then."""
        self._logged += 1
        if self._logged <= LOGGED_VIOLATIONS:
            logger.warning("{}: {}", self.name, what)
            return
        quiet = self._log_throttle.check()
        if quiet is not None:
            logger.warning("{}: {} (and {} more refused inputs not logged)", self.name, what, quiet)

    def _count_violation(self, what: str) -> bool:
        """Note unusable input (undecodable, unclaimed); False once over the budget, which
        closes the link. Refusals by handlers (a missing path...) are ordinary answers and
        are only logged."""
        self.violations += 1
        self._log_refusal(what)
        if self.max_violations is not None and self.violations > self.max_violations:
            if not self.closed and not self._closing:
                self._closing = True
                logger.warning("{}: closing: {} unusable messages from the peer", self.name, self.violations)
                self.close()
            return False
        return True

    async def _dispatch(self, event) -> None:
        if self._closing:
            return  # over the violation budget: nothing more is read into handlers or answered
        if isinstance(event, ProtocolViolation):
            if self._count_violation(f"peer sent unusable input: {describe(event.error)}") and event.reply is not None:
                await self._send_quietly(event.reply)
            return
        if isinstance(event, FrameReceived):
            for predicate, future in self._waiters:
                if not future.done() and predicate(event.frame):
                    future.set_result(event.frame)
                    return
        handler = self._handlers.get(event.handler)
        if handler is None:
            if isinstance(event, FrameReceived) and event.handler == APPLICATION:
                logger.info("{}: peer says: {}", self.name, quote_for_log(event.frame.encode()))
                return
            logger.warning("{}: nothing handles {} in this session", self.name, event.handler)
            return
        try:
            if isinstance(event, ChunkReceived):
                await handler.on_chunk(event)
            else:
                await handler.on_frame(event.frame)
        except RemoteProtocolError as error:
            # A handler refusing the peer's input: tell the peer, keep serving.
            self._log_refusal(f"refused peer input: {describe(error)}")
            await self._send_quietly(reply_to(error))
        except ConnectionClosedError:
            # The handler's own reply found the channel closed; the next recv ends the loop.
            logger.debug("{}: channel closed while handling {}", self.name, type(event).__name__)

    async def _send_quietly(self, frame: Frame) -> None:
        try:
            await self.send(frame)
        except ConnectionClosedError:
            logger.debug("{}: could not reply, channel closed", self.name)

    def close(self) -> None:
        """Close the underlying channel; :meth:`run` returns once the close is seen."""
        self.channel.close()
