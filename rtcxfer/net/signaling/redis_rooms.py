"""The book of rooms in Redis, shared by every ``rtcxfer signal --redis URL`` given the same Redis:
several replicas of the signaling server behind one name (a load balancer, DNS) are one server
to their peers.

What each replica keeps where:

* its own sockets (address, registered or not) in its memory: a socket lives on one replica;
* the rooms in Redis, one hash per room (``room:NAME``: peer id -> member), each member marked
  with the replica that holds its socket; the per-address counts of sockets in one hash per
  replica (``conns:REPLICA``, ``unreg:REPLICA``);
* that it is alive in a key with a short expiry (``alive:REPLICA``, ``membership_ttl`` seconds)
  that it renews three times per expiry. A replica that dies stops renewing: within the expiry
  its members are no longer listed, found or counted by anyone, and a worker whose replica died
  registers again on another one, under the same id (its sessions, on their data channels, go
  on). ``rejoin_grace`` seconds later the first replica to look (each does every half expiry)
  takes the members that did not come back out of their rooms and tells the rooms' other peers
  they left (``peer-left``): a client is not told that its worker left while it re-registers.

A replica that stops (SIGTERM, Ctrl-C) ends its ``alive`` key at once and closes its sockets
without taking their peers out of their rooms one by one: for the other replicas it is a replica
that died, minus the wait for the expiry.

Every change to the shared state is one Lua script, so it is atomic across replicas as
:class:`~rtcxfer.net.signaling.rooms.Rooms` asks. A text for a member on another replica (a
relay, a room event) is published on that replica's channel (``to:REPLICA``), by one publisher
per replica in the order it was sent, and the replica that holds the socket queues it there.

If Redis restarts (its state is gone: this replica's ``alive`` key with it) or stops answering
for longer than the expiry, the replica closes every socket it holds (code 1013, try again
later): its peers register again, on it or another replica, once Redis answers. While Redis does
not answer, new sockets are refused (``server-full``, try again later).

Redis Cluster is not supported (the scripts touch keys they compute); one Redis, or a
Sentinel-managed primary, is what a signaling service needs. Only this module imports ``redis``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rtcxfer.log import logger
from rtcxfer.net.signaling.messages import (
    DUPLICATE_PEER,
    ROOM_FULL,
    SERVER_FULL,
    PeerLeft,
    Refusal,
    encode,
)
from rtcxfer.net.signaling.rooms import Deliver, DropAll, Member, RoomChange, RoomLimits, Rooms
from rtcxfer.protocol.errors import LocalProtocolError, SharedRoomsError

__all__ = [
    "DEFAULT_MEMBERSHIP_TTL", "DEFAULT_PREFIX", "DEFAULT_REJOIN_GRACE", "RedisRooms", "decode_member", "encode_member",
    "redacted_url",
]

#: Seconds a replica's members outlive it (its ``alive`` key's expiry).
DEFAULT_MEMBERSHIP_TTL = 3.0
#: Seconds after that before the rooms of its members that did not register again are told they left.
DEFAULT_REJOIN_GRACE = 5.0
#: The prefix of every key and channel rtcxfer uses in Redis.
DEFAULT_PREFIX = "rtcxfer:"
#: Connections to Redis a replica holds at most (one of them for its subscription).
MAX_REDIS_CONNECTIONS = 32
#: Relay targets remembered at most (then forgotten all at once).
MAX_REMEMBERED_TARGETS = 100_000
#: Texts waiting to be published to other replicas; beyond this they are dropped (Redis lags).
MAX_PUBLISH_BACKLOG = 100_000

# A member in a room's hash: one header line "replica \t seq \t address \t proved \t connection",
# then the member as JSON (encoded by Python, never parsed by the scripts).
_LUA_COMMON = """
local P = ARGV[1]
local alive_cache = {}
local function alive(rid)
  local known = alive_cache[rid]
  if known == nil then
    known = redis.call('EXISTS', P .. 'alive:' .. rid) == 1
    alive_cache[rid] = known
  end
  return known
end
local function header(value)
  return string.match(value, '^([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\n]*)\\n')
end
local function count(kind, address)
  local n = 0
  for _, rid in ipairs(redis.call('SMEMBERS', P .. 'replicas')) do
    if alive(rid) then
      n = n + tonumber(redis.call('HGET', P .. kind .. ':' .. rid, address) or 0)
    end
  end
  return n
end
local function decrement(key, field)
  if redis.call('HINCRBY', key, field, -1) <= 0 then redis.call('HDEL', key, field) end
end
local function live_others(room, except)
  local flat = redis.call('HGETALL', P .. 'room:' .. room)
  local out = {}
  for i = 1, #flat, 2 do
    local rid = header(flat[i + 1])
    if flat[i] ~= except and rid and alive(rid) then out[#out + 1] = flat[i + 1] end
  end
  return out
end
"""

# ARGV: prefix, replica, address, max sockets per address (-1: none), max unregistered (-1: none)
_CONNECT = _LUA_COMMON + """
local rid, address = ARGV[2], ARGV[3]
local most, most_unregistered = tonumber(ARGV[4]), tonumber(ARGV[5])
local held = count('conns', address)
if most >= 0 and held >= most then return {'conns', held} end
local unregistered = count('unreg', address)
if most_unregistered >= 0 and unregistered >= most_unregistered then return {'unreg', unregistered} end
redis.call('HINCRBY', P .. 'conns:' .. rid, address, 1)
redis.call('HINCRBY', P .. 'unreg:' .. rid, address, 1)
return {'ok', 0}
"""

# ARGV: prefix, replica, address, "1" if the socket never registered
_DISCONNECT = _LUA_COMMON + """
decrement(P .. 'conns:' .. ARGV[2], ARGV[3])
if ARGV[4] == '1' then decrement(P .. 'unreg:' .. ARGV[2], ARGV[3]) end
return 0
"""

# ARGV: prefix, replica, room, peer id, address, proved ("1"/"0"), connection, member JSON,
#       max peers per room, max unproven peers per address in the room (-1: none)
_REGISTER = _LUA_COMMON + """
local rid, room, peer, address, proved, connection, body = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local most, most_here = tonumber(ARGV[9]), tonumber(ARGV[10])
local key = P .. 'room:' .. room
local flat = redis.call('HGETALL', key)
local others, from_here = {}, 0
for i = 1, #flat, 2 do
  local mrid, _, maddress, mproved = header(flat[i + 1])
  if mrid and alive(mrid) then
    if flat[i] == peer then return {'duplicate'} end
    others[#others + 1] = flat[i + 1]
    if maddress == address and mproved == '0' then from_here = from_here + 1 end
  end
end
if #others >= most then return {'full', #others} end
if most_here >= 0 and proved == '0' and from_here >= most_here then return {'address', from_here} end
local seq = redis.call('INCR', P .. 'seq')
local value = rid .. '\\t' .. seq .. '\\t' .. address .. '\\t' .. proved .. '\\t' .. connection .. '\\n' .. body
redis.call('HSET', key, peer, value)
redis.call('SADD', P .. 'members:' .. rid, room .. '\\n' .. peer)
decrement(P .. 'unreg:' .. rid, address)
local reply = {'ok', value}
for _, other in ipairs(others) do reply[#reply + 1] = other end
return reply
"""

# ARGV: prefix, replica, room, peer id, connection, new member JSON ("": leave the room)
_UPDATE = _LUA_COMMON + """
local rid, room, peer, connection, body = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local key = P .. 'room:' .. room
local value = redis.call('HGET', key, peer)
if not value then return {'none'} end
local _, _, _, _, mconnection = header(value)
if mconnection ~= connection then return {'none'} end
if body == '' then
  redis.call('HDEL', key, peer)
  redis.call('SREM', P .. 'members:' .. rid, room .. '\\n' .. peer)
else
  value = string.match(value, '^[^\\n]*\\n') .. body
  redis.call('HSET', key, peer, value)
end
local reply = {'ok', value}
for _, other in ipairs(live_others(room, peer)) do reply[#reply + 1] = other end
return reply
"""

# ARGV: prefix, room, peer id
_FIND = _LUA_COMMON + """
local value = redis.call('HGET', P .. 'room:' .. ARGV[2], ARGV[3])
if not value then return false end
local rid = header(value)
if rid and alive(rid) then return value end
return false
"""

# ARGV: prefix, replica, expiry (ms). 1 if renewed (or announced), 0 if Redis no longer knew it.
_HEARTBEAT = _LUA_COMMON + """
local rid, ttl, announce = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if announce then
  redis.call('SADD', P .. 'replicas', rid)
  redis.call('SET', P .. 'alive:' .. rid, '1', 'PX', ttl)
elseif not redis.call('SET', P .. 'alive:' .. rid, '1', 'PX', ttl, 'XX') then
  return 0
end
redis.call('HSET', P .. 'seen', rid, now_ms)
return 1
"""

# ARGV: prefix, grace (ms), then the replicas to clear (none: every replica whose alive key is
# gone and was last renewed more than the grace ago). Each member taken out of its room comes back as
# {member, live others of its room...}.
_REAP = _LUA_COMMON + """
local grace = tonumber(ARGV[2])
local targets = {}
if #ARGV > 2 then
  for i = 3, #ARGV do targets[#targets + 1] = ARGV[i] end
else
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for _, rid in ipairs(redis.call('SMEMBERS', P .. 'replicas')) do
    local seen = tonumber(redis.call('HGET', P .. 'seen', rid) or 0)
    if not alive(rid) and now_ms - seen > grace then targets[#targets + 1] = rid end
  end
end
local result = {}
for _, rid in ipairs(targets) do
  for _, entry in ipairs(redis.call('SMEMBERS', P .. 'members:' .. rid)) do
    local room, peer = string.match(entry, '^([^\\n]*)\\n(.*)$')
    local key = P .. 'room:' .. room
    local value = redis.call('HGET', key, peer)
    if value and header(value) == rid then
      redis.call('HDEL', key, peer)
      local item = {value}
      for _, other in ipairs(live_others(room, peer)) do item[#item + 1] = other end
      result[#result + 1] = item
    end
  end
  redis.call('DEL', P .. 'members:' .. rid, P .. 'conns:' .. rid, P .. 'unreg:' .. rid)
  if not alive(rid) then
    redis.call('SREM', P .. 'replicas', rid)
    redis.call('HDEL', P .. 'seen', rid)
  end
end
return result
"""


def redacted_url(url: str) -> str:
    """``url`` without the password it may hold (``redis://:SECRET@host`` -> ``redis://:***@host``)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
        return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))
    except ValueError:
        return "(a malformed URL)"


class _Socket:
    __slots__ = ("address", "registered", "member", "counted")

    def __init__(self, address: str) -> None:
        self.address = address
        self.registered = False
        self.member: Member | None = None
        #: Whether Redis counts it (not after this replica's state there was cleared).
        self.counted = True


def encode_member(member: Member) -> str:
    """A member as the JSON part of its value in a room's hash."""
    return json.dumps(
        {
            "connection": member.connection,
            "address": member.address,
            "room": member.room,
            "peer_id": member.peer_id,
            "role": member.role,
            "description": member.description,
            "proved_token": member.proved_token,
        },
        separators=(",", ":"),
    )


def decode_member(value: str) -> tuple[int, Member]:
    """A room hash's value: (its join sequence number, the member)."""
    head, _, body = value.partition("\n")
    seq = int(head.split("\t")[1])
    data = json.loads(body)
    return seq, Member(
        data["connection"], data["address"], data["room"], data["peer_id"], data["role"],
        data.get("description"), bool(data.get("proved_token")),
    )


def _in_join_order(values: Sequence[str]) -> tuple[Member, ...]:
    return tuple(member for _, member in sorted(decode_member(value) for value in values))


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisRooms(Rooms):
    """The book of rooms in the Redis at ``url``, shared with every replica using the same Redis
    and ``prefix`` (see the module docstring). ``membership_ttl``: seconds a dead replica's
    members outlive it; ``rejoin_grace``: seconds more before their rooms hear they left."""

    def __init__(
        self,
        url: str,
        limits: RoomLimits | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        membership_ttl: float = DEFAULT_MEMBERSHIP_TTL,
        rejoin_grace: float = DEFAULT_REJOIN_GRACE,
        replica_id: str | None = None,
    ) -> None:
        if membership_ttl <= 0 or rejoin_grace < 0:
            raise ValueError("membership_ttl must be positive, rejoin_grace not negative")
        self.rejoin_grace = rejoin_grace
        self.url = url
        self.limits = limits if limits is not None else RoomLimits()
        self.prefix = prefix
        self.membership_ttl = membership_ttl
        #: This replica's name in Redis: random, so that a restarted replica is a new one.
        self.replica_id = replica_id or secrets.token_hex(6)
        self._sockets: dict[str, _Socket] = {}
        self._client: aioredis.Redis | None = None
        self._subscriber: aioredis.Redis | None = None
        self._publisher: aioredis.Redis | None = None
        self._drop_all: DropAll = lambda: None
        self._deliver: Deliver = lambda connection, text: None
        self._outgoing: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._scripts: dict[str, Any] = {}
        #: Relay targets looked up lately: (room, peer id) -> (member, until when), forgotten when
        #: the room says the peer joined, changed or left, or its replica is no longer alive.
        self._found: dict[tuple[str, str], tuple[Member, float]] = {}
        #: The replicas alive at the last heartbeat.
        self._live_replicas: set[str] = set()
        #: False while Redis does not answer or after it lost this replica's state.
        self.healthy = False
        #: The server is closing its sockets to stop (see :meth:`shutting_down`).
        self.stopping = False
        self._heartbeat_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def open(self, deliver: Deliver, drop_all: DropAll) -> None:
        self._deliver, self._drop_all = deliver, drop_all
        shown = redacted_url(self.url)
        try:
            # Blocking: a burst of registrations waits for a connection instead of failing.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=MAX_REDIS_CONNECTIONS, timeout=5.0, decode_responses=True,
                socket_connect_timeout=3.0, socket_timeout=5.0,
            )
            client = aioredis.Redis(connection_pool=pool)
        except ValueError as error:
            raise SharedRoomsError(f"not a Redis URL: {shown} ({error})") from None
        try:
            await client.ping()
        except (RedisError, OSError) as error:
            await _close_client(client)
            raise SharedRoomsError(f"cannot use Redis at {shown}: {error}") from None
        self._client = client
        # Its own connection, without the commands' read timeout: a subscription waits for
        # messages as long as there are none.
        self._subscriber = aioredis.from_url(self.url, decode_responses=True, socket_connect_timeout=3.0,
                                             socket_keepalive=True)
        # And one for publishing, taken from no pool: it is the path of every relay to another replica.
        self._publisher = aioredis.from_url(self.url, decode_responses=True, socket_connect_timeout=3.0,
                                            socket_timeout=5.0, single_connection_client=True)
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("connect", _CONNECT), ("disconnect", _DISCONNECT), ("register", _REGISTER),
                ("update", _UPDATE), ("find", _FIND), ("reap", _REAP),
                ("heartbeat", _HEARTBEAT),
            )
        }
        try:
            await self._announce()
            await self._follow_replicas(client)
        except (RedisError, OSError) as error:
            await self.abandon()
            raise SharedRoomsError(f"cannot use Redis at {shown}: {error}") from None
        subscribed = asyncio.Event()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        self._tasks = [
            asyncio.create_task(self._receive_loop(subscribed)),
            asyncio.create_task(self._publish_loop()),
            self._heartbeat_task,
        ]
        try:
            await asyncio.wait_for(subscribed.wait(), 10.0)
        except asyncio.TimeoutError:
            await self.close()
            raise SharedRoomsError(f"cannot subscribe to this replica's channel in Redis at {shown}") from None
        logger.info("signaling: rooms shared through Redis at {} as replica {} (members expire {} s after it)",
                    shown, self.replica_id, self.membership_ttl)

    async def shutting_down(self) -> None:
        """The server stops: its sockets close, and their peers register again elsewhere. They
        are not taken out of their rooms one by one (their rooms would hear they left, and a
        client would give up its session with a worker that is only moving): this replica stops
        being alive at once, so nobody lists them any more, and whoever did not register again
        within the rejoin grace is announced as gone by the other replicas."""
        self.stopping = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._client is not None:
            try:
                await self._client.delete(self._key("alive", self.replica_id))
            except (RedisError, OSError) as error:
                logger.debug("signaling: could not end this replica's membership: {}", error)

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for extra in (self._subscriber, self._publisher):
            if extra is not None:
                await _close_client(extra)
        self._subscriber = self._publisher = None
        client, self._client = self._client, None
        if client is None:
            return
        if self.stopping:
            # What is left of this replica is the others' to clear, after the rejoin grace.
            await _close_client(client)
            return
        try:
            # What this replica's sockets left behind (none, unless Redis failed meanwhile), and
            # itself: the others need not wait for its key to expire.
            await client.delete(self._key("alive", self.replica_id))
            await self._reap(client, [self.replica_id])
            await client.srem(self._key("replicas"), self.replica_id)
        except (RedisError, OSError) as error:
            logger.debug("signaling: could not tidy Redis on stopping: {}", error)
        await _close_client(client)

    async def abandon(self) -> None:
        """Stop at once without a word to Redis, as a replica that died would (for tests: what
        the others do about a dead replica)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in (self._subscriber, self._publisher, self._client):
            if client is not None:
                await _close_client(client)
        self._subscriber = self._publisher = self._client = None

    async def _announce(self) -> None:
        await self._heartbeat(announce=True)
        self.healthy = True

    async def _heartbeat(self, announce: bool = False) -> bool:
        return bool(await self._scripts["heartbeat"](
            args=[self.prefix, self.replica_id, self._ttl_ms, "1" if announce else "0"], client=self._require_client()
        ))

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.membership_ttl * 1000))

    def _require_client(self) -> aioredis.Redis:
        if self._client is None:
            raise LocalProtocolError("the Redis rooms are not open")
        return self._client

    async def _heartbeat_loop(self) -> None:
        """Renew this replica's key; reap dead replicas; notice Redis losing this replica."""
        client = self._require_client()
        loop = asyncio.get_running_loop()
        last_renewal = loop.time()
        reap_every = self.membership_ttl / 2
        next_reap = loop.time()
        while True:
            await asyncio.sleep(self.membership_ttl / 3)
            try:
                renewed = await self._heartbeat()
                if not renewed:
                    # Redis restarted, or this replica was silent so long that others took it
                    # for dead and took its members out: its sockets are nobody's now.
                    await self._forget_everyone("Redis lost this replica's membership (restarted, or this "
                                                "replica did not renew it in time)")
                    await self._reap(client, [self.replica_id])
                    await self._announce()
                elif not self.healthy:
                    self.healthy = True
                    logger.warning("signaling: Redis answers again")
                last_renewal = loop.time()
                await self._follow_replicas(client)
                if loop.time() >= next_reap:
                    next_reap = loop.time() + reap_every
                    await self._reap(client, [])
            except (RedisError, OSError) as error:
                if self.healthy:
                    logger.warning("signaling: Redis does not answer ({}); new peers are refused meanwhile", error)
                    self.healthy = False
                if loop.time() - last_renewal > self.membership_ttl and self._sockets:
                    await self._forget_everyone("Redis has not answered for longer than the membership expiry")

    async def _follow_replicas(self, client: aioredis.Redis) -> None:
        replicas = sorted(await client.smembers(self._key("replicas")))
        async with client.pipeline(transaction=False) as pipe:
            for replica in replicas:
                pipe.exists(self._key("alive", replica))
            alive = await pipe.execute()
        self._live_replicas = {replica for replica, exists in zip(replicas, alive) if exists}

    def _forget_found(self, room: str, peer_id: str) -> None:
        self._found.pop((room, peer_id), None)

    def _notice_room_event(self, connection: str, text: str) -> None:
        """A peer of the room of ``connection`` joined, changed or left: look it up afresh."""
        socket = self._sockets.get(connection)
        if socket is None or socket.member is None:
            return
        try:
            peer_id = json.loads(text).get("peer_id")
        except ValueError:
            return
        if isinstance(peer_id, str):
            self._forget_found(socket.member.room, peer_id)

    async def _forget_everyone(self, why: str) -> None:
        if not self._sockets:
            return
        logger.warning("signaling: closing this replica's {} socket(s): {}; their peers register again",
                       len(self._sockets), why)
        for socket in self._sockets.values():
            socket.member, socket.counted = None, False
        self._drop_all()

    async def _reap(self, client: aioredis.Redis, replicas: list[str]) -> None:
        # From its last renewal: the expiry, then the grace.
        grace_ms = int((self.membership_ttl + self.rejoin_grace) * 1000)
        removed = await self._scripts["reap"](args=[self.prefix, grace_ms, *replicas], client=client)
        for item in removed or ():
            _, member = decode_member(item[0])
            self._forget_found(member.room, member.peer_id)
            left = encode(PeerLeft(member.peer_id, member.role))
            others = _in_join_order(item[1:])
            if replicas != [self.replica_id]:
                logger.info("signaling: {} {!r} of room {!r} went with its replica", member.role, member.peer_id,
                            member.room)
            for other in others:
                self.send(other, left)

    async def _receive_loop(self, subscribed: asyncio.Event) -> None:
        """Texts other replicas publish for this replica's sockets."""
        channel = self._key("to", self.replica_id)
        lost = False
        while True:
            if self._subscriber is None:
                return
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                subscribed.set()
                if lost:
                    logger.warning("signaling: this replica is subscribed to its Redis channel again")
                    lost = False
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    connection, _, text = str(message["data"]).partition("\n")
                    if text.startswith('{"type":"peer-'):
                        self._notice_room_event(connection, text)
                    self._deliver(connection, text)
            except (RedisError, OSError) as error:
                if subscribed.is_set() and not lost:
                    # Once per outage: it tries again every half second meanwhile.
                    logger.warning("signaling: this replica's Redis subscription was lost ({}); subscribing again",
                                   error)
                lost = True
                await asyncio.sleep(0.5)
            finally:
                await _close_pubsub(pubsub)

    async def _publish_loop(self) -> None:
        """Publish queued texts in order, in batches (one round trip for all that wait)."""
        outgoing = self._outgoing
        while True:
            batch = [await outgoing.get()]
            while not outgoing.empty() and len(batch) < 1000:
                batch.append(outgoing.get_nowait())
            try:
                client = self._publisher
                if client is None:
                    return
                if len(batch) == 1:
                    await client.publish(*batch[0])
                    continue
                async with client.pipeline(transaction=False) as pipe:
                    for channel, data in batch:
                        pipe.publish(channel, data)
                    await pipe.execute()
            except (RedisError, OSError) as error:
                logger.warning("signaling: {} message(s) to other replicas lost: {}", len(batch), error)

    # -- the book ----------------------------------------------------------------------------

    def connection_key(self, serial: int) -> str:
        return f"{self.replica_id}/{serial}"

    def send(self, member: Member, text: str) -> None:
        replica = member.connection.partition("/")[0]
        if replica == self.replica_id:
            self._deliver(member.connection, text)
        elif self._outgoing.qsize() < MAX_PUBLISH_BACKLOG:
            self._outgoing.put_nowait((self._key("to", replica), f"{member.connection}\n{text}"))
        else:
            logger.warning("signaling: a message for {!r} dropped: Redis lags behind", member.peer_id)

    async def _run(self, script: str, *args: object) -> Any:
        if not self.healthy:
            raise Refusal(SERVER_FULL, "the signaling server cannot reach its shared rooms now, try again later",
                          close=True)
        try:
            return await self._scripts[script](args=[self.prefix, *args], client=self._require_client())
        except (RedisError, OSError) as error:
            logger.warning("signaling: Redis failed ({}): a peer is refused", error)
            raise Refusal(SERVER_FULL, "the signaling server cannot reach its shared rooms now, try again later",
                          close=True) from None

    async def connect(self, connection: str, address: str) -> None:
        if connection in self._sockets:
            raise LocalProtocolError(f"connection {connection!r} is already connected")
        limits = self.limits
        verdict, held = await self._run(
            "connect", self.replica_id, address, _limit(limits.max_connections_per_address),
            _limit(limits.max_unregistered_per_address),
        )
        if verdict == "conns":
            raise Refusal(SERVER_FULL, f"too many connections from {address} ({held}), try again later", close=True)
        if verdict == "unreg":
            raise Refusal(
                SERVER_FULL, f"too many unregistered connections from {address} ({held}), try again later",
                close=True,
            )
        self._sockets[connection] = _Socket(address)

    async def disconnect(self, connection: str) -> RoomChange | None:
        change = await self.leave(connection)
        socket = self._sockets.pop(connection, None)
        if socket is not None and socket.counted and self.healthy and not self.stopping:
            try:
                await self._scripts["disconnect"](
                    args=[self.prefix, self.replica_id, socket.address, "0" if socket.registered else "1"],
                    client=self._require_client(),
                )
            except (RedisError, OSError) as error:
                # Counted until this replica's state is cleared (see _heartbeat_loop).
                logger.debug("signaling: Redis did not count a socket out: {}", error)
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
        member = Member(connection, socket.address, room, peer_id, role, description, proved_token)
        reply = await self._run(
            "register", self.replica_id, room, peer_id, socket.address, "1" if proved_token else "0", connection,
            encode_member(member), self.limits.max_peers_per_room,
            _limit(self.limits.max_peers_per_address_in_room),
        )
        verdict = reply[0]
        if verdict == "duplicate":
            hint = "; give each worker its own id (rtcxfer worker --peer-id NAME)" if role == "worker" else ""
            raise Refusal(DUPLICATE_PEER, f"peer id {peer_id!r} is already in room {room!r}{hint}")
        if verdict == "full":
            raise Refusal(ROOM_FULL, f"room {room!r} has {reply[1]} peers already")
        if verdict == "address":
            raise Refusal(ROOM_FULL, f"room {room!r} has {reply[1]} peers from your address already")
        socket.member, socket.registered = member, True
        self._forget_found(room, peer_id)
        return RoomChange(member, _in_join_order(reply[2:]))

    async def describe(self, connection: str, description: dict[str, Any]) -> RoomChange | None:
        socket = self._sockets.get(connection)
        if socket is None or socket.member is None:
            return None
        member = Member(
            socket.member.connection, socket.member.address, socket.member.room, socket.member.peer_id,
            socket.member.role, description, socket.member.proved_token,
        )
        reply = await self._run("update", self.replica_id, member.room, member.peer_id, connection,
                                encode_member(member))
        if reply[0] != "ok":
            return None
        socket.member = member
        self._forget_found(member.room, member.peer_id)
        return RoomChange(member, _in_join_order(reply[2:]))

    async def leave(self, connection: str) -> RoomChange | None:
        socket = self._sockets.get(connection)
        if socket is None or socket.member is None:
            return None
        member, socket.member = socket.member, None
        self._forget_found(member.room, member.peer_id)
        if self.stopping:
            return None
        try:
            reply = await self._scripts["update"](
                args=[self.prefix, self.replica_id, member.room, member.peer_id, connection, ""],
                client=self._require_client(),
            )
        except (RedisError, OSError) as error:
            # Left behind for the next reset of this replica's state (see _heartbeat_loop).
            logger.debug("signaling: Redis did not take {!r} out of its room: {}", member.peer_id, error)
            return None
        if reply[0] != "ok":
            return None
        return RoomChange(member, _in_join_order(reply[2:]))

    async def find(self, room: str, peer_id: str) -> Member | None:
        # A relay's target, once looked up, is remembered: a round trip to Redis per relay would
        # be most of its cost. Every change of a room reaches the replicas of its other members
        # (as room events), which forget what they remembered of that peer.
        loop = asyncio.get_running_loop()
        found = self._found.get((room, peer_id))
        if found is not None:
            member, until = found
            if until > loop.time() and member.connection.partition("/")[0] in self._live_replicas:
                return member
            del self._found[(room, peer_id)]
        value = await self._run("find", room, peer_id)
        if not value:
            return None
        member = decode_member(value)[1]
        if len(self._found) >= MAX_REMEMBERED_TARGETS:
            self._found.clear()
        self._found[(room, peer_id)] = (member, loop.time() + self.membership_ttl * 3)
        return member

    def snapshot(self) -> dict[str, list[str]]:
        """This replica's own members only (the rest would need Redis)."""
        rooms: dict[str, list[str]] = {}
        for socket in self._sockets.values():
            if socket.member is not None:
                rooms.setdefault(socket.member.room, []).append(socket.member.peer_id)
        return rooms


async def _close_client(client: aioredis.Redis) -> None:
    try:
        await client.aclose(close_connection_pool=True)
    except (RedisError, OSError):
        pass


async def _close_pubsub(pubsub: Any) -> None:
    close = getattr(pubsub, "aclose", None) or pubsub.close
    try:
        await close()
    except (RedisError, OSError):
        pass
