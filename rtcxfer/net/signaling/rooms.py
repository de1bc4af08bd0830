"""The signaling server's book of rooms: who is registered where, what each worker said about
itself, and how many sockets each address holds (sans-IO).

The server (:mod:`rtcxfer.net.signaling.server`) owns the sockets; this book holds the state
that decides what a socket may do, behind the small interface :class:`Rooms`:

* :meth:`Rooms.connect` / :meth:`Rooms.disconnect`: a socket opens (refused with
  ``server-full`` when its address holds too many) and closes (leaving its room);
* :meth:`Rooms.register`, :meth:`Rooms.describe`, :meth:`Rooms.leave`: a socket joins a room
  (refused with ``duplicate-peer`` or ``room-full``), a worker replaces its description, a
  socket is put out of its room; each returns a :class:`RoomChange` (the member and the other
  members of its room, whom the server tells);
* :meth:`Rooms.find`: the member a relay goes to;
* :meth:`Rooms.send`: a text for a member's socket, on whichever server holds it;
* :meth:`Rooms.open` / :meth:`Rooms.close`: the server starts and stops using the book.

Per address (in the spirit of nginx's ``limit_conn``, :class:`RoomLimits`): one remote address
may hold at most ``max_connections_per_address`` sockets, of which at most
``max_unregistered_per_address`` not yet registered, and at most
``max_peers_per_address_in_room`` peers in one room that did not prove a room token; so one
host cannot starve everybody else of the server's connections or a room's places. Peers that
proved the room's token are not counted against their address: a lab behind one NAT address
may fill its room up to ``max_peers_per_room``.

:class:`InMemoryRooms` keeps the book in this process, which is all one server needs. The
interface is asynchronous, and each method is one atomic step on the state, so that a
replacement keeping the same book in a shared store (several server replicas behind one
address) can implement it with one transaction or script per method:
:class:`~rtcxfer.net.signaling.redis_rooms.RedisRooms` does, in Redis. Sockets are named by a
``connection`` key the book makes (:meth:`Rooms.connection_key`, unique across replicas); a text
for a member (:meth:`Rooms.send`) comes back to the server that holds its socket through the
``deliver`` function the server gave :meth:`Rooms.open`.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from rtcxfer.net.signaling.messages import DUPLICATE_PEER, ROOM_FULL, SERVER_FULL, PeerEntry, Refusal
from rtcxfer.protocol.errors import LocalProtocolError

__all__ = ["Deliver", "DropAll", "InMemoryRooms", "Member", "RoomChange", "RoomLimits", "Rooms"]

#: ``deliver(connection, text)``: queue ``text`` on this server's socket ``connection`` (nothing if
#: it is gone).
Deliver = Callable[[str, str], object]
#: Close every socket of this server: the book lost what it knew of them (its store restarted).
DropAll = Callable[[], object]


@attrs.frozen
class RoomLimits:
    """How much of the server one room and one remote address may take (None: no limit)."""

    max_peers_per_room: int = 16
    max_connections_per_address: int | None = 64
    max_unregistered_per_address: int | None = 8
    max_peers_per_address_in_room: int | None = 8


@attrs.frozen
class Member:
    """One registration: the socket ``connection`` (from ``address``) is ``peer_id`` in ``room``."""

    connection: str
    address: str
    room: str
    peer_id: str
    role: str
    #: What a worker said about itself (validated), or None.
    description: dict[str, Any] | None = None
    #: It presented the room's token (rooms without one admit everyone unproven).
    proved_token: bool = False

    def entry(self) -> PeerEntry:
        """How the other peers of the room see this one."""
        return PeerEntry(self.peer_id, self.role, self.description)


@attrs.frozen
class RoomChange:
    """``member`` joined, changed or left; ``others`` are the rest of its room, in join order."""

    member: Member
    others: tuple[Member, ...]


class Rooms(abc.ABC):
    """The interface the server calls; see the module docstring."""

    async def open(self, deliver: Deliver, drop_all: DropAll) -> None:
        """The server starts: texts for its sockets go to ``deliver``; ``drop_all`` when the book
        forgot them. Raises :class:`~rtcxfer.protocol.errors.SharedRoomsError` if the book's store
        cannot be used."""
        self._deliver = deliver

    async def shutting_down(self) -> None:  # noqa: B027 - one server's book goes with it
        """The server is about to close every socket because it stops."""

    async def close(self) -> None:  # noqa: B027 - a book in memory has nothing to let go of
        """The server has stopped (its sockets are closed and disconnected)."""

    def connection_key(self, serial: int) -> str:
        """The key of this server's ``serial``-th socket (unique wherever the book is shared)."""
        return str(serial)

    def send(self, member: Member, text: str) -> None:
        """Queue ``text`` on ``member``'s socket; texts from one server to one socket keep their order."""
        self._deliver(member.connection, text)

    @abc.abstractmethod
    async def connect(self, connection: str, address: str) -> None:
        """Count a new socket from ``address``; :class:`Refusal` (``server-full``, closing) and
        nothing counted if the address holds too many."""

    @abc.abstractmethod
    async def disconnect(self, connection: str) -> RoomChange | None:
        """Forget a closed socket; the change if it was still in a room (it has left it now)."""

    @abc.abstractmethod
    async def register(
        self,
        connection: str,
        room: str,
        peer_id: str,
        role: str,
        description: dict[str, Any] | None = None,
        *,
        proved_token: bool = False,
    ) -> RoomChange:
        """Put the (connected, not yet registered) socket in ``room`` as ``peer_id``, after the
        peers there now. :class:`Refusal` (``duplicate-peer``, ``room-full``) and no change if
        it cannot join. ``proved_token``: it presented the room's token, so its address's cap
        in the room does not apply to it (nor count it)."""

    @abc.abstractmethod
    async def describe(self, connection: str, description: dict[str, Any]) -> RoomChange | None:
        """Replace the description of the socket's registration; None if it is in no room."""

    @abc.abstractmethod
    async def leave(self, connection: str) -> RoomChange | None:
        """Take the socket out of its room (it stays connected, and counts as registered);
        None if it is in none."""

    @abc.abstractmethod
    async def find(self, room: str, peer_id: str) -> Member | None:
        """The member ``peer_id`` of ``room``, if there is one."""

    @abc.abstractmethod
    def snapshot(self) -> dict[str, list[str]]:
        """Each room's peer ids in join order, as far as known without waiting (status
        displays and tests)."""


@attrs.define
class _Socket:
    address: str
    registered: bool = False
    member: Member | None = None


class InMemoryRooms(Rooms):
    """The book in this process's memory. Its methods never suspend, so each is atomic."""

    def __init__(self, limits: RoomLimits | None = None) -> None:
        self.limits = limits if limits is not None else RoomLimits()
        self._deliver: Deliver = lambda connection, text: None
        self._sockets: dict[str, _Socket] = {}
        self._rooms: dict[str, dict[str, Member]] = {}
        self._sockets_from: Counter[str] = Counter()
        self._unregistered_from: Counter[str] = Counter()

    async def connect(self, connection: str, address: str) -> None:
        if connection in self._sockets:
            raise LocalProtocolError(f"connection {connection!r} is already connected")
        limits = self.limits
        held = self._sockets_from[address]
        if limits.max_connections_per_address is not None and held >= limits.max_connections_per_address:
            raise Refusal(SERVER_FULL, f"too many connections from {address} ({held}), try again later", close=True)
        unregistered = self._unregistered_from[address]
        if limits.max_unregistered_per_address is not None and unregistered >= limits.max_unregistered_per_address:
            raise Refusal(
                SERVER_FULL, f"too many unregistered connections from {address} ({unregistered}), try again later",
                close=True,
            )
        self._sockets[connection] = _Socket(address)
        self._sockets_from[address] += 1
        self._unregistered_from[address] += 1

    async def disconnect(self, connection: str) -> RoomChange | None:
        change = await self.leave(connection)
        socket = self._sockets.pop(connection, None)
        if socket is not None:
            _decrement(self._sockets_from, socket.address)
            if not socket.registered:
                _decrement(self._unregistered_from, socket.address)
        return change

    async def register(
        self,
        connection: str,
        room: str,
        peer_id: str,
        role: str,
        description: dict[str, Any] | None = None,
        *,
        proved_token: bool = False,
    ) -> RoomChange:
        socket = self._sockets.get(connection)
        if socket is None or socket.registered:
            raise LocalProtocolError(f"connection {connection!r} is not connected or already registered")
        peers = self._rooms.get(room, {})
        if peer_id in peers:
            hint = "; give each worker its own id (rtcxfer worker --peer-id NAME)" if role == "worker" else ""
            raise Refusal(DUPLICATE_PEER, f"peer id {peer_id!r} is already in room {room!r}{hint}")
        if len(peers) >= self.limits.max_peers_per_room:
            raise Refusal(ROOM_FULL, f"room {room!r} has {len(peers)} peers already")
        most = self.limits.max_peers_per_address_in_room
        if most is not None and not proved_token:
            from_here = sum(other.address == socket.address and not other.proved_token for other in peers.values())
            if from_here >= most:
                raise Refusal(ROOM_FULL, f"room {room!r} has {from_here} peers from your address already")
        member = Member(connection, socket.address, room, peer_id, role, description, proved_token)
        others = tuple(peers.values())
        self._rooms.setdefault(room, peers)[peer_id] = member
        socket.member, socket.registered = member, True
        _decrement(self._unregistered_from, socket.address)
        return RoomChange(member, others)

    async def describe(self, connection: str, description: dict[str, Any]) -> RoomChange | None:
        socket = self._sockets.get(connection)
        if socket is None or socket.member is None:
            return None
        member = socket.member = attrs.evolve(socket.member, description=description)
        peers = self._rooms[member.room]
        peers[member.peer_id] = member
        return RoomChange(member, tuple(other for other in peers.values() if other is not member))

    async def leave(self, connection: str) -> RoomChange | None:
        socket = self._sockets.get(connection)
        if socket is None or socket.member is None:
            return None
        member, socket.member = socket.member, None
        peers = self._rooms[member.room]
        del peers[member.peer_id]
        if not peers:
            del self._rooms[member.room]
        return RoomChange(member, tuple(peers.values()))

    async def find(self, room: str, peer_id: str) -> Member | None:
        return self._rooms.get(room, {}).get(peer_id)

    def snapshot(self) -> dict[str, list[str]]:
        return {room: list(peers) for room, peers in self._rooms.items()}


def _decrement(counter: Counter[str], key: str) -> None:
    # Zero counts are removed: the counters stay as small as the set of addresses connected now.
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
