"""A small WebSocket signaling server and its client: how a client and a worker find each other.

Peers join a *room* and exchange opaque JSON payloads (SDP offers and answers) through the
server; after that the WebRTC data channel carries everything. One concern per module:

* :mod:`~rtcxfer.net.signaling.messages`: the wire protocol, sans-IO: every message as a
  typed object (:class:`Register`, :class:`Registered`, :class:`PeerJoined`, :class:`Relay`,
  ...), the error codes, the codec;
* :mod:`~rtcxfer.net.signaling.handshake`: rtcxfer's own relayed payloads (SDP offer, answer,
  error), sans-IO;
* :mod:`~rtcxfer.net.signaling.rooms`: the server's book of rooms, registrations, worker
  descriptions and per-address counts, behind an interface a shared store implements;
* :mod:`~rtcxfer.net.signaling.redis_rooms`: that book in Redis, shared by replicas of the
  server (``rtcxfer signal --redis``); the only module that imports ``redis``;
* :mod:`~rtcxfer.net.signaling.server`: :class:`SignalingServer` (sockets, limits, relay);
* :mod:`~rtcxfer.net.signaling.client`: :class:`SignalingClient`, whose ``receive()`` returns
  :data:`RoomEvent` objects, through the first of several server URLs that answers;
* :mod:`~rtcxfer.net.signaling.sockets`: close codes and a bounded close, for both sides;
* :mod:`~rtcxfer.net.signaling.tls`: TLS contexts for ``wss://`` (the server's certificate, a
  client's private CA).

What most code needs is re-exported here (``from rtcxfer.net.signaling import SignalingClient``);
the error codes and the other message types are in :mod:`~rtcxfer.net.signaling.messages`.
"""

from rtcxfer.net.signaling.client import (
    SignalingClient,
    SignalingServerError,
    SignalingTimeoutError,
    SignalingTlsError,
    connect_directly,
)
from rtcxfer.net.signaling.messages import PeerJoined, PeerLeft, PeerUpdated, Relay, RoomEvent
from rtcxfer.net.signaling.server import DEFAULT_PORT, SignalingServer, run_signaling_server

__all__ = [
    "DEFAULT_PORT",
    "PeerJoined",
    "PeerLeft",
    "PeerUpdated",
    "Relay",
    "RoomEvent",
    "SignalingClient",
    "SignalingServer",
    "SignalingServerError",
    "SignalingTimeoutError",
    "SignalingTlsError",
    "connect_directly",
    "run_signaling_server",
]
