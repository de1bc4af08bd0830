"""One peer's connection to the signaling server: register in a room, relay payloads, hear
about the room as typed events (:mod:`rtcxfer.net.signaling.messages`), and learn the ICE
servers (STUN, TURN with credentials) the server hands out. ``wss://`` is verified: against the
system's certificate store, or the ``ssl`` context given (:func:`rtcxfer.net.signaling.tls.client_context`
for a private CA).

A peer may be given several signaling URLs (replicas sharing their rooms, ``rtcxfer signal
--redis``): it registers through the first that answers (:func:`split_signal_urls`)."""

from __future__ import annotations

import asyncio
import inspect
import secrets
import ssl as ssl_module
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from rtcxfer.log import logger
from rtcxfer.net.signaling.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DUPLICATE_PEER,
    ROLES,
    SERVER_FULL,
    Describe,
    ErrorReply,
    IceServersUpdate,
    MalformedMessage,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    Register,
    Registered,
    Relay,
    RelayRequest,
    RoomEvent,
    UnknownMessage,
    decode_server_message,
    encode,
    is_id,
    utf8_longer_than,
)
from rtcxfer.net.signaling.sockets import CLOSE_NORMAL, close_bounded
from rtcxfer.protocol.errors import SignalingError, describe
from rtcxfer.protocol.ice import IceServer
from rtcxfer.protocol.worker_description import DescriptionError

__all__ = [
    "SignalingClient",
    "SignalingServerError",
    "SignalingTimeoutError",
    "SignalingTlsError",
    "connect_directly",
    "register_again",
    "split_signal_urls",
]

# asyncio.TimeoutError, not the builtin, throughout: they differ on Python 3.10, which
# setup.cfg still supports.

# websockets >= 15 routes client connections through any proxy named in the environment;
# signaling goes straight to the given address (tests and demos stay on 127.0.0.1). Older
# websockets never use a proxy and refuse the option.
_DIRECT = {"proxy": None} if "proxy" in inspect.signature(connect.__init__).parameters else {}


def connect_directly(url: str, **options: Any) -> connect:
    """websockets' ``connect`` (await it or use it with ``async with``) to ``url`` itself,
    never through a proxy from the environment, on every websockets rtcxfer supports."""
    return connect(url, **_DIRECT, **options)


def split_signal_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """The signaling URLs of ``--signal`` values: each may be a comma-separated list; blanks
    and repeats are left out, the order kept. ValueError if none is left."""
    texts = [urls] if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for text in texts:
        for url in str(text).split(","):
            url = url.strip()
            if url and url not in found:
                found.append(url)
    if not found:
        raise ValueError("no signaling URL given")
    return tuple(found)


class SignalingServerError(SignalingError):
    """The signaling server answered with an ``error`` message.

    ``code`` is one of :data:`~rtcxfer.net.signaling.messages.ERROR_CODES` (or whatever a newer
    server sends), ``detail`` the server's human-readable message, ``peer_id`` the target of a
    refused relay, if any.
    """

    def __init__(self, code: str, detail: str, peer_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.peer_id = peer_id

    @classmethod
    def from_reply(cls, reply: ErrorReply) -> SignalingServerError:
        return cls(reply.code, reply.message, reply.peer_id)


# One class on Python 3.11+; on 3.10 asyncio's is not the builtin, and either must catch ours.
_TIMEOUT_ERRORS = (TimeoutError,) if asyncio.TimeoutError is TimeoutError else (TimeoutError, asyncio.TimeoutError)


class SignalingTlsError(SignalingError):
    """The signaling server's TLS certificate does not verify (``wss://``): not issued by a CA
    this peer trusts, expired, or for another name. ``reason`` is OpenSSL's word for it."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"the TLS certificate of the signaling server at {url} does not verify: {reason}")
        self.url = url
        self.reason = reason


class SignalingTimeoutError(SignalingError, *_TIMEOUT_ERRORS):
    """Nothing arrived from the signaling server in time (a peer, a message, a reply): both a
    ``TimeoutError`` and an ``asyncio.TimeoutError`` on every Python rtcxfer supports."""


class _Closed:
    """Inbox sentinel: the connection to the server has ended."""


_CLOSED = _Closed()


class SignalingClient:
    """One peer's connection to a :class:`~rtcxfer.net.signaling.server.SignalingServer`.

    ``async with SignalingClient(url, room, role, peer_id, token) as sig:`` connects and
    registers (``peer_id=None`` picks a random one). Then:

    * :meth:`send_to` relays a JSON object to another peer of the room;
    * :meth:`receive` returns the next event, in arrival order:
      :class:`~rtcxfer.net.signaling.messages.Relay` (``sender``, ``payload``),
      :class:`~rtcxfer.net.signaling.messages.PeerJoined`,
      :class:`~rtcxfer.net.signaling.messages.PeerUpdated` (``peer_id``, ``role`` and, for a
      worker that gave a valid one, its ``description``) or
      :class:`~rtcxfer.net.signaling.messages.PeerLeft` (``peer_id``, ``role``). An ``error``
      the server sends while connected (``unknown-peer`` after a :meth:`send_to`,
      ``rate-limited``, ...) is raised by the :meth:`receive` call that reaches it, as
      :class:`SignalingServerError`; once the connection has ended and all events are read,
      :meth:`receive` raises :class:`SignalingError`;
    * :meth:`wait_for_peer` waits until a peer (of a role) is in the room, independently of
      :meth:`receive`; :attr:`peers` is the current room membership and :attr:`workers` what
      each worker said about itself;
    * :attr:`ice_servers` are the STUN and TURN servers (with this peer's credentials) the
      server handed out, renewed while connected; empty from a server that has none.

    ``ssl``: an ``ssl.SSLContext`` for a ``wss://`` URL (None: the system's trusted CAs); a
    certificate that does not verify raises :class:`SignalingTlsError` from :meth:`connect`.

    ``url`` may name several servers (a comma-separated list, or a sequence): replicas that share
    their rooms. :meth:`connect` tries them in order and registers through the first that answers
    (one that cannot be reached, or says it is full, is passed over); :attr:`url` is then that one.

    At most ``inbox_size`` events wait for :meth:`receive`; beyond that the client stops
    reading from the server (which will eventually drop it), so a peer that only ever calls
    :meth:`wait_for_peer` should not stay connected forever.
    """

    def __init__(
        self,
        url: str | Sequence[str],
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
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}, not {role!r}")
        if peer_id is None:
            peer_id = f"{role}-{secrets.token_hex(4)}"
        for name, value in (("room", room), ("peer_id", peer_id)):
            if not is_id(value):
                raise ValueError(f"{name} must match [A-Za-z0-9._:@+=-]{{1,128}}: {value!r}")
        #: Every URL this client may register through, in the order tried.
        self.urls = split_signal_urls(url)
        #: The URL it registered through (before :meth:`connect`: the first).
        self.url = self.urls[0]
        self.room = room
        self.role = role
        self.peer_id = peer_id
        self._token = token
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[RoomEvent | SignalingServerError | _Closed] = asyncio.Queue(inbox_size)
        self._peers: dict[str, str] = {}
        self._descriptions: dict[str, dict[str, Any]] = {}
        self._description = dict(description) if description is not None else None
        self._ssl = ssl
        self._ice_servers: tuple[IceServer, ...] = ()
        self._peers_changed = asyncio.Event()
        self._closed = False
        self._close_note = ""
        self._inbox_size = inbox_size

    def successor(self) -> SignalingClient:
        """A new client to register again as this one (room, role, id, token, description, TLS,
        limits), trying its URLs from the one after :attr:`url`: the server that went away."""
        start = (self.urls.index(self.url) + 1) % len(self.urls) if self.url in self.urls else 0
        return SignalingClient(
            self.urls[start:] + self.urls[:start], self.room, self.role, self.peer_id, self._token,
            open_timeout=self.open_timeout, close_timeout=self.close_timeout, max_message_bytes=self.max_message_bytes,
            inbox_size=self._inbox_size, description=self._description, ssl=self._ssl,
        )

    def __repr__(self) -> str:
        return f"<SignalingClient {self.role} {self.peer_id!r} room {self.room!r} {self.url}>"

    @property
    def peers(self) -> dict[str, str]:
        """The other peers in the room now: ``{peer_id: role}``, in join order."""
        return dict(self._peers)

    @property
    def ice_servers(self) -> tuple[IceServer, ...]:
        """The STUN and TURN servers the signaling server handed this peer (TURN with credentials
        made for it), the latest ones; empty before :meth:`connect` or from a server without any."""
        return self._ice_servers

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
            await ws.send(encode(Describe(self._description)))
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
        """Open the connection and register (through the first of :attr:`urls` that answers);
        :class:`SignalingServerError` if refused, :class:`SignalingError` if none answers."""
        if self._ws is not None or self._closed:
            raise SignalingError(f"{self!r} was already connected once; make a new client")
        failures: list[SignalingError] = []
        for url in self.urls:
            try:
                await self._connect_to(url)
                return
            except SignalingTlsError:
                raise
            except SignalingServerError as error:
                # Another replica may have room; any other refusal would be the same everywhere.
                if error.code != SERVER_FULL or url == self.urls[-1]:
                    raise
                failures.append(error)
            except SignalingError as error:
                failures.append(error)
                if len(self.urls) > 1:
                    logger.info("signaling: {} passed over: {}", url, describe(error))
        if len(failures) == 1:
            raise failures[0]
        raise SignalingError(
            f"no signaling server answered ({len(failures)} tried): " + "; ".join(str(f) for f in failures)
        ) from failures[-1]

    async def _connect_to(self, url: str) -> None:
        self.url = url
        # websockets refuses an ssl context for ws://; for wss:// without one it verifies
        # against the system's store.
        tls = {"ssl": self._ssl} if self._ssl is not None and self.url.lower().startswith("wss:") else {}
        try:
            ws = await connect_directly(self.url, open_timeout=self.open_timeout,
                                        close_timeout=self.close_timeout,
                                        max_size=2 * self.max_message_bytes, **tls)
        except ssl_module.SSLCertVerificationError as exc:
            raise SignalingTlsError(self.url, exc.verify_message or exc.reason or str(exc)) from None
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            raise SignalingError(
                f"cannot reach the signaling server at {self.url}: {describe(exc)}") from exc
        register = Register(self.room, self.role, self.peer_id, self._token, self._description)
        try:
            await ws.send(encode(register))
            raw = await asyncio.wait_for(ws.recv(), self.open_timeout)
        except asyncio.TimeoutError:
            await close_bounded(ws, CLOSE_NORMAL, "", self.close_timeout)
            raise SignalingTimeoutError(
                f"the signaling server at {self.url} did not answer the registration") from None
        except ConnectionClosed as exc:
            raise SignalingError(
                f"the signaling server at {self.url} closed during registration: {exc}"
            ) from exc
        try:
            reply = self._decode(raw)
        except MalformedMessage:
            reply = None
        if isinstance(reply, ErrorReply):
            await close_bounded(ws, CLOSE_NORMAL, "", self.close_timeout)
            logger.info("signaling: {} refused: {} {}", self, reply.code, reply.message)  # the caller explains it
            raise SignalingServerError.from_reply(reply)
        if not isinstance(reply, Registered) or reply.peer_id != self.peer_id:
            await close_bounded(ws, CLOSE_NORMAL, "", self.close_timeout)
            # Named, not quoted: a registration reply may hold TURN credentials.
            kind = type(reply).__name__ if reply is not None else "not a message of this protocol"
            raise SignalingError(f"unexpected registration reply from {self.url}: {kind}")
        for peer in reply.peers:
            self._peers[peer.peer_id] = peer.role
            if peer.description is not None:
                self._descriptions[peer.peer_id] = peer.description
        self._ice_servers = reply.ice_servers
        self._ws = ws
        self._reader = asyncio.create_task(self._read_loop(ws))
        logger.info("signaling: {} registered; peers {}; {}", self, self._peers, self._ice_summary())

    async def send_to(self, peer_id: str, payload: Mapping[str, Any]) -> None:
        """Relay ``payload`` (a JSON object) to ``peer_id`` in this room.

        Delivery is not confirmed: an unknown peer comes back later as a
        :class:`SignalingServerError` (``unknown-peer``) from :meth:`receive`.
        """
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a mapping, not {type(payload).__name__}")
        if not is_id(peer_id):
            raise ValueError(f"not a peer id: {peer_id!r}")
        ws = self._require_open()
        text = encode(RelayRequest(peer_id, payload))
        if utf8_longer_than(text, self.max_message_bytes):
            raise ValueError(f"message larger than {self.max_message_bytes} bytes")
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise SignalingError(f"signaling connection closed: {exc}") from exc

    async def receive(self, timeout: float | None = None) -> RoomEvent:
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
        await close_bounded(ws, CLOSE_NORMAL, "", self.close_timeout)
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

    @staticmethod
    def _ignore_description(peer_id: str, error: DescriptionError) -> None:
        logger.warning("signaling: ignored the description of {!r}: {}", peer_id, error)

    @staticmethod
    def _ignore_ice_server(problem: str) -> None:
        logger.warning("signaling: an ICE server from the signaling server cannot be used: {}", problem)

    def _decode(self, raw: str | bytes):
        return decode_server_message(
            raw, on_invalid_description=self._ignore_description, on_invalid_ice_server=self._ignore_ice_server
        )

    def _ice_summary(self) -> str:
        """Which ICE servers this peer was given: URLs only, never a credential."""
        urls = [str(url) for server in self._ice_servers for url in server.urls]
        return f"ICE servers {', '.join(urls)}" if urls else "no ICE servers"

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

    def _follow_room(self, event: PeerJoined | PeerUpdated | PeerLeft) -> RoomEvent:
        """Update :attr:`peers` and :attr:`workers` from ``event``; the event as delivered."""
        peer_id = event.peer_id
        if isinstance(event, PeerLeft):
            self._peers.pop(peer_id, None)
            self._descriptions.pop(peer_id, None)
            self._notify_peers()
            return event
        # An update about a peer this client never saw join changes nothing it knows.
        if isinstance(event, PeerJoined) or peer_id in self._peers:
            self._peers[peer_id] = event.role
            if event.description is not None:
                self._descriptions[peer_id] = event.description
        self._notify_peers()
        # The latest valid description (an update that did not validate keeps the one before).
        known = self._descriptions.get(peer_id)
        return attrs.evolve(event, description=dict(known) if known is not None else None)

    async def _read_loop(self, ws: ClientConnection) -> None:
        closed: ConnectionClosed | None = None
        try:
            while True:
                raw = await ws.recv()
                try:
                    message = self._decode(raw)
                except MalformedMessage as error:
                    # The error names what is wrong; the text itself may hold credentials.
                    logger.warning("signaling: {} ignored a malformed server message ({})", self, error)
                    continue
                if isinstance(message, IceServersUpdate):
                    self._ice_servers = message.ice_servers
                    logger.debug("signaling: {} got fresh ICE servers; {}", self, self._ice_summary())
                    continue
                item: RoomEvent | SignalingServerError
                if isinstance(message, ErrorReply):
                    item = SignalingServerError.from_reply(message)
                    logger.warning("signaling: {} got error {}", self, item)
                elif isinstance(message, Relay):
                    item = message
                elif isinstance(message, (PeerJoined, PeerUpdated, PeerLeft)):
                    item = self._follow_room(message)
                else:
                    kind = message.type if isinstance(message, UnknownMessage) else message.TYPE
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


async def register_again(lost: SignalingClient, within: float = 30.0) -> SignalingClient | None:
    """``lost``'s connection ended (its server, a replica, went away): register again as the same
    peer through its URLs (:meth:`SignalingClient.successor`), retrying for ``within`` seconds
    while no server answers or the room still holds the old registration (``duplicate-peer``,
    until the dead replica's membership expires). The new client, or None if that failed or the
    configuration is refused (a token, a certificate)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.25
    while True:
        successor = lost.successor()
        try:
            await successor.connect()
            logger.info("signaling: {} registered again after its server went away", successor)
            return successor
        except SignalingTlsError:
            return None
        except SignalingServerError as error:
            if error.code not in (DUPLICATE_PEER, SERVER_FULL):
                return None
        except SignalingError as error:
            logger.debug("signaling: {} not registered again yet: {}", lost, describe(error))
        if loop.time() + delay > deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
