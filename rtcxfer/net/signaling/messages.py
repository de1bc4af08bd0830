"""The signaling wire protocol, sans-IO: every message a peer or the server sends, as a typed object.

JSON text messages, one object per WebSocket text message, at most ``max_message_bytes``
(1 MiB by default, :data:`DEFAULT_MAX_MESSAGE_BYTES`) of UTF-8.

Peer -> server (a :data:`Request`)::

    {"type": "register", "room": R, "role": "worker"|"client", "peer_id": ID, "token": T,
     "description": {...}}                                      (description: workers only, optional)
    {"type": "describe", "description": {...}}                  (a registered worker, its own)
    {"type": "relay", "to": PEER_ID, "payload": {...any JSON object...}}

Server -> peer (a :data:`ServerMessage`)::

    {"type": "registered", "room": R, "peer_id": ID,
     "peers": [{"peer_id": P, "role": ROLE, "description": {...}}, ...],
     "ice_servers": [{"urls": [URL, ...], "username": U, "credential": C}, ...]}   (optional)
    {"type": "ice-servers", "ice_servers": [...]}             (fresh TURN credentials)
    {"type": "peer-joined", "peer_id": P, "role": ROLE, "description": {...}}
    {"type": "peer-updated", "peer_id": P, "role": "worker", "description": {...}}
    {"type": "peer-left", "peer_id": P, "role": ROLE}
    {"type": "relay", "from": SENDER_ID, "payload": {...}}
    {"type": "error", "code": CODE, "message": TEXT}          (unknown-peer adds "peer_id")

``room`` and ``peer_id`` match ``[A-Za-z0-9._:@+=-]{1,128}`` (:func:`is_id`); ``token`` is a
string, or absent when the room needs none. ``peers`` lists the *other* peers already in the
room, in join order. ``from`` is always the peer id the sending socket registered with; whatever
the sender wrote anywhere in its message is ignored. A relay reaches only a peer of the sender's
own room. The relay ``payload`` is opaque here (rtcxfer's own payloads, the WebRTC handshake,
are in :mod:`rtcxfer.net.signaling.handshake`).

A worker's ``description`` (what it runs on, its slots and state; see
:mod:`rtcxfer.protocol.worker_description`, at most 4096 bytes) is given in ``register`` and
replaced by ``describe``; the server validates it, keeps it with the registration and passes it
on: in ``registered`` and ``peer-joined`` (only for peers that have one) and, to every other
peer of the room, as ``peer-updated``. Only the worker itself can set it: a ``client`` that
sends one, or a ``describe`` naming another ``peer_id``, gets ``forbidden``.

``ice_servers`` (only from a server that has STUN or TURN servers to hand out, and only to a
peer it admitted) are WebRTC's RTCIceServer dictionaries (:mod:`rtcxfer.protocol.ice`): the
STUN URLs, then the TURN URLs with a credential made for this peer (TURN REST API, username
``EXPIRY:PEER_ID``). Where TURN credentials expire, the server sends every registered peer
fresh ones (``ice-servers``) well before they do. A peer drops what it cannot use (and says
so); an older peer ignores both.

Error codes (see :data:`ERROR_CODES`): ``bad-message`` (not JSON, not an object, a missing or
ill-typed field, an unknown type, a binary frame, too large), ``bad-token`` (the socket is then
closed with code 1008), ``duplicate-peer``, ``room-full``, ``already-registered``,
``not-registered``, ``unknown-peer``, ``forbidden``, ``rate-limited`` (after
``max_rate_violations`` of those the socket is closed with code 1008), ``server-full`` (the
socket is then closed with code 1013). Apart from the ones that close, an error leaves the
connection (and its registration, if any) as it was.

This module does no I/O (an import-linter contract keeps asyncio and websockets out of it).
:func:`decode_request` turns what a peer sends into a typed request for the server,
:func:`decode_server_message` what the server sends into a typed message for a peer, and
:func:`encode` any message into the exact JSON text on the wire. Both decoders raise
:class:`MalformedMessage` for whatever is not a message of this protocol, and nothing else.
The shape of a message is checked here; what depends on the server's state (registered yet?
the right token? room for one more?) is the server's, and it answers with :class:`Refusal`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from rtcxfer.protocol.errors import RemoteProtocolError, SignalingError
from rtcxfer.protocol.ice import IceServer, IceServerProblem, decode_ice_servers
from rtcxfer.protocol.worker_description import DescriptionError, validate_description

__all__ = [
    "ALREADY_REGISTERED",
    "BAD_MESSAGE",
    "BAD_TOKEN",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DUPLICATE_PEER",
    "ERROR_CODES",
    "FORBIDDEN",
    "NOT_REGISTERED",
    "RATE_LIMITED",
    "ROLES",
    "ROOM_FULL",
    "SERVER_FULL",
    "UNKNOWN_PEER",
    "Describe",
    "ErrorReply",
    "IceServersUpdate",
    "MalformedMessage",
    "PeerEntry",
    "PeerJoined",
    "PeerLeft",
    "PeerUpdated",
    "Refusal",
    "Register",
    "Registered",
    "Relay",
    "RelayRequest",
    "Request",
    "RoomEvent",
    "ServerMessage",
    "UnknownMessage",
    "decode_request",
    "decode_server_message",
    "encode",
    "is_id",
    "is_role",
    "utf8_longer_than",
]

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

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
ID_PATTERN = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
MAX_TOKEN_CHARS = 1024


def is_id(value: object) -> bool:
    """Whether ``value`` is a room name or peer id: ``[A-Za-z0-9._:@+=-]{1,128}``."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def is_role(value: object) -> bool:
    """Whether ``value`` is ``"worker"`` or ``"client"`` (a JSON list is unhashable: no ``in``)."""
    return isinstance(value, str) and value in ROLES


def utf8_longer_than(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes of UTF-8."""
    # A character is at most 4 bytes: short texts need no encoding pass to be measured.
    if len(text) * 4 <= limit:
        return False
    # surrogatepass: a lone surrogate (which no WebSocket delivers) is measured, not an error.
    return len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit


# -- errors -------------------------------------------------------------------------------------


class MalformedMessage(RemoteProtocolError):
    """A text that is no message of this protocol (the message says what is wrong, and never
    echoes more than a short, quoted piece of it). The server answers it with ``bad-message``."""


class Refusal(SignalingError):
    """The server refuses what a peer sent: :attr:`reply` is the ``error`` message that says
    why, and ``close`` whether the server then closes the socket (``bad-token``)."""

    def __init__(self, code: str, message: str, *, peer_id: str | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.peer_id = peer_id
        self.close = close

    @property
    def reply(self) -> ErrorReply:
        return ErrorReply(self.code, self.message, self.peer_id)


# -- peer -> server -----------------------------------------------------------------------------


@attrs.frozen
class Register:
    """Join ``room`` as ``role`` (``"worker"`` or ``"client"``) under ``peer_id``."""

    TYPE: ClassVar[str] = "register"
    room: str
    role: str
    peer_id: str
    token: str | None = None
    #: A worker's description of itself (checked by :func:`decode_request`).
    description: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": self.TYPE, "room": self.room, "role": self.role, "peer_id": self.peer_id}
        if self.token is not None:
            message["token"] = self.token
        if self.description is not None:
            message["description"] = self.description
        return message


@attrs.frozen
class Describe:
    """A registered worker replaces its description; ``peer_id``, if given, must be its own."""

    TYPE: ClassVar[str] = "describe"
    description: dict[str, Any]
    peer_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": self.TYPE, "description": self.description}
        if self.peer_id is not None:
            message["peer_id"] = self.peer_id
        return message


@attrs.frozen
class RelayRequest:
    """Deliver ``payload`` (any JSON object) to the peer ``to`` of the sender's room."""

    TYPE: ClassVar[str] = "relay"
    to: str
    payload: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "to": self.to, "payload": dict(self.payload)}


Request = Register | Describe | RelayRequest


# -- server -> peer -----------------------------------------------------------------------------


@attrs.frozen
class PeerEntry:
    """One of the other peers of a room, in ``registered``'s ``peers``."""

    peer_id: str
    role: str
    description: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"peer_id": self.peer_id, "role": self.role}
        if self.description is not None:
            entry["description"] = self.description
        return entry


@attrs.frozen
class Registered:
    """The answer to ``register``: the peer is in ``room``; ``peers`` were there before it."""

    TYPE: ClassVar[str] = "registered"
    room: str
    peer_id: str
    peers: tuple[PeerEntry, ...] = attrs.field(default=(), converter=tuple)
    #: The STUN and TURN servers this peer is to use (TURN with credentials made for it).
    ice_servers: tuple[IceServer, ...] = attrs.field(default=(), converter=tuple)

    def to_json(self) -> dict[str, Any]:
        message = {"type": self.TYPE, "room": self.room, "peer_id": self.peer_id,
                   "peers": [peer.to_json() for peer in self.peers]}
        if self.ice_servers:
            message["ice_servers"] = [server.to_json() for server in self.ice_servers]
        return message


@attrs.frozen
class IceServersUpdate:
    """Fresh ICE servers for a registered peer (its TURN credentials renewed before they expire):
    they replace those of ``registered``."""

    TYPE: ClassVar[str] = "ice-servers"
    ice_servers: tuple[IceServer, ...] = attrs.field(default=(), converter=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "ice_servers": [server.to_json() for server in self.ice_servers]}


@attrs.frozen
class PeerDescribed:
    """A peer of the room and its description: what :class:`PeerJoined` and
    :class:`PeerUpdated` carry."""

    TYPE: ClassVar[str] = ""
    peer_id: str
    role: str
    description: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **PeerEntry(self.peer_id, self.role, self.description).to_json()}


@attrs.frozen
class PeerJoined(PeerDescribed):
    """Another peer joined the room (with its description, if it is a worker that gave one)."""

    TYPE: ClassVar[str] = "peer-joined"


@attrs.frozen
class PeerUpdated(PeerDescribed):
    """A worker of the room changed its description."""

    TYPE: ClassVar[str] = "peer-updated"


@attrs.frozen
class PeerLeft:
    """Another peer left the room (its socket closed): its sessions are over."""

    TYPE: ClassVar[str] = "peer-left"
    peer_id: str
    role: str

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "peer_id": self.peer_id, "role": self.role}


@attrs.frozen
class Relay:
    """``payload`` from the peer ``sender`` of the room (``"from"`` on the wire: the id its
    socket registered with, never what it wrote)."""

    TYPE: ClassVar[str] = "relay"
    sender: str
    payload: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "from": self.sender, "payload": dict(self.payload)}


@attrs.frozen
class ErrorReply:
    """The server refused something (``code`` is one of :data:`ERROR_CODES`, or a newer
    server's); ``peer_id`` names the target of a refused relay (``unknown-peer``)."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    peer_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"type": self.TYPE, "code": self.code, "message": self.message}
        if self.peer_id is not None:
            reply["peer_id"] = self.peer_id
        return reply


@attrs.frozen
class UnknownMessage:
    """A server message of a type this version does not know (a newer server's): ignore it."""

    type: str


#: What a peer hears about its room once registered (``SignalingClient.receive`` returns these).
RoomEvent = Relay | PeerJoined | PeerUpdated | PeerLeft
ServerMessage = (
    Registered | IceServersUpdate | PeerJoined | PeerUpdated | PeerLeft | Relay | ErrorReply | UnknownMessage
)
Message = Request | Registered | IceServersUpdate | PeerJoined | PeerUpdated | PeerLeft | Relay | ErrorReply


# -- encoding -----------------------------------------------------------------------------------


def encode(message: Message) -> str:
    """The JSON text of ``message``: compact, UTF-8 as is, no NaN or Infinity.

    Raises ``ValueError`` (or ``RecursionError``) when a payload cannot be written as JSON.
    """
    return json.dumps(message.to_json(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# -- decoding -----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; relaying them would break peers with strict parsers.
    raise ValueError(f"{name} is not valid JSON")


def _json_object(data: str | bytes, max_message_bytes: int | None) -> dict[str, Any]:
    if not isinstance(data, str):
        raise MalformedMessage("binary frames are not accepted; send JSON text")
    if max_message_bytes is not None and utf8_longer_than(data, max_message_bytes):
        raise MalformedMessage(f"message larger than {max_message_bytes} bytes")
    try:
        message = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"not valid JSON: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise MalformedMessage("a message must be a JSON object")
    if not isinstance(message.get("type"), str):
        raise MalformedMessage("a message needs a string 'type'")
    return message


def _checked_description(value: object) -> dict[str, Any]:
    try:
        return validate_description(value)
    except DescriptionError as error:
        raise MalformedMessage(f"description refused: {error}") from None


def _register(message: dict[str, Any]) -> Register:
    room, role, peer_id = message.get("room"), message.get("role"), message.get("peer_id")
    token = message.get("token")
    if not is_id(room):
        raise MalformedMessage("register needs a 'room' matching [A-Za-z0-9._:@+=-]{1,128}")
    if not is_role(role):
        raise MalformedMessage("register needs a 'role': 'worker' or 'client'")
    if not is_id(peer_id):
        raise MalformedMessage("register needs a 'peer_id' matching [A-Za-z0-9._:@+=-]{1,128}")
    if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS):
        raise MalformedMessage("'token' must be a string")
    description = _checked_description(message["description"]) if "description" in message else None
    return Register(room, role, peer_id, token, description)


def _describe(message: dict[str, Any]) -> Describe:
    peer_id = message.get("peer_id")
    if peer_id is not None and not is_id(peer_id):
        raise MalformedMessage("describe's 'peer_id', if any, must be a peer id")
    return Describe(_checked_description(message.get("description")), peer_id)


def _relay_request(message: dict[str, Any]) -> RelayRequest:
    to, payload = message.get("to"), message.get("payload")
    if not is_id(to):
        raise MalformedMessage("relay needs a 'to' peer id")
    if not isinstance(payload, dict):
        raise MalformedMessage("relay needs a 'payload' JSON object")
    return RelayRequest(to, payload)


_REQUESTS: dict[str, Callable[[dict[str, Any]], Request]] = {
    Register.TYPE: _register,
    Describe.TYPE: _describe,
    RelayRequest.TYPE: _relay_request,
}


def decode_request(data: str | bytes, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Request:
    """What a peer sent (a WebSocket message, text or binary), as a request for the server.

    Raises :class:`MalformedMessage` (and nothing else) for anything that is not a well-formed
    ``register``, ``describe`` or ``relay`` of at most ``max_message_bytes``.
    """
    message = _json_object(data, max_message_bytes)
    kind = message["type"]
    decode = _REQUESTS.get(kind)
    if decode is None:
        raise MalformedMessage(f"unknown message type {kind[:64]!r}")
    return decode(message)


#: Told about a worker's description that a peer drops: ``(peer_id, error)``.
DescriptionProblem = Callable[[str, DescriptionError], None]


def _received_description(entry: Mapping[str, Any], on_invalid: DescriptionProblem | None) -> dict[str, Any] | None:
    # Only a worker describes itself; and a description this version cannot read (a newer
    # worker's field, say) costs the description, never the news that the peer is there.
    if entry["role"] != "worker" or "description" not in entry:
        return None
    try:
        return validate_description(entry["description"])
    except DescriptionError as error:
        if on_invalid is not None:
            on_invalid(entry["peer_id"], error)
        return None


def _peer_fields(message: Mapping[str, Any]) -> tuple[str, str]:
    peer_id, role = message.get("peer_id"), message.get("role")
    if not is_id(peer_id) or not is_role(role):
        raise MalformedMessage("a peer needs a 'peer_id' and a 'role'")
    return peer_id, role


def _received_ice_servers(message: Mapping[str, Any], on_invalid: IceServerProblem | None) -> tuple[IceServer, ...]:
    # What this version cannot use (a newer scheme, say) costs that server, never the message.
    if "ice_servers" not in message:
        return ()
    return decode_ice_servers(message["ice_servers"], on_invalid)


def decode_server_message(
    data: str | bytes,
    *,
    on_invalid_description: DescriptionProblem | None = None,
    on_invalid_ice_server: IceServerProblem | None = None,
) -> ServerMessage:
    """What the server sent, as a typed message (:class:`UnknownMessage` for a newer type).

    Raises :class:`MalformedMessage` (and nothing else) when a field this version reads is
    missing or ill-typed. A worker's description that does not validate is dropped (the
    message is kept) and ``on_invalid_description`` is told; so is an ICE server this version
    cannot use, and ``on_invalid_ice_server`` is told (never with a credential).
    """
    message = _json_object(data, None)
    kind = message["type"]
    if kind == ErrorReply.TYPE:
        code, detail, peer_id = message.get("code"), message.get("message"), message.get("peer_id")
        if not isinstance(code, str):
            raise MalformedMessage("an error needs a string 'code'")
        detail = detail if isinstance(detail, str) else ""
        return ErrorReply(code, detail, peer_id if isinstance(peer_id, str) else None)
    if kind == Relay.TYPE:
        sender, payload = message.get("from"), message.get("payload")
        if not is_id(sender) or not isinstance(payload, dict):
            raise MalformedMessage("a relay needs a 'from' peer id and a 'payload' object")
        return Relay(sender, payload)
    if kind == Registered.TYPE:
        room, peer_id, peers = message.get("room"), message.get("peer_id"), message.get("peers")
        if not (is_id(room) and is_id(peer_id) and isinstance(peers, list)):
            raise MalformedMessage("registered needs a 'room', a 'peer_id' and a list of 'peers'")
        entries = []
        for peer in peers:
            if not isinstance(peer, dict):
                raise MalformedMessage("each of 'peers' is an object")
            entries.append(PeerEntry(*_peer_fields(peer), _received_description(peer, on_invalid_description)))
        return Registered(room, peer_id, tuple(entries), _received_ice_servers(message, on_invalid_ice_server))
    if kind == IceServersUpdate.TYPE:
        if "ice_servers" not in message:
            raise MalformedMessage("ice-servers needs 'ice_servers'")
        return IceServersUpdate(_received_ice_servers(message, on_invalid_ice_server))
    if kind == PeerLeft.TYPE:
        return PeerLeft(*_peer_fields(message))
    if kind in (PeerJoined.TYPE, PeerUpdated.TYPE):
        peer_id, role = _peer_fields(message)
        event = PeerJoined if kind == PeerJoined.TYPE else PeerUpdated
        return event(peer_id, role, _received_description(message, on_invalid_description))
    return UnknownMessage(kind)
