"""The signaling server: the rendezvous where clients and workers find each other.

Peers join a *room* and exchange opaque JSON payloads (SDP offers and answers) through the
server; after that the WebRTC data channel carries everything. What goes over the socket is in
:mod:`rtcxfer.net.signaling.messages`; who is in which room, in
:mod:`rtcxfer.net.signaling.rooms`. This module owns the sockets: admission, rate limits,
timers, the token check, and delivery to each peer's own outgoing queue.

Hostile peers
=============

Every frame a peer sends costs it one token from a per-connection token bucket (``rate_limit``
frames per second, ``rate_burst`` at most). Every reply and relay is queued on the *receiving*
connection and written by that connection's own writer task, so a peer that stops reading never
stalls the peers that send to it; once more than ``max_outbox_bytes`` wait for it, it is dropped.
A text message larger than ``max_message_bytes`` gets ``bad-message``; one larger than twice that
is refused by websockets itself (close code 1009) before it is buffered. A socket that has not
registered within ``register_timeout`` seconds is closed.

Per address (see :mod:`~rtcxfer.net.signaling.rooms`): one remote address may hold at most
``max_connections_per_address`` sockets, of which at most ``max_unregistered_per_address``
not yet registered, and at most ``max_peers_per_address_in_room`` peers in one room (of those
that did not prove a room token); beyond
that a new socket gets ``server-full`` or a registration ``room-full``, so one host cannot
starve everybody else of the server's ``max_connections`` or a room's places. A ``client``
that has relayed nothing within ``idle_timeout`` seconds of registering is closed (code 1008,
"idle"): a client's place in a room is for a handshake, not for squatting. Workers wait for
clients by design and are exempt.

The token is checked before anything else about the room, so that a peer without it learns
nothing (not even which peer ids are taken). The server speaks ``ws://`` unless given an
``ssl`` context: tokens cross the network in clear text otherwise.

ICE servers
===========

Given ``ice_servers`` (:class:`~rtcxfer.protocol.ice.IceServerConfig`), the server tells every
peer it admitted (token checked, place in the room taken) which STUN and TURN servers to use, in
its ``registered``, the TURN ones with a credential made for that peer id alone (TURN REST API).
While TURN credentials are handed out, every registered peer gets fresh ones (``ice-servers``)
every half lifetime, so that a worker registered for days always holds valid ones. A credential
never appears in the log.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from websockets import http11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from rtcxfer.log import logger
from rtcxfer.net.rate_limits import TokenBucket
from rtcxfer.net.signaling.messages import (
    ALREADY_REGISTERED,
    BAD_MESSAGE,
    BAD_TOKEN,
    DEFAULT_MAX_MESSAGE_BYTES,
    FORBIDDEN,
    NOT_REGISTERED,
    RATE_LIMITED,
    SERVER_FULL,
    UNKNOWN_PEER,
    Describe,
    ErrorReply,
    IceServersUpdate,
    MalformedMessage,
    Message,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    Refusal,
    Register,
    Registered,
    Relay,
    RelayRequest,
    Request,
    decode_request,
    encode,
    is_id,
)
from rtcxfer.net.signaling.rooms import InMemoryRooms, Member, RoomChange, RoomLimits, Rooms
from rtcxfer.net.signaling.sockets import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER, close_bounded
from rtcxfer.protocol.errors import IceServerError
from rtcxfer.protocol.ice import IceServer, IceServerConfig

__all__ = ["DEFAULT_PORT", "SignalingServer", "run_signaling_server"]

# asyncio.TimeoutError, not the builtin, throughout: they differ on Python 3.10, which
# setup.cfg still supports.
DEFAULT_PORT = 8765


class _Connection:
    """One peer socket on the server: its registration and its outgoing queue."""

    def __init__(self, ws: ServerConnection, serial: int, max_outbox_bytes: int,
                 on_overflow: Callable[[_Connection], None]) -> None:
        self.ws = ws
        self.serial = serial
        #: Names this socket in the book of rooms.
        self.key = str(serial)
        self.room: str | None = None
        self.peer_id: str | None = None
        self.role: str | None = None
        #: Whether this peer has relayed anything since it registered.
        self.relayed = False
        self.rate_violations = 0
        self.logged_bad_messages = 0
        self.dropped = False
        self._max_outbox_bytes = max_outbox_bytes
        self._on_overflow = on_overflow
        self._outbox: deque[str] = deque()
        self._outbox_bytes = 0
        self._wakeup = asyncio.Event()
        self._finishing = False

    @property
    def address(self) -> str:
        """The remote host (no port): the unit of the per-address limits."""
        try:
            return str(self.ws.remote_address[0])
        except (TypeError, IndexError):
            return "?"

    def __str__(self) -> str:
        try:
            remote = "{}:{}".format(*self.ws.remote_address[:2])
        except (TypeError, IndexError):
            remote = "?"
        if self.peer_id is None:
            return f"conn#{self.serial} ({remote})"
        return f"conn#{self.serial} ({remote}, room {self.room!r}, {self.role} {self.peer_id!r})"

    def send(self, text: str) -> bool:
        """Queue ``text`` for this peer; False if it is closing or lags too far behind."""
        if self.dropped or self._finishing:
            return False
        # Characters, not bytes: good enough for a memory cap, and free.
        if self._outbox_bytes + len(text) > self._max_outbox_bytes:
            self.dropped = True
            self._on_overflow(self)
            return False
        self._outbox.append(text)
        self._outbox_bytes += len(text)
        self._wakeup.set()
        return True

    def send_message(self, message: Message) -> bool:
        return self.send(encode(message))

    def finish(self) -> None:
        """Let the writer send what is queued, then return."""
        self._finishing = True
        self._wakeup.set()

    async def write_loop(self) -> None:
        try:
            while True:
                self._wakeup.clear()
                while self._outbox:
                    text = self._outbox.popleft()
                    self._outbox_bytes -= len(text)
                    await self.ws.send(text)
                if self._finishing:
                    return
                await self._wakeup.wait()
        except ConnectionClosed:
            # The reader side notices the same closure and cleans up.
            return


async def _discard_incoming(ws: ServerConnection) -> None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        return


def _origin_key(origin: str) -> str:
    """``scheme://host[:port]`` of an origin, lower case, default ports left out."""
    parts = urlsplit(origin.strip())
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    shown_port = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme.lower()}://{host}{shown_port}"


def cross_origin_refusal(request: http11.Request, allowed: frozenset[str] = frozenset()) -> http11.Response | None:
    """The 403 that refuses a WebSocket opened by a page of another site, or ``None``.

    A browser sends ``Origin`` with every WebSocket handshake, and lets any page open one to any
    address: without this check a page on another site (in a user's browser on the lab's
    network) could register in a room, or hold the server's places. Programs send no
    ``Origin`` (rtcxfer's own peers, aiortc) and are not affected; the page this server serves
    has its own origin, which names the host the browser asked for (``Host``)."""
    origin = request.headers.get("Origin")
    if origin is None or "websocket" not in request.headers.get("Upgrade", "").lower():
        return None
    key = _origin_key(origin)
    host = request.headers.get("Host", "").strip().lower()
    if key in allowed or any(key == _origin_key(f"{scheme}://{host}") for scheme in ("http", "https")):
        return None
    body = b"a page of another site may not open a signaling socket here\n"
    headers = Headers({"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))})
    return http11.Response(403, "Forbidden", headers, body)


class SignalingServer:
    """The rendezvous of client and worker: rooms of peers that relay JSON payloads.

    Use as ``async with SignalingServer(...) as server:`` or call :meth:`start` and
    :meth:`stop`. With ``port=0`` the system picks a free port; :attr:`port` and :attr:`url`
    hold the real one once started.

    ``tokens`` maps a room name to the token its peers must present; ``default_token`` is the
    token of every room not in ``tokens``. A room with neither is open to anyone.

    ``ice_servers`` are the STUN and TURN servers handed to every admitted peer (see the module's
    docstring); ``ssl`` an ``ssl.SSLContext`` with the server's certificate, for ``wss://``.

    ``redis_url`` (``redis://HOST:PORT/DB``): keep the rooms in that Redis, shared with every
    server given the same one (:mod:`~rtcxfer.net.signaling.redis_rooms`; ``membership_ttl``
    seconds for the members of a replica that died to disappear, ``rejoin_grace`` more before
    their rooms are told they left); :meth:`start` raises
    :class:`~rtcxfer.protocol.errors.SharedRoomsError` if it cannot be used. Without it the rooms
    live in this process (:class:`~rtcxfer.net.signaling.rooms.InMemoryRooms`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Mapping[str, str] | None = None,
        *,
        default_token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_peers_per_room: int = 16,
        max_connections: int = 512,
        rate_limit: float | None = 50.0,
        rate_burst: int = 200,
        max_rate_violations: int = 50,
        max_outbox_bytes: int = 8 * DEFAULT_MAX_MESSAGE_BYTES,
        register_timeout: float | None = 10.0,
        close_timeout: float = 2.0,
        ssl: Any = None,
        max_connections_per_address: int | None = 64,
        max_unregistered_per_address: int | None = 8,
        max_peers_per_address_in_room: int | None = 8,
        idle_timeout: float | None = 120.0,
        web: bool = False,
        ice_servers: IceServerConfig | None = None,
        allowed_origins: Iterable[str] = (),
        redis_url: str | None = None,
        membership_ttl: float | None = None,
        rejoin_grace: float | None = None,
    ) -> None:
        for room, token in dict(tokens or {}).items():
            if not is_id(room):
                raise ValueError(f"invalid room name in tokens: {room!r}")
            if not isinstance(token, str) or not token:
                raise ValueError(f"the token of room {room!r} must be a non-empty string")
        if default_token is not None and (not isinstance(default_token, str) or not default_token):
            raise ValueError("default_token must be a non-empty string or None")
        if max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if max_outbox_bytes < 2 * max_message_bytes:
            raise ValueError("max_outbox_bytes must hold at least two messages")
        if rate_limit is not None and (rate_limit <= 0 or rate_burst < 1):
            raise ValueError("rate_limit must be positive and rate_burst at least 1")
        if ice_servers is not None:
            ice_servers.check(time.time())  # IceServerError now, not at the first registration
        self.host = host
        self.port = port
        self.tokens: dict[str, str] = dict(tokens or {})
        self.default_token = default_token
        self.max_message_bytes = max_message_bytes
        self.max_peers_per_room = max_peers_per_room
        self.max_connections = max_connections
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.max_rate_violations = max_rate_violations
        self.max_outbox_bytes = max_outbox_bytes
        self.register_timeout = register_timeout
        self.close_timeout = close_timeout
        self.max_connections_per_address = max_connections_per_address
        self.max_unregistered_per_address = max_unregistered_per_address
        self.max_peers_per_address_in_room = max_peers_per_address_in_room
        self.idle_timeout = idle_timeout
        self._ssl = ssl
        self._ice_servers = ice_servers if ice_servers is not None and not ice_servers.empty else None
        #: Serve the browser client (:mod:`rtcxfer.web`) to plain HTTP GETs on the same port.
        self.web = web
        #: Web origins (``scheme://host[:port]``) whose pages may open a signaling socket besides
        #: this server's own (see :func:`cross_origin_refusal`).
        self.allowed_origins = frozenset(_origin_key(origin) for origin in allowed_origins)
        self._server: Server | None = None
        room_limits = RoomLimits(
            max_peers_per_room=max_peers_per_room,
            max_connections_per_address=max_connections_per_address,
            max_unregistered_per_address=max_unregistered_per_address,
            max_peers_per_address_in_room=max_peers_per_address_in_room,
        )
        self._rooms: Rooms
        if redis_url is None:
            self._rooms = InMemoryRooms(room_limits)
        else:
            # Imported here: the redis library is needed only by servers that share rooms.
            from rtcxfer.net.signaling.redis_rooms import DEFAULT_MEMBERSHIP_TTL, DEFAULT_REJOIN_GRACE, RedisRooms

            self._rooms = RedisRooms(
                redis_url, room_limits,
                membership_ttl=membership_ttl if membership_ttl is not None else DEFAULT_MEMBERSHIP_TTL,
                rejoin_grace=rejoin_grace if rejoin_grace is not None else DEFAULT_REJOIN_GRACE,
            )
        #: The open sockets, by their key in the book of rooms.
        self._connections: dict[str, _Connection] = {}
        self._serial = 0
        # Strong references: the event loop keeps only weak ones to tasks.
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` (``wss://`` with an ssl context) of the running server."""
        if self._server is None:
            raise RuntimeError("the signaling server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://{host}:{self.port}"

    @property
    def web_url(self) -> str | None:
        """``http://HOST:PORT/`` of the browser client, or None when it is not served."""
        if not self.web:
            return None
        return "http" + self.url[2:] + "/"

    @property
    def rooms(self) -> dict[str, list[str]]:
        """A snapshot: each room's peer ids, in join order (for status displays and tests)."""
        return self._rooms.snapshot()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the signaling server is already started")
        extra: dict[str, Any] = {"ssl": self._ssl} if self._ssl is not None else {}
        web_handler = None
        if self.web:
            from rtcxfer.web import web_request_handler

            web_handler = web_request_handler()

        def process_request(connection: ServerConnection, request: http11.Request) -> http11.Response | None:
            refusal = cross_origin_refusal(request, self.allowed_origins)
            if refusal is not None:
                logger.warning("signaling: refused a WebSocket from the page of another site ({!r:.100})",
                               request.headers.get("Origin"))
                return refusal
            return web_handler(connection, request) if web_handler is not None else None

        extra["process_request"] = process_request
        await self._rooms.open(self._deliver, self._drop_everyone)
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                # Frames up to twice the application limit are read and answered with
                # bad-message; beyond that websockets closes (1009) without buffering them.
                max_size=2 * self.max_message_bytes,
                max_queue=4,
                # Signaling payloads are small; per-connection zlib state would cost more than
                # it saves and invites decompression-bomb games.
                compression=None,
                close_timeout=self.close_timeout,
                **extra,
            )
        except BaseException:
            await self._rooms.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.tokens and self.default_token is None:
            logger.warning("signaling server {}: no tokens configured, every room is open",
                           self.url)
        logger.info("signaling server listening on {}", self.url)
        ice = self._ice_servers
        if ice is not None:
            logger.info("signaling server hands out {} STUN and {} TURN URL(s){}", len(ice.stun), len(ice.turn),
                        f", credentials valid {ice.turn_ttl} s" if ice.turn else "")
            if ice.expires:
                self._in_background(self._renew_ice_servers(ice))

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self._rooms.shutting_down()
        server.close()
        await server.wait_closed()
        await self._rooms.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        logger.info("signaling server on port {} stopped", self.port)

    async def __aenter__(self) -> SignalingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- per connection ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self._serial += 1
        conn = _Connection(ws, self._serial, self.max_outbox_bytes, self._drop_lagging)
        conn.key = self._rooms.connection_key(self._serial)
        writer = asyncio.create_task(conn.write_loop())
        close_code, close_reason = CLOSE_NORMAL, ""
        try:
            await self._admit(conn)
        except Refusal as refusal:
            logger.warning("signaling: refused {}: {}", conn, refusal.message)
            conn.send_message(refusal.reply)
            await self._finish(conn, writer, CLOSE_TRY_AGAIN_LATER, SERVER_FULL)
            return
        self._connections[conn.key] = conn
        logger.debug("signaling: {} connected", conn)
        try:
            try:
                close_code, close_reason = await self._read_loop(conn)
            except ConnectionClosed as exc:
                close_code, close_reason = exc.rcvd.code if exc.rcvd else 1006, "peer closed"
            except Exception:  # noqa: BLE001
                # A bug here must cost one connection, never the server or the room:
                # websockets would log it and close, but the room must still be left below.
                logger.exception("signaling: handler failed for {}", conn)
                close_code, close_reason = 1011, "internal error"
            finally:
                del self._connections[conn.key]
                self._tell_left(await self._rooms.disconnect(conn.key))
            logger.info("signaling: {} disconnected (code {})", conn, close_code)
            await self._finish(conn, writer, close_code, close_reason)
        finally:
            # Only reached with the writer still running if this handler was cancelled.
            writer.cancel()

    async def _admit(self, conn: _Connection) -> None:
        # The server's own capacity is this process's; the per-address counts are the book's.
        if len(self._connections) >= self.max_connections:
            raise Refusal(SERVER_FULL, f"server full ({len(self._connections)} connections), try again later",
                          close=True)
        await self._rooms.connect(conn.key, conn.address)

    async def _finish(self, conn: _Connection, writer: asyncio.Task[None], code: int,
                      reason: str) -> None:
        conn.finish()
        try:
            # Flush the last replies (a bad-token error) before the close frame.
            await asyncio.wait_for(writer, self.close_timeout)
        except asyncio.TimeoutError:
            logger.debug("signaling: {} did not read its last messages", conn)
        # The peer's close frame may sit behind frames nobody reads any more (a flooder's):
        # keep reading and discarding, or websockets' flow control never lets it through.
        discard = asyncio.create_task(_discard_incoming(conn.ws))
        try:
            await close_bounded(conn.ws, code, reason, self.close_timeout)
        finally:
            discard.cancel()
            await asyncio.gather(discard, return_exceptions=True)

    async def _read_loop(self, conn: _Connection) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self.rate_limit, self.rate_burst) if self.rate_limit else None
        deadline = None if self.register_timeout is None else loop.time() + self.register_timeout
        idle_deadline: float | None = None
        while True:
            if conn.dropped:
                return CLOSE_TRY_AGAIN_LATER, "too slow"
            timer: tuple[float, str, str] | None = None
            if conn.role == "client" and not conn.relayed and self.idle_timeout is not None:
                if idle_deadline is None:
                    idle_deadline = loop.time() + self.idle_timeout
                timer = (idle_deadline, "idle", f"nothing relayed within {self.idle_timeout} s of registering")
            elif conn.peer_id is None and deadline is not None:
                timer = (deadline, "register timeout", f"no registration within {self.register_timeout} s")
            if timer is not None:
                when, reason, why = timer
                remaining = when - loop.time()
                if remaining <= 0:
                    logger.warning("signaling: closed {}: {}", conn, why)
                    return CLOSE_POLICY, reason
                try:
                    # Cancelling recv() is safe in websockets >= 13: no data is lost.
                    data = await asyncio.wait_for(conn.ws.recv(), remaining)
                except asyncio.TimeoutError:
                    continue
            else:
                data = await conn.ws.recv()
            if conn.dropped:
                return CLOSE_TRY_AGAIN_LATER, "too slow"
            if bucket is not None and not bucket.take():
                conn.rate_violations += 1
                if conn.rate_violations == 1:
                    logger.warning("signaling: {} is rate limited", conn)
                if conn.rate_violations > self.max_rate_violations:
                    logger.warning("signaling: closed {}: persistent flooding", conn)
                    return CLOSE_POLICY, RATE_LIMITED
                conn.send_message(ErrorReply(RATE_LIMITED, f"more than {self.rate_limit:g} messages/s"))
                continue
            try:
                try:
                    request = decode_request(data, self.max_message_bytes)
                except MalformedMessage as error:
                    raise Refusal(BAD_MESSAGE, str(error)) from None
                await self._dispatch(conn, request)
            except Refusal as refusal:
                self._log_refusal(conn, refusal)
                conn.send_message(refusal.reply)
                if refusal.close:
                    return CLOSE_POLICY, refusal.code

    def _log_refusal(self, conn: _Connection, refusal: Refusal) -> None:
        if refusal.code != BAD_MESSAGE:
            logger.warning("signaling: refused {} from {}: {}", refusal.code, conn,
                           refusal.message)
            return
        # Garbage is bounded by the rate limit but could still drown the log.
        conn.logged_bad_messages += 1
        if conn.logged_bad_messages <= 5:
            logger.warning("signaling: bad message from {}: {}", conn, refusal.message)
        elif conn.logged_bad_messages == 6:
            logger.warning("signaling: further bad messages from {} are not logged", conn)

    async def _dispatch(self, conn: _Connection, request: Request) -> None:
        if isinstance(request, Register):
            await self._register(conn, request)
        elif isinstance(request, Describe):
            await self._describe(conn, request)
        else:
            await self._relay(conn, request)

    # -- rooms -------------------------------------------------------------------------------

    def _send_to(self, member: Member, message: Message) -> None:
        """Queue ``message`` for ``member``, on whichever server (replica) holds its socket."""
        self._rooms.send(member, encode(message))

    def _deliver(self, connection: str, text: str) -> None:
        """A text for a socket of this server (from this server or, through the book, another)."""
        conn = self._connections.get(connection)
        if conn is not None:
            conn.send(text)

    def _drop_everyone(self) -> None:
        """The book forgot this server's sockets (its shared store restarted): close them all, so
        that their peers register again."""
        for conn in list(self._connections.values()):
            self._in_background(close_bounded(conn.ws, CLOSE_TRY_AGAIN_LATER, "signaling state lost",
                                              self.close_timeout))

    async def _register(self, conn: _Connection, request: Register) -> None:
        if conn.peer_id is not None:
            raise Refusal(ALREADY_REGISTERED, "this connection is already registered")
        room, role, peer_id = request.room, request.role, request.peer_id
        if request.description is not None and role != "worker":
            raise Refusal(FORBIDDEN, "only a worker describes itself")
        expected = self.tokens.get(room, self.default_token)
        token = request.token
        if expected is not None and not (
            token is not None and hmac.compare_digest(token.encode(), expected.encode())
        ):
            raise Refusal(BAD_TOKEN, f"wrong or missing token for room {room!r}", close=True)
        change = await self._rooms.register(
            conn.key, room, peer_id, role, request.description, proved_token=expected is not None
        )
        conn.room, conn.role, conn.peer_id = room, role, peer_id
        # Admitted (token checked, place taken): only now does the peer learn the ICE servers.
        others = tuple(other.entry() for other in change.others)
        conn.send_message(Registered(room, peer_id, others, self._ice_servers_for(peer_id)))
        member = change.member
        joined = PeerJoined(member.peer_id, member.role, member.description)
        for other in change.others:
            self._send_to(other, joined)
        logger.info("signaling: registered {} ({} peers in room)", conn, len(change.others) + 1)

    def _ice_servers_for(self, peer_id: str) -> tuple[IceServer, ...]:
        if self._ice_servers is None:
            return ()
        try:
            return self._ice_servers.servers_for(peer_id, time.time())
        except IceServerError as error:
            logger.error("signaling: no ICE servers for {!r}: {}", peer_id, error)
            return ()

    async def _renew_ice_servers(self, ice: IceServerConfig) -> None:
        """Every half lifetime, fresh credentials for every registered peer: each then holds
        credentials with at least half their lifetime left."""
        while True:
            await asyncio.sleep(ice.turn_ttl / 2)
            renewed = 0
            for conn in list(self._connections.values()):
                if conn.peer_id is None:
                    continue
                if conn.send_message(IceServersUpdate(self._ice_servers_for(conn.peer_id))):
                    renewed += 1
            logger.debug("signaling: renewed the TURN credentials of {} peer(s)", renewed)

    def _tell_left(self, change: RoomChange | None) -> None:
        if change is None:
            return
        left = PeerLeft(change.member.peer_id, change.member.role)
        # The book's copy: a send can drop a lagging peer, which leaves this same room.
        for other in change.others:
            self._send_to(other, left)

    async def _describe(self, conn: _Connection, request: Describe) -> None:
        if conn.peer_id is None or conn.room is None:
            raise Refusal(NOT_REGISTERED, "register before describing yourself")
        if conn.role != "worker":
            raise Refusal(FORBIDDEN, "only a worker describes itself")
        if request.peer_id is not None and request.peer_id != conn.peer_id:
            raise Refusal(FORBIDDEN, "a worker can change only its own description")
        change = await self._rooms.describe(conn.key, request.description)
        if change is None:
            return  # dropped for lagging a moment ago: nobody is to hear of it any more
        updated = PeerUpdated(change.member.peer_id, change.member.role, change.member.description)
        for other in change.others:
            self._send_to(other, updated)

    async def _relay(self, conn: _Connection, request: RelayRequest) -> None:
        if conn.peer_id is None or conn.room is None:
            raise Refusal(NOT_REGISTERED, "register before relaying")
        if request.to == conn.peer_id:
            raise Refusal(BAD_MESSAGE, "a peer cannot relay to itself")
        target = await self._rooms.find(conn.room, request.to)
        if target is None:
            raise Refusal(UNKNOWN_PEER, f"no peer {request.to!r} in this room", peer_id=request.to)
        try:
            # "from" is the registration of this socket; the sender's own fields are dropped.
            text = encode(Relay(conn.peer_id, request.payload))
        except (ValueError, RecursionError):
            raise Refusal(BAD_MESSAGE, "payload cannot be re-encoded as JSON") from None
        conn.relayed = True
        self._rooms.send(target, text)

    def _drop_lagging(self, conn: _Connection) -> None:
        """``conn`` does not read what is sent to it: close it rather than queue without end."""
        logger.warning("signaling: dropping {}: more than {} bytes wait for it", conn,
                       self.max_outbox_bytes)
        # Out of the room first (its close may take close_timeout if it reads nothing), then
        # its handler, which sits in recv(), is woken up by closing the socket.
        self._in_background(self._leave_and_close(conn))

    async def _leave_and_close(self, conn: _Connection) -> None:
        self._tell_left(await self._rooms.leave(conn.key))
        await close_bounded(conn.ws, CLOSE_TRY_AGAIN_LATER, "too slow", self.close_timeout)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def run_signaling_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tokens: Mapping[str, str] | None = None,
    *,
    default_token: str | None = None,
    on_ready: Callable[[SignalingServer], object] | None = None,
    **options: Any,
) -> None:
    """Serve signaling on ``host:port`` until cancelled (Ctrl-C under ``asyncio.run``).

    ``on_ready`` is called once the server listens, with the server (its ``url`` holds the
    real port when ``port=0``). ``options`` are the keyword options of :class:`SignalingServer`.
    """
    async with SignalingServer(host, port, tokens, default_token=default_token,
                               **options) as server:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Event().wait()
