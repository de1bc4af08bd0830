"""A small WebSocket signaling server and its client: how a client and a worker find each other.

Peers join a *room* and exchange opaque JSON payloads (SDP offers and answers, ICE candidates)
through the server; after that the WebRTC data channel carries everything and the signaling
connection may be closed.

Protocol
========

JSON text messages, one object per WebSocket text message, at most ``max_message_bytes``
(1 MiB by default) of UTF-8.

Peer -> server::

    {"type": "register", "room": R, "role": "worker"|"client", "peer_id": ID, "token": T,
     "description": {...}}                                      (description: workers only, optional)
    {"type": "describe", "description": {...}}                  (a registered worker, its own)
    {"type": "relay", "to": PEER_ID, "payload": {...any JSON object...}}

Server -> peer::

    {"type": "registered", "room": R, "peer_id": ID,
     "peers": [{"peer_id": P, "role": ROLE, "description": {...}}, ...]}
    {"type": "peer-joined", "peer_id": P, "role": ROLE, "description": {...}}
    {"type": "peer-updated", "peer_id": P, "role": "worker", "description": {...}}
    {"type": "peer-left", "peer_id": P, "role": ROLE}
    {"type": "relay", "from": SENDER_ID, "payload": {...}}
    {"type": "error", "code": CODE, "message": TEXT}          (unknown-peer adds "peer_id")

``room`` and ``peer_id`` match ``[A-Za-z0-9._:@+=-]{1,128}``; ``token`` is a string, or absent
when the room needs none. ``peers`` lists the *other* peers already in the room, in join order.
``from`` is always the peer id the sending socket registered with; whatever the sender wrote
anywhere in its message is ignored. A relay reaches only a peer of the sender's own room.

A worker's ``description`` (what it runs on, its slots and state; see
:mod:`rtcxfer.protocol.worker_description`, at most 4096 bytes) is given in ``register`` and replaced by
``describe``; the server validates it, keeps it with the registration and passes it on: in
``registered`` and ``peer-joined`` (only for peers that have one) and, to every other peer of
the room, as ``peer-updated``. Only the worker itself can set it: a ``client`` that sends one,
or a ``describe`` naming another ``peer_id``, gets ``forbidden``.

Error codes (see :data:`ERROR_CODES`): ``bad-message`` (not JSON, not an object, a missing or
ill-typed field, an unknown type, a binary frame, too large), ``bad-token`` (the socket is then
closed with code 1008), ``duplicate-peer``, ``room-full``, ``already-registered``,
``not-registered``, ``unknown-peer``, ``forbidden``, ``rate-limited`` (after ``max_rate_violations`` of those the
socket is closed with code 1008), ``server-full`` (the socket is then closed with code 1013).
Apart from the ones that close, an error leaves the connection (and its registration, if any)
as it was.

Hostile peers
=============

Every frame a peer sends costs it one token from a per-connection token bucket (``rate_limit``
frames per second, ``rate_burst`` at most). Every reply and relay is queued on the *receiving*
connection and written by that connection's own writer task, so a peer that stops reading never
stalls the peers that send to it; once more than ``max_outbox_bytes`` wait for it, it is dropped.
A text message larger than ``max_message_bytes`` gets ``bad-message``; one larger than twice that
is refused by websockets itself (close code 1009) before it is buffered. A socket that has not
registered within ``register_timeout`` seconds is closed.

Per address (in the spirit of nginx's ``limit_conn``): one remote address may hold at most
``max_connections_per_address`` sockets, of which at most ``max_unregistered_per_address``
not yet registered, and at most ``max_peers_per_address_in_room`` peers in one room; beyond
that a new socket gets ``server-full`` or a registration ``room-full``, so one host cannot
starve everybody else of the server's ``max_connections`` or a room's places. A ``client``
that has relayed nothing within ``idle_timeout`` seconds of registering is closed (code 1008,
"idle"): a client's place in a room is for a handshake, not for squatting. Workers wait for
clients by design and are exempt.

The server speaks ``ws://`` unless given an ``ssl`` context: tokens cross the network in clear
text otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import re
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException

from rtcxfer.log import logger
from rtcxfer.net.rate_limits import TokenBucket
from rtcxfer.protocol.errors import SignalingError, describe
from rtcxfer.protocol.worker_description import DescriptionError, validate_description

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ERROR_CODES",
    "ROLES",
    "SignalingClient",
    "SignalingServer",
    "SignalingServerError",
    "SignalingTimeoutError",
    "connect_directly",
    "run_signaling_server",
]

# asyncio.TimeoutError, not the builtin, throughout: they differ on Python 3.10, which
# setup.cfg still supports.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_PORT = 8765

ROLES = frozenset({"worker", "client"})

BAD_MESSAGE = "bad-message"
BAD_TOKEN = "bad-token"
DUPLICATE_PEER = "duplicate-peer"
ROOM_FULL = "room-full"
ALREADY_REGISTERED = "already-registered"
NOT_REGISTERED = "not-registered"
UNKNOWN_PEER = "unknown-peer"
RATE_LIMITED = "rate-limited"
SERVER_FULL = "server-full"
FORBIDDEN = "forbidden"
ERROR_CODES = frozenset(
    {
        BAD_MESSAGE,
        BAD_TOKEN,
        DUPLICATE_PEER,
        ROOM_FULL,
        ALREADY_REGISTERED,
        NOT_REGISTERED,
        UNKNOWN_PEER,
        RATE_LIMITED,
        SERVER_FULL,
        FORBIDDEN,
    }
)

# Identifiers end up in log lines and in other peers' messages: a narrow alphabet keeps
# newlines, ANSI escapes and lookalike Unicode out of both.
_ID_RE = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
_MAX_TOKEN_CHARS = 1024

# WebSocket close codes (RFC 6455 section 7.4.1).
_CLOSE_NORMAL = 1000
_CLOSE_POLICY = 1008
_CLOSE_TRY_AGAIN_LATER = 1013

# websockets >= 15 routes client connections through any proxy named in the environment;
# signaling goes straight to the given address (tests and demos stay on 127.0.0.1). Older
# websockets never use a proxy and refuse the option.
_DIRECT = {"proxy": None} if "proxy" in inspect.signature(connect.__init__).parameters else {}


def connect_directly(url: str, **options: Any) -> connect:
    """websockets' ``connect`` (await it or use it with ``async with``) to ``url`` itself,
    never through a proxy from the environment, on every websockets rtcxfer supports."""
    return connect(url, **_DIRECT, **options)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; relaying them would break peers with strict parsers.
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _utf8_len_exceeds(text: str, limit: int) -> bool:
    # A character is at most 4 bytes: short texts need no encoding pass to be measured.
    if len(text) * 4 <= limit:
        return False
    return len(text) > limit or len(text.encode("utf-8")) > limit


class SignalingServerError(SignalingError):
    """The signaling server answered with an ``error`` message.

    ``code`` is one of :data:`ERROR_CODES` (or whatever a newer server sends), ``detail`` the
    server's human-readable message, ``peer_id`` the target of a refused relay, if any.
    """

    def __init__(self, code: str, detail: str, peer_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.peer_id = peer_id


# One class on Python 3.11+; on 3.10 asyncio's is not the builtin, and either must catch ours.
_TIMEOUT_ERRORS = (TimeoutError,) if asyncio.TimeoutError is TimeoutError else (TimeoutError, asyncio.TimeoutError)


class SignalingTimeoutError(SignalingError, *_TIMEOUT_ERRORS):
    """Nothing arrived from the signaling server in time (a peer, a message, a reply): both a
    ``TimeoutError`` and an ``asyncio.TimeoutError`` on every Python rtcxfer supports."""


class _Refusal(Exception):
    """Internal: a message is refused; the connection gets an ``error`` reply."""

    def __init__(self, code: str, message: str, *, close: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close
        self.extra = extra


class _Connection:
    """One peer socket on the server: its registration and its outgoing queue."""

    def __init__(self, ws: ServerConnection, serial: int, max_outbox_bytes: int,
                 on_overflow: Callable[[_Connection], None]) -> None:
        self.ws = ws
        self.serial = serial
        self.room: str | None = None
        self.peer_id: str | None = None
        self.role: str | None = None
        #: What a worker said about itself (validated), or None.
        self.description: dict[str, Any] | None = None
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

    def send_error(self, code: str, message: str, **extra: Any) -> None:
        self.send(_dumps({"type": "error", "code": code, "message": message, **extra}))

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


async def _close_bounded(ws: ServerConnection | ClientConnection, code: int, reason: str,
                         timeout: float) -> None:
    """Close ``ws``; if the peer does not read, the close frame never drains, so abort."""
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout)
    except asyncio.TimeoutError:
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()


async def _discard_incoming(ws: ServerConnection) -> None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        return


class SignalingServer:
    """The rendezvous of client and worker: rooms of peers that relay JSON payloads.

    Use as ``async with SignalingServer(...) as server:`` or call :meth:`start` and
    :meth:`stop`. With ``port=0`` the system picks a free port; :attr:`port` and :attr:`url`
    hold the real one once started.

    ``tokens`` maps a room name to the token its peers must present; ``default_token`` is the
    token of every room not in ``tokens``. A room with neither is open to anyone.
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
    ) -> None:
        for room, token in dict(tokens or {}).items():
            if not _is_id(room):
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
        #: Serve the browser client (:mod:`rtcxfer.web`) to plain HTTP GETs on the same port.
        self.web = web
        self._server: Server | None = None
        self._rooms: dict[str, dict[str, _Connection]] = {}
        self._connections: set[_Connection] = set()
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
        return {room: list(peers) for room, peers in self._rooms.items()}

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the signaling server is already started")
        extra: dict[str, Any] = {"ssl": self._ssl} if self._ssl is not None else {}
        if self.web:
            from rtcxfer.web import web_request_handler

            extra["process_request"] = web_request_handler()
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
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.tokens and self.default_token is None:
            logger.warning("signaling server {}: no tokens configured, every room is open",
                           self.url)
        logger.info("signaling server listening on {}", self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
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
        writer = asyncio.create_task(conn.write_loop())
        close_code, close_reason = _CLOSE_NORMAL, ""
        refusal = self._admission_refusal(conn)
        if refusal is not None:
            logger.warning("signaling: refused {}: {}", conn, refusal)
            conn.send_error(SERVER_FULL, f"{refusal}, try again later")
            await self._finish(conn, writer, _CLOSE_TRY_AGAIN_LATER, SERVER_FULL)
            return
        self._connections.add(conn)
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
                self._connections.discard(conn)
                self._leave(conn)
            logger.info("signaling: {} disconnected (code {})", conn, close_code)
            await self._finish(conn, writer, close_code, close_reason)
        finally:
            # Only reached with the writer still running if this handler was cancelled.
            writer.cancel()

    def _admission_refusal(self, conn: _Connection) -> str | None:
        if len(self._connections) >= self.max_connections:
            return f"server full ({len(self._connections)} connections)"
        address = conn.address
        same = [other for other in self._connections if other.address == address]
        if self.max_connections_per_address is not None and len(same) >= self.max_connections_per_address:
            return f"too many connections from {address} ({len(same)})"
        unregistered = sum(other.peer_id is None for other in same)
        if self.max_unregistered_per_address is not None and unregistered >= self.max_unregistered_per_address:
            return f"too many unregistered connections from {address} ({unregistered})"
        return None

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
            await _close_bounded(conn.ws, code, reason, self.close_timeout)
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
                return _CLOSE_TRY_AGAIN_LATER, "too slow"
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
                    return _CLOSE_POLICY, reason
                try:
                    # Cancelling recv() is safe in websockets >= 13: no data is lost.
                    data = await asyncio.wait_for(conn.ws.recv(), remaining)
                except asyncio.TimeoutError:
                    continue
            else:
                data = await conn.ws.recv()
            if conn.dropped:
                return _CLOSE_TRY_AGAIN_LATER, "too slow"
            if bucket is not None and not bucket.take():
                conn.rate_violations += 1
                if conn.rate_violations == 1:
                    logger.warning("signaling: {} is rate limited", conn)
                if conn.rate_violations > self.max_rate_violations:
                    logger.warning("signaling: closed {}: persistent flooding", conn)
                    return _CLOSE_POLICY, RATE_LIMITED
                conn.send_error(RATE_LIMITED, f"more than {self.rate_limit:g} messages/s")
                continue
            try:
                self._dispatch(conn, self._parse(data))
            except _Refusal as refusal:
                self._log_refusal(conn, refusal)
                conn.send_error(refusal.code, refusal.message, **refusal.extra)
                if refusal.close:
                    return _CLOSE_POLICY, refusal.code

    def _log_refusal(self, conn: _Connection, refusal: _Refusal) -> None:
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

    def _parse(self, data: str | bytes) -> dict[str, Any]:
        if not isinstance(data, str):
            raise _Refusal(BAD_MESSAGE, "binary frames are not accepted; send JSON text")
        if _utf8_len_exceeds(data, self.max_message_bytes):
            raise _Refusal(BAD_MESSAGE, f"message larger than {self.max_message_bytes} bytes")
        try:
            message = _loads(data)
        except (ValueError, RecursionError) as exc:
            raise _Refusal(BAD_MESSAGE, f"not valid JSON: {type(exc).__name__}") from None
        if not isinstance(message, dict):
            raise _Refusal(BAD_MESSAGE, "a message must be a JSON object")
        if not isinstance(message.get("type"), str):
            raise _Refusal(BAD_MESSAGE, "a message needs a string 'type'")
        return message

    def _dispatch(self, conn: _Connection, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "register":
            self._register(conn, message)
        elif kind == "describe":
            self._describe(conn, message)
        elif kind == "relay":
            self._relay(conn, message)
        else:
            raise _Refusal(BAD_MESSAGE, f"unknown message type {kind[:64]!r}")

    # -- rooms -------------------------------------------------------------------------------

    def _register(self, conn: _Connection, message: dict[str, Any]) -> None:
        if conn.peer_id is not None:
            raise _Refusal(ALREADY_REGISTERED, "this connection is already registered")
        room, role, peer_id = message.get("room"), message.get("role"), message.get("peer_id")
        token = message.get("token")
        if not _is_id(room):
            raise _Refusal(BAD_MESSAGE,
                           "register needs a 'room' matching [A-Za-z0-9._:@+=-]{1,128}")
        if role not in ROLES:
            raise _Refusal(BAD_MESSAGE, "register needs a 'role': 'worker' or 'client'")
        if not _is_id(peer_id):
            raise _Refusal(BAD_MESSAGE,
                           "register needs a 'peer_id' matching [A-Za-z0-9._:@+=-]{1,128}")
        if token is not None and (not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS):
            raise _Refusal(BAD_MESSAGE, "'token' must be a string")
        description = None
        if "description" in message:
            if role != "worker":
                raise _Refusal(FORBIDDEN, "only a worker describes itself")
            description = _checked_description(message["description"])
        # The token is checked before anything else about the room, so that a peer without it
        # learns nothing (not even which peer ids are taken).
        expected = self.tokens.get(room, self.default_token)
        if expected is not None and not (
            isinstance(token, str) and hmac.compare_digest(token.encode(), expected.encode())
        ):
            raise _Refusal(BAD_TOKEN, f"wrong or missing token for room {room!r}", close=True)
        peers = self._rooms.get(room, {})
        if peer_id in peers:
            hint = "; give each worker its own id (rtcxfer worker --peer-id NAME)" if role == "worker" else ""
            raise _Refusal(DUPLICATE_PEER, f"peer id {peer_id!r} is already in room {room!r}{hint}")
        if len(peers) >= self.max_peers_per_room:
            raise _Refusal(ROOM_FULL, f"room {room!r} has {len(peers)} peers already")
        from_here = sum(other.address == conn.address for other in peers.values())
        if self.max_peers_per_address_in_room is not None and from_here >= self.max_peers_per_address_in_room:
            raise _Refusal(ROOM_FULL, f"room {room!r} has {from_here} peers from your address already")
        # No await between the checks above and here: registration is atomic.
        others = list(peers.values())
        self._rooms.setdefault(room, peers)[peer_id] = conn
        conn.room, conn.role, conn.peer_id = room, role, peer_id
        conn.description = description
        conn.send(_dumps({
            "type": "registered",
            "room": room,
            "peer_id": peer_id,
            "peers": [_peer_entry(p) for p in others],
        }))
        joined = _dumps({"type": "peer-joined", **_peer_entry(conn)})
        for other in others:
            other.send(joined)
        logger.info("signaling: registered {} ({} peers in room)", conn, len(peers))

    def _leave(self, conn: _Connection) -> None:
        if conn.peer_id is None or conn.room is None:
            return
        peers = self._rooms.get(conn.room)
        if peers is None or peers.get(conn.peer_id) is not conn:
            return
        del peers[conn.peer_id]
        if not peers:
            del self._rooms[conn.room]
        left = _dumps({"type": "peer-left", "peer_id": conn.peer_id, "role": conn.role})
        # A copy: a send can drop a lagging peer, which leaves this same room.
        for other in list(peers.values()):
            other.send(left)

    def _describe(self, conn: _Connection, message: dict[str, Any]) -> None:
        if conn.peer_id is None or conn.room is None:
            raise _Refusal(NOT_REGISTERED, "register before describing yourself")
        if conn.role != "worker":
            raise _Refusal(FORBIDDEN, "only a worker describes itself")
        target = message.get("peer_id", conn.peer_id)
        if target != conn.peer_id:
            raise _Refusal(FORBIDDEN, "a worker can change only its own description")
        conn.description = _checked_description(message.get("description"))
        updated = _dumps({"type": "peer-updated", **_peer_entry(conn)})
        for other in list(self._rooms.get(conn.room, {}).values()):
            if other is not conn:
                other.send(updated)

    def _relay(self, conn: _Connection, message: dict[str, Any]) -> None:
        if conn.peer_id is None or conn.room is None:
            raise _Refusal(NOT_REGISTERED, "register before relaying")
        target_id, payload = message.get("to"), message.get("payload")
        if not _is_id(target_id):
            raise _Refusal(BAD_MESSAGE, "relay needs a 'to' peer id")
        if not isinstance(payload, dict):
            raise _Refusal(BAD_MESSAGE, "relay needs a 'payload' JSON object")
        if target_id == conn.peer_id:
            raise _Refusal(BAD_MESSAGE, "a peer cannot relay to itself")
        target = self._rooms.get(conn.room, {}).get(target_id)
        if target is None:
            raise _Refusal(UNKNOWN_PEER, f"no peer {target_id!r} in this room", peer_id=target_id)
        try:
            # "from" is the registration of this socket; the sender's own fields are dropped.
            text = _dumps({"type": "relay", "from": conn.peer_id, "payload": payload})
        except (ValueError, RecursionError):
            raise _Refusal(BAD_MESSAGE, "payload cannot be re-encoded as JSON") from None
        conn.relayed = True
        target.send(text)

    def _drop_lagging(self, conn: _Connection) -> None:
        """``conn`` does not read what is sent to it: close it rather than queue without end."""
        logger.warning("signaling: dropping {}: more than {} bytes wait for it", conn,
                       self.max_outbox_bytes)
        # Out of the room at once: its close may take close_timeout if it reads nothing.
        self._leave(conn)
        # Its handler sits in recv(); closing the socket wakes it up.
        task = asyncio.ensure_future(
            _close_bounded(conn.ws, _CLOSE_TRY_AGAIN_LATER, "too slow", self.close_timeout))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _checked_description(value: object) -> dict[str, Any]:
    try:
        return validate_description(value)
    except DescriptionError as error:
        raise _Refusal(BAD_MESSAGE, f"description refused: {error}") from None


def _peer_entry(conn: _Connection) -> dict[str, Any]:
    entry: dict[str, Any] = {"peer_id": conn.peer_id, "role": conn.role}
    if conn.description is not None:
        entry["description"] = conn.description
    return entry


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


# -- client ----------------------------------------------------------------------------------


class _Closed:
    """Inbox sentinel: the connection to the server has ended."""


_CLOSED = _Closed()


class SignalingClient:
    """One peer's connection to a :class:`SignalingServer`.

    ``async with SignalingClient(url, room, role, peer_id, token) as sig:`` connects and
    registers (``peer_id=None`` picks a random one). Then:

    * :meth:`send_to` relays a JSON object to another peer of the room;
    * :meth:`receive` returns the next event, in arrival order:
      ``{"type": "relay", "from": PEER, "payload": {...}}``,
      ``{"type": "peer-joined", "peer_id": P, "role": R}`` or
      ``{"type": "peer-left", "peer_id": P, "role": R}``. An ``error`` the server sends while
      connected (``unknown-peer`` after a :meth:`send_to`, ``rate-limited``, ...) is raised by
      the :meth:`receive` call that reaches it, as :class:`SignalingServerError`; once the
      connection has ended and all events are read, :meth:`receive` raises
      :class:`SignalingError`;
    * :meth:`wait_for_peer` waits until a peer (of a role) is in the room, independently of
      :meth:`receive`; :attr:`peers` is the current room membership.

    At most ``inbox_size`` events wait for :meth:`receive`; beyond that the client stops
    reading from the server (which will eventually drop it), so a peer that only ever calls
    :meth:`wait_for_peer` should not stay connected forever.
    """

    def __init__(
        self,
        url: str,
        room: str,
        role: str,
        peer_id: str | None = None,
        token: str | None = None,
        *,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        inbox_size: int = 1024,
        description: Mapping[str, Any] | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}, not {role!r}")
        if peer_id is None:
            peer_id = f"{role}-{secrets.token_hex(4)}"
        for name, value in (("room", room), ("peer_id", peer_id)):
            if not _is_id(value):
                raise ValueError(f"{name} must match [A-Za-z0-9._:@+=-]{{1,128}}: {value!r}")
        self.url = url
        self.room = room
        self.role = role
        self.peer_id = peer_id
        self._token = token
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[dict[str, Any] | SignalingServerError | _Closed] = (
            asyncio.Queue(inbox_size)
        )
        self._peers: dict[str, str] = {}
        self._descriptions: dict[str, dict[str, Any]] = {}
        self._description = dict(description) if description is not None else None
        self._peers_changed = asyncio.Event()
        self._closed = False
        self._close_note = ""

    def __repr__(self) -> str:
        return f"<SignalingClient {self.role} {self.peer_id!r} room {self.room!r} {self.url}>"

    @property
    def peers(self) -> dict[str, str]:
        """The other peers in the room now: ``{peer_id: role}``, in join order."""
        return dict(self._peers)

    @property
    def workers(self) -> dict[str, dict[str, Any]]:
        """The workers in the room now and what each said about itself: ``{peer_id: description}``
        (an empty dict for a worker that sent none or an invalid one), in join order."""
        return {peer: dict(self._descriptions.get(peer, {})) for peer, role in self._peers.items() if role == "worker"}

    async def describe(self, description: Mapping[str, Any]) -> None:
        """Replace this worker's description in the room (the server passes it on)."""
        ws = self._require_open()
        self._description = dict(description)
        try:
            await ws.send(_dumps({"type": "describe", "description": self._description}))
        except ConnectionClosed as exc:
            raise SignalingError(f"signaling connection closed: {exc}") from exc

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._closed

    async def __aenter__(self) -> SignalingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and register; :class:`SignalingServerError` if refused."""
        if self._ws is not None or self._closed:
            raise SignalingError(f"{self!r} was already connected once; make a new client")
        try:
            ws = await connect_directly(self.url, open_timeout=self.open_timeout,
                                        close_timeout=self.close_timeout,
                                        max_size=2 * self.max_message_bytes)
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            raise SignalingError(
                f"cannot reach the signaling server at {self.url}: {describe(exc)}") from exc
        register = {"type": "register", "room": self.room, "role": self.role,
                    "peer_id": self.peer_id}
        if self._token is not None:
            register["token"] = self._token
        if self._description is not None:
            register["description"] = self._description
        try:
            await ws.send(_dumps(register))
            raw = await asyncio.wait_for(ws.recv(), self.open_timeout)
        except asyncio.TimeoutError:
            await _close_bounded(ws, _CLOSE_NORMAL, "", self.close_timeout)
            raise SignalingTimeoutError(
                f"the signaling server at {self.url} did not answer the registration") from None
        except ConnectionClosed as exc:
            raise SignalingError(
                f"the signaling server at {self.url} closed during registration: {exc}"
            ) from exc
        reply = _decode_server_message(raw)
        if reply is not None and reply["type"] == "error":
            await _close_bounded(ws, _CLOSE_NORMAL, "", self.close_timeout)
            logger.info("signaling: {} refused: {} {}", self, reply["code"], reply["message"])  # the caller explains it
            raise SignalingServerError(reply["code"], reply["message"], reply.get("peer_id"))
        if reply is None or reply["type"] != "registered" or reply["peer_id"] != self.peer_id:
            await _close_bounded(ws, _CLOSE_NORMAL, "", self.close_timeout)
            raise SignalingError(f"unexpected registration reply from {self.url}: {raw!r:.200}")
        for peer in reply["peers"]:
            self._peers[peer["peer_id"]] = peer["role"]
            self._remember_description(peer)
        self._ws = ws
        self._reader = asyncio.create_task(self._read_loop(ws))
        logger.info("signaling: {} registered; peers {}", self, self._peers)

    async def send_to(self, peer_id: str, payload: Mapping[str, Any]) -> None:
        """Relay ``payload`` (a JSON object) to ``peer_id`` in this room.

        Delivery is not confirmed: an unknown peer comes back later as a
        :class:`SignalingServerError` (``unknown-peer``) from :meth:`receive`.
        """
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a mapping, not {type(payload).__name__}")
        if not _is_id(peer_id):
            raise ValueError(f"not a peer id: {peer_id!r}")
        ws = self._require_open()
        text = _dumps({"type": "relay", "to": peer_id, "payload": dict(payload)})
        if _utf8_len_exceeds(text, self.max_message_bytes):
            raise ValueError(f"message larger than {self.max_message_bytes} bytes")
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise SignalingError(f"signaling connection closed: {exc}") from exc

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next relay or peer event (see the class docstring); raises server errors."""
        if self._ws is None and not self._closed:
            raise SignalingError(f"{self!r} is not connected")
        if self._closed and self._inbox.empty():
            raise self._closed_error()
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except asyncio.TimeoutError:
            raise SignalingTimeoutError(f"no signaling message within {timeout} s") from None
        if isinstance(item, _Closed):
            # Leave the sentinel for the next caller; the reader has stopped, so there is room.
            self._inbox.put_nowait(item)
            raise self._closed_error()
        if isinstance(item, SignalingServerError):
            raise item
        return item

    async def wait_for_peer(self, role: str | None = None, timeout: float | None = 30.0) -> str:
        """The id of a peer of ``role`` (any role if None) in the room, waiting for one to join.

        An existing peer is returned at once (the earliest to join). Raises
        :class:`SignalingTimeoutError` after ``timeout`` seconds, :class:`SignalingError` if the
        connection ends first.
        """
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)} or None, not {role!r}")
        self._require_open()

        async def wait() -> str:
            while True:
                changed = self._peers_changed
                for peer_id, peer_role in self._peers.items():
                    if role is None or peer_role == role:
                        return peer_id
                if self._closed:
                    raise self._closed_error()
                await changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise SignalingTimeoutError(
                f"no {role or 'peer'} joined room {self.room!r} within {timeout} s") from None

    async def close(self) -> None:
        """Leave the room and close the connection (idempotent)."""
        ws, reader = self._ws, self._reader
        if ws is None or (self._closed and reader is None):
            self._closed = True
            return
        self._reader = None
        await _close_bounded(ws, _CLOSE_NORMAL, "", self.close_timeout)
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        self._mark_closed()
        logger.info("signaling: {} closed", self)

    # -- internals ---------------------------------------------------------------------------

    def _require_open(self) -> ClientConnection:
        if self._ws is None:
            raise SignalingError(f"{self!r} is not connected")
        if self._closed:
            raise self._closed_error()
        return self._ws

    def _closed_error(self) -> SignalingError:
        return SignalingError(f"signaling connection closed{self._close_note}")

    def _remember_description(self, peer: Mapping[str, Any]) -> None:
        if peer.get("role") != "worker" or "description" not in peer:
            return
        try:
            self._descriptions[peer["peer_id"]] = validate_description(peer["description"])
        except DescriptionError as error:
            logger.warning("signaling: ignored the description of {!r}: {}", peer["peer_id"], error)

    def _notify_peers(self) -> None:
        changed, self._peers_changed = self._peers_changed, asyncio.Event()
        changed.set()

    def _mark_closed(self, exc: ConnectionClosed | None = None) -> None:
        if not self._closed:
            self._closed = True
            # From the exception: ws.close_code only exists from websockets 14.1 on.
            close = exc.rcvd if exc is not None else None
            if close is not None:
                reason = f", {close.reason}" if close.reason else ""
                self._close_note = f" (code {close.code}{reason})"
        self._notify_peers()

    async def _read_loop(self, ws: ClientConnection) -> None:
        closed: ConnectionClosed | None = None
        try:
            while True:
                raw = await ws.recv()
                message = _decode_server_message(raw)
                if message is None:
                    logger.warning("signaling: {} ignored a malformed server message {!r:.200}",
                                   self, raw)
                    continue
                kind = message["type"]
                if kind == "error":
                    item: dict[str, Any] | SignalingServerError = SignalingServerError(
                        message["code"], message["message"], message.get("peer_id"))
                    logger.warning("signaling: {} got error {}", self, item)
                elif kind == "relay":
                    item = {"type": "relay", "from": message["from"], "payload": message["payload"]}
                elif kind in ("peer-joined", "peer-left", "peer-updated"):
                    if kind == "peer-left":
                        self._peers.pop(message["peer_id"], None)
                        self._descriptions.pop(message["peer_id"], None)
                    elif kind == "peer-joined" or message["peer_id"] in self._peers:
                        self._peers[message["peer_id"]] = message["role"]
                        self._remember_description(message)
                    self._notify_peers()
                    item = {"type": kind, "peer_id": message["peer_id"], "role": message["role"]}
                    if kind != "peer-left" and message["peer_id"] in self._descriptions:
                        item["description"] = dict(self._descriptions[message["peer_id"]])
                else:
                    logger.debug("signaling: {} ignored {!r} message", self, kind)
                    continue
                await self._inbox.put(item)
        except ConnectionClosed as exc:
            closed = exc
        finally:
            self._mark_closed(closed)
            # A full inbox means nobody waits in receive(); it checks _closed once drained.
            if not self._inbox.full():
                self._inbox.put_nowait(_CLOSED)


def _decode_server_message(raw: str | bytes) -> dict[str, Any] | None:
    """A server message checked for the fields this client uses, or None if it is malformed."""
    if not isinstance(raw, str):
        return None
    try:
        message = _loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    if kind == "error":
        if not isinstance(message.get("code"), str):
            return None
        detail = message.get("message")
        message["message"] = detail if isinstance(detail, str) else ""
        if not isinstance(message.get("peer_id"), str):
            message.pop("peer_id", None)
    elif kind == "registered":
        peers = message.get("peers")
        if not (isinstance(message.get("peer_id"), str) and isinstance(peers, list)
                and all(isinstance(p, dict) and _is_id(p.get("peer_id"))
                        and p.get("role") in ROLES for p in peers)):
            return None
    elif kind == "relay":
        if not (_is_id(message.get("from")) and isinstance(message.get("payload"), dict)):
            return None
    elif kind in ("peer-joined", "peer-left", "peer-updated"):
        if not (_is_id(message.get("peer_id")) and message.get("role") in ROLES):
            return None
    elif not isinstance(kind, str):
        return None
    return message
