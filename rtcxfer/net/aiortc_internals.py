"""Every aiortc and aioice internal rtcxfer relies on, in one module, each behind a probe or a fallback.

aiortc and aioice have no public way to do what the functions below do. Nothing else in rtcxfer
reads or writes a private name of either library, or leans on their internal layout:
:mod:`rtcxfer.net.peer` (the only other module that imports aiortc) calls these functions. The
day aiortc offers a setting for one of them, its part of this file is what goes.

Checked in the source of aiortc 1.9.0 to 1.16.0 and aioice 0.9.0 to 0.10.2 and 0.13.0, and run (the tests of
``tests/net/test_rtc.py``) against aiortc 1.9.0 with aioice 0.10.2 on Python 3.10 (the ``oldest`` tox
environment) and aiortc 1.16.0 with aioice 0.13.0.

**One connection's facts.** :func:`dtls_transport` and :func:`ice_transport` walk the chain under a
data channel (public attributes; the layout, one SCTP over one DTLS over one ICE transport, is what
is relied on); :func:`remote_max_message_size` reads the limit aiortc enforces on ``send``;
:func:`peer_certificate` the certificate the peer really presented in the DTLS handshake;
:func:`local_host_addresses` and :func:`remote_candidate_addresses` the addresses of this
connection's ICE candidates, for transports that open connections of their own.

**Host candidates of one connection.** :func:`restrict_host_candidates` makes one peer
connection gather host candidates on the given addresses only (127.0.0.1 for a loopback-only
peer), leaving every other connection in the process as it is: one connection's aioice objects
get their own copy of the gathering method, whose globals resolve ``get_host_addresses`` to
those addresses. :func:`host_restriction_unsupported_reason` is its probe; where it fails the
restriction raises :class:`UnsupportedAiortcError` rather than let a loopback-only peer gather
elsewhere.

**ICE across networks.** :func:`watch_ice` (before gathering, on a connection that is not
loopback-only) makes aioice keep why a TURN allocation or a STUN query failed (a 401 from the
TURN server, no answer), which it otherwise drops, and keeps it from pairing its relay candidates
with the peer's private host addresses: coturn 4.6.1 closes a whole allocation when a relayed
send to an address it has no route to fails, which took every relayed pair down with it.
It also makes the connection send on the nominated pair that uses TURN relays least
(:func:`prefer_own_relay`: aioice sends on whichever check succeeded last, and coturn drops
bursts sent straight into a relayed address). :func:`local_gathering` reads what was gathered
(:class:`~rtcxfer.net.ice_paths.Gathering`) and :func:`selected_ice_path` the pair ICE
nominated (:class:`~rtcxfer.net.ice_paths.IcePath`);
:func:`ice_watch_unsupported_reason` is the probe (where it fails, ICE runs as aioice does it,
and failures are diagnosed without the allocation's error).

**SCTP packet size between two rtcxfer peers: large packets, in datagrams the path carries.**

aiortc sizes every SCTP packet for a small path MTU (1189 bytes from aiortc 1.16, for the
smallest IPv6 one; 1228 before), and each packet costs Python work on both sides (a DTLS
record, SCTP parsing, a SACK, reassembly). Packets of one DTLS record (16 KiB) move about 10x
the bytes per second; packets of four records in one datagram (:data:`MAX_PACKET_SIZE`,
:func:`_records_in_one_datagram`) cost about 0.7x the CPU per byte of those again (fewer
datagrams, wake-ups, SCTP packets and SACKs). Between machines such a datagram leaves as IP fragments, and a path that
drops fragments (many NATs and firewalls) swallows every one of them: the association stalls.

The mechanism (packetization-layer path MTU discovery, RFC 8899 section 4 for SCTP):

1. A peer that reads large packets (its DTLS buffers widened, and it joins pieces, below) says
   so in its SDP with ``a=x-rtcxfer-sctp-packet:65024`` (16384 from rtcxfer before issue 25,
   which reads one record per datagram: each side sends at most the smaller size). Other
   endpoints ignore the unknown
   attribute (RFC 4566); without it from the remote nothing here happens, so a stock WebRTC
   peer sees no difference: no probe, no large packet. (A stock aiortc reads at most 1500 bytes
   of a DTLS record and writes a record larger than that in 1500-byte pieces, so it can neither
   take a large packet nor answer a large probe; tried on aiortc 1.16, probes of 4-16 KiB leave
   its DTLS out of step and the association stalls. Probing is therefore only for peers that
   advertise.)
2. Two such peers send SCTP packets of up to 65024 bytes, each in datagrams of the largest size the path
   is known to carry: a packet larger than that crosses in pieces, each its own DTLS record in
   its own datagram, which the peer joins before its SCTP sees the packet (:data:`_PIECE_MAGIC`:
   source port 0, which no SCTP packet carries). Losing a piece loses the packet, which SCTP
   resends, as with IP fragments, but no middlebox can tell pieces from other datagrams. The
   datagram size starts at aiortc's own packet size, which every path carries.
3. Once the association is up, each side sends padded HEARTBEAT chunks of every size in
   :data:`PROBE_SIZES` at once; the peer echoes each one in a HEARTBEAT-ACK of the same size
   (RFC 9260 section 8.3), so an acknowledged probe proves that datagrams of that size cross
   the path both ways and through the peer's receive path. The datagram size becomes the
   largest acknowledged one (at once, as each answer comes); probes still unanswered after
   :data:`PROBE_TIMEOUT` are reported as lost. Where the path passes IP fragments, that is
   16 KiB: one datagram per packet, the kernel fragments and joins it.
4. A black hole later on (the path stops carrying what it carried): a retransmission timeout
   while datagrams are larger than stock sends :data:`BLACK_HOLE_PROBES` probes of the size in
   use; if none is answered within :data:`BLACK_HOLE_PROBE_TIMEOUT`, datagrams are cut to the
   stock size from then on (aiortc's minimum RTO is 1 s, so within 2 s of the loss), the
   packets in flight included, and the path is probed again after
   :data:`REPROBE_AFTER_BLACK_HOLE` seconds. A timeout from congestion is answered by the
   probes and changes nothing. Probes run again every :data:`REPROBE_INTERVAL` seconds while
   the datagram size is below the packet size.

On loopback the first probe round confirms 16 KiB within a millisecond or two: the special case
earlier versions had for loopback is this mechanism's easy case. Through a TURN relay (coturn
relays at most 16380 bytes a datagram) the probe of :data:`RELAY_PACKET_SIZE` is the largest
answered, and packets of that size cross whole; the relay's own socket gets the wide receive
buffer, and :func:`speed_up_relayed_sends` sends through a bound TURN channel without aioice's
task per datagram.

aiortc has no setting for any of this: the size is the module constant ``USERDATA_MAX_LENGTH``
and the DTLS buffer sizes are literals (1500) in two methods. Instead of patching the modules,
which would change every peer in the process, one connection's transports get copies of the few
methods involved, bound to the instance, reading the size from a dictionary of their own
(:func:`tuning_unsupported_reason` is the probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import inspect
import itertools
import os
import socket
import ssl
import struct
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aioice
import aioice.ice
import aioice.stun
import aioice.turn
import aiortc.rtcdtlstransport
import aiortc.rtcsctptransport
import attrs

from rtcxfer.log import logger
from rtcxfer.net.ice_paths import Endpoint, Gathering, GatheringError, IcePath, count_kinds, relay_can_reach
from rtcxfer.protocol.errors import RtcxferError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from aiortc import RTCDataChannel, RTCDtlsTransport, RTCIceTransport, RTCPeerConnection
    from cryptography import x509

__all__ = [
    "ATTRIBUTE",
    "MAX_PACKET_SIZE",
    "PROBE_SIZES",
    "RECORD_SIZE",
    "RELAY_PACKET_SIZE",
    "STOCK_PACKET_SIZE",
    "PacketSize",
    "PacketSizer",
    "StunAnswer",
    "TurnAllocation",
    "UnsupportedAiortcError",
    "advertise",
    "dtls_transport",
    "host_restriction_unsupported_reason",
    "ice_transport",
    "ice_watch_unsupported_reason",
    "local_candidate_addresses",
    "local_gathering",
    "local_host_addresses",
    "peer_certificate",
    "prefer_own_relay",
    "remote_candidate_addresses",
    "remote_max_message_size",
    "remote_packet_size",
    "restrict_host_candidates",
    "sctp_user_data_per_packet",
    "selected_ice_path",
    "selected_remote_candidate",
    "speed_up_relayed_sends",
    "stun_bindings",
    "tuning_supported",
    "tuning_unsupported_reason",
    "turn_allocation",
    "watch_ice",
]


class UnsupportedAiortcError(RtcxferError):
    """This aiortc or aioice lacks an internal that rtcxfer needs for what was asked (the
    message says which, and in which version)."""


def _aiortc_version() -> str:
    return getattr(aiortc, "__version__", "of unknown version")


def _aioice_version() -> str:
    return getattr(aioice, "__version__", "of unknown version")


# --------------------------------------------------------------------------- one connection's facts


def dtls_transport(channel: RTCDataChannel) -> RTCDtlsTransport:
    """The DTLS transport a data channel runs over: ``channel.transport`` (its
    ``RTCSctpTransport``), then that one's ``transport``.

    Public attributes of aiortc's ORTC-style API; what is relied on is the layout (aiortc 1.9 to
    1.16): one SCTP transport over one DTLS transport over one ICE transport per connection.
    """
    return channel.transport.transport


def ice_transport(channel: RTCDataChannel) -> RTCIceTransport:
    """The ICE transport under a data channel (see :func:`dtls_transport`)."""
    return dtls_transport(channel).transport


def remote_max_message_size(channel: RTCDataChannel, fallback: int) -> int:
    """The largest message aiortc lets ``channel`` send (0: no limit).

    aiortc 1.16 keeps the remote's ``a=max-message-size`` in the private
    ``RTCSctpTransport._remote_max_message_size`` (65536 until SCTP starts, which is before the
    channel opens) and refuses larger messages with ``ValueError``; reading it keeps the caller's
    check and aiortc's in agreement. aiortc 1.9 to 1.15 have no such attribute (and no limit of
    their own): ``fallback``, the value the caller read in the remote's SDP, is returned then.
    """
    return getattr(channel.transport, "_remote_max_message_size", fallback)


def peer_certificate(channel: RTCDataChannel) -> x509.Certificate | None:
    """The certificate the peer really presented in the DTLS handshake of ``channel``'s
    connection; None before the handshake.

    aiortc shows only the fingerprints the peer's SDP announced; the certificate is in the
    pyOpenSSL connection kept in the private ``RTCDtlsTransport._ssl`` (aiortc 1.9 to 1.16).
    pyOpenSSL 25 (which aiortc 1.11 on require) gives a ``cryptography`` certificate with
    ``as_cryptography=True``; aiortc 1.9 and 1.10 accept pyOpenSSL 24.0, which has no such
    argument (tried): its ``X509`` is converted instead.
    """
    connection = getattr(dtls_transport(channel), "_ssl", None)
    if connection is None:
        return None
    try:
        return connection.get_peer_certificate(as_cryptography=True)
    except TypeError:  # no as_cryptography (pyOpenSSL 24.0)
        certificate = connection.get_peer_certificate()
        return certificate.to_cryptography() if certificate is not None else None


def local_host_addresses(channel: RTCDataChannel) -> tuple[str, ...]:
    """The addresses of this connection's own ICE host candidates, in the order gathered,
    each once (empty before gathering: aiortc gathers in ``setLocalDescription``).

    Public API (``RTCIceGatherer.getLocalCandidates``) under :func:`ice_transport`'s layout.
    """
    gatherer = ice_transport(channel).iceGatherer
    host = (candidate.ip for candidate in gatherer.getLocalCandidates() if candidate.type == "host")
    return tuple(dict.fromkeys(address for address in host if address))


def remote_candidate_addresses(channel: RTCDataChannel) -> frozenset[str]:
    """The IP addresses of the remote peer's ICE candidates (empty before ICE started).

    Public API (``RTCIceTransport.getRemoteCandidates``) under :func:`ice_transport`'s layout.
    """
    return frozenset(candidate.ip for candidate in ice_transport(channel).getRemoteCandidates() if candidate.ip)


# --------------------------------------------------------------------------- host candidates of one connection


def host_restriction_unsupported_reason() -> str | None:
    """Why this aioice cannot restrict one connection's host candidates, or None when it can
    (aioice 0.9.0 to 0.10.2 and 0.13.0 can, read in their source): :func:`restrict_host_candidates` needs
    ``Connection.gather_candidates`` to be a coroutine that looks ``get_host_addresses`` up in
    its module's globals."""
    gather = getattr(aioice.ice.Connection, "gather_candidates", None)
    if gather is None or not inspect.iscoroutinefunction(gather):
        return f"aioice {_aioice_version()}'s Connection has no gather_candidates coroutine"
    if not any(op.opname == "LOAD_GLOBAL" and op.argval == "get_host_addresses" for op in dis.get_instructions(gather)):
        return f"aioice {_aioice_version()}'s Connection.gather_candidates does not look up get_host_addresses"
    return None


def _host_addresses_only(addresses: tuple[str, ...]) -> Callable[..., list[str]]:
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        # aioice's own version lists every interface but skips 127.0.0.1 and ::1.
        return [address for address in addresses if (use_ipv6 if ":" in address else use_ipv4)]

    return get_host_addresses


def restrict_host_candidates(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Make every ICE gatherer ``pc`` has so far gather host candidates on ``addresses`` only
    (those of the IP versions aioice asks for); no other connection in the process changes.

    Call it right before each ``setLocalDescription``: aiortc gathers there, on the ICE
    transports it has made by then (the offerer's once its data channel exists, the answerer's
    once the offer is set). Idempotent.

    aioice's ``Connection.gather_candidates`` looks up the module global ``get_host_addresses``
    when it runs. Each aioice ``Connection`` of ``pc`` gets its own copy of that method, bound to
    it, whose globals are a copy of the module's (taken now) with ``get_host_addresses``
    returning ``addresses``. The connections are reached through ``RTCPeerConnection.__iceTransports``
    (the set aiortc gathers) and ``RTCIceGatherer._connection`` (aiortc 1.9 to 1.16).

    Raises :class:`UnsupportedAiortcError`, changing nothing, when aioice or aiortc lacks one of
    these (:func:`host_restriction_unsupported_reason`) or when one of the gatherers has
    started gathering already.
    """
    wanted = tuple(addresses)

    def refusal(why: str) -> UnsupportedAiortcError:
        return UnsupportedAiortcError(f"cannot restrict one connection's host candidates: {why}")

    reason = host_restriction_unsupported_reason()
    if reason is not None:
        raise refusal(reason)
    transports = getattr(pc, "_RTCPeerConnection__iceTransports", None)
    if not isinstance(transports, set):
        raise refusal(f"aiortc {_aiortc_version()}'s RTCPeerConnection has no __iceTransports set")
    pending = []
    for transport in transports:
        connection = getattr(getattr(transport, "iceGatherer", None), "_connection", None)
        if not isinstance(connection, aioice.ice.Connection):
            raise refusal(f"aiortc {_aiortc_version()}'s RTCIceGatherer has no aioice _connection")
        if getattr(connection, "_rtcxfer_host_addresses", None) == wanted:
            continue
        if connection.local_candidates or getattr(connection, "_local_candidates_start", False):
            raise refusal("this connection has gathered them already")
        pending.append(connection)
    if not pending:
        return
    namespace = dict(vars(aioice.ice))
    namespace["get_host_addresses"] = _host_addresses_only(wanted)
    gather = _clone(aioice.ice.Connection.gather_candidates, globals_=namespace)
    for connection in pending:
        connection.gather_candidates = types.MethodType(gather, connection)
        connection._rtcxfer_host_addresses = wanted
    logger.debug("host candidates of this connection restricted to {}", ", ".join(wanted))


# ------------------------------------------------------------------------ ICE: gathering, relay pairs, chosen pair


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """The aioice connections of ``pc`` (one, under a bundled data channel), or none where
    aiortc's layout is not the one relied on (``RTCPeerConnection.__iceTransports``,
    ``RTCIceGatherer._connection``, aiortc 1.9 to 1.16)."""
    transports = getattr(pc, "_RTCPeerConnection__iceTransports", None)
    if not isinstance(transports, set):
        return []
    connections = (getattr(getattr(t, "iceGatherer", None), "_connection", None) for t in transports)
    return [c for c in connections if isinstance(c, aioice.ice.Connection)]


def ice_watch_unsupported_reason() -> str | None:
    """Why this aioice's ICE cannot be watched and steered by :func:`watch_ice`, or None when it
    can (aioice 0.13.0, read in its source): ``Connection.get_component_candidates`` must be a
    coroutine that looks ``relayed_candidate`` and ``server_reflexive_candidate`` up in its
    module's globals, and ``Connection._pair_remote_candidate`` must pair one remote candidate
    into ``Connection._check_list``."""
    gather = getattr(aioice.ice.Connection, "get_component_candidates", None)
    if gather is None or not inspect.iscoroutinefunction(gather):
        return f"aioice {_aioice_version()}'s Connection has no get_component_candidates coroutine"
    names = {op.argval for op in dis.get_instructions(gather) if op.opname == "LOAD_GLOBAL"}
    missing = {"relayed_candidate", "server_reflexive_candidate"} - names
    if missing:
        return f"aioice {_aioice_version()}'s get_component_candidates does not call {', '.join(sorted(missing))}"
    if not callable(getattr(aioice.ice.Connection, "_pair_remote_candidate", None)):
        return f"aioice {_aioice_version()}'s Connection has no _pair_remote_candidate"
    if not callable(getattr(aioice.ice.Connection, "check_complete", None)):
        return f"aioice {_aioice_version()}'s Connection has no check_complete"
    return None


def _gathering_error(error: BaseException) -> GatheringError:
    response = getattr(error, "response", None)
    code = getattr(response, "error_code", None) if response is not None else None
    if isinstance(error, asyncio.CancelledError):
        return GatheringError(None, "no answer within the 5 s of gathering")
    if code is not None:
        reason = response.attributes.get("ERROR-CODE", (code, ""))[1]
        return GatheringError(int(code), f"{code} {reason}".strip())
    if type(error).__name__ == "TransactionTimeout":
        return GatheringError(None, "no answer")
    if isinstance(error, ConnectionRefusedError):
        return GatheringError(None, "connection refused")
    return GatheringError(None, f"{type(error).__name__}: {error}"[:200])


def _recording(function: Callable[..., Any], errors: dict[str, GatheringError], key: str) -> Callable[..., Any]:
    """``function`` (an aioice coroutine function), keeping in ``errors[key]`` why it failed
    (the first failure): aioice drops it."""

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        try:
            return await function(*args, **kwargs)
        except (Exception, asyncio.CancelledError) as error:
            errors.setdefault(key, _gathering_error(error))
            raise

    return recorded


def _unreachable_relay_pair(pair: Any) -> bool:
    local, remote = pair.local_candidate, pair.remote_candidate
    if local.type != "relay" or remote.type != "host":
        return False
    return not relay_can_reach(local.host, getattr(remote, "_network_host", None) or remote.host)


def _pairing_reachable_only(pair_remote: Callable[[Any], None]) -> Callable[..., None]:
    def pair_remote_candidate(self: Any, remote_candidate: Any) -> None:
        pair_remote(remote_candidate)
        dropped = [p for p in self._check_list if p.task is None and _unreachable_relay_pair(p)]
        for pair in dropped:
            self._check_list.remove(pair)
            logger.debug("ICE: no check from relay {}:{} to the peer's host address {} (no TURN server outside "
                         "its network reaches it)", pair.local_candidate.host, pair.local_candidate.port,
                         pair.remote_candidate.host)

    return pair_remote_candidate


def _relay_use(pair: Any, relayed: set[tuple[str, int]]) -> int:
    """How a pair uses TURN relays, best first: 0 none; 1 this side's own relay, into the
    peer's own address; 2 relay to relay; 3 straight into the peer's relayed address.
    ``relayed``: the peer's relayed addresses (a peer-reflexive candidate learnt from a check
    the peer sent through its relay is one of them)."""
    local_relay = pair.local_candidate.type == "relay"
    remote = pair.remote_candidate
    remote_relay = remote.type == "relay" or (remote.host, remote.port) in relayed
    return {(False, False): 0, (True, False): 1, (True, True): 2, (False, True): 3}[(local_relay, remote_relay)]


def prefer_own_relay(connection: Any) -> None:
    """Make ``connection`` (an aioice ``Connection``) send on the nominated pair that uses TURN
    relays least and never into the peer's relayed address when another nominated pair works.

    With aggressive nomination (aioice's, as the controlling agent), every check that succeeds
    nominates its pair and aioice sends on the last one: between two peers behind symmetric
    NATs, a pair through this side's own relay and a pair straight into the peer's relayed
    address both succeed within a millisecond, and either may come last. They differ at the
    TURN server: coturn 4.6.1 reads a relayed address through a socket with a 64 KiB receive
    buffer, while its listening port (where a client's own allocation takes its datagrams) has
    4 MiB; a burst into a relayed address while coturn waits for the CPU is lost (NAT bed,
    `nstat`: 863-915 datagrams per 256 MiB, and rtc-chunked at 79-121 MB/s against 170-184
    through its own relay). The peer receives on any pair, so each side choosing is enough.
    """
    check_complete = connection.check_complete

    def checked(pair: Any) -> None:
        check_complete(pair)
        nominated = getattr(connection, "_nominated", None)
        chosen = nominated.get(pair.component) if isinstance(nominated, dict) else None
        if chosen is None:
            return
        relayed = {(c.host, c.port) for c in connection.remote_candidates if c.type == "relay"}
        succeeded = aioice.ice.CandidatePair.State.SUCCEEDED
        valid = [
            p for p in connection._check_list
            if p.component == pair.component and p.nominated and p.state == succeeded
        ]  # fmt: skip
        best = min(valid, key=lambda p: _relay_use(p, relayed), default=chosen)
        if _relay_use(best, relayed) < _relay_use(chosen, relayed):
            nominated[pair.component] = best
            logger.debug("ICE: sending on {} rather than {} (TURN relays used less)", best, chosen)

    connection.check_complete = checked


def watch_ice(pc: RTCPeerConnection) -> bool:
    """Before ``setLocalDescription`` (where aiortc gathers): make each aioice connection of
    ``pc`` keep why a TURN allocation or a STUN query failed (:func:`local_gathering` reports
    it; aioice drops the error), and pair its relay candidates only with peer addresses a TURN
    server can reach (:func:`~rtcxfer.net.ice_paths.relay_can_reach`). Returns whether it could
    (:func:`ice_watch_unsupported_reason`); idempotent.

    Why the pairing: aioice pairs a relay candidate with every remote candidate, the peer's
    private host addresses too, and sends a check there through the TURN server. Where that
    server has no route to the address, coturn 4.6.1's relay send fails and coturn closes the
    whole allocation ("udp send: Network is unreachable", the session "closed (2nd stage),
    reason: general"): every later channel bind and check on it then fails (438, 400, 437), and
    so does every relayed pair. A check the peer starts from such an address still gets its
    triggered check through the relay (aioice makes that pair itself).

    Each connection gets its own copy of ``get_component_candidates`` whose globals wrap
    ``relayed_candidate`` and ``server_reflexive_candidate``, and a ``_pair_remote_candidate``
    that drops the unreachable relay pairs it just made.
    """
    reason = ice_watch_unsupported_reason()
    if reason is not None:
        logger.debug("ICE gathering errors and relay pairs not watched: {}", reason)
        return False
    for connection in _ice_connections(pc):
        if getattr(connection, "_rtcxfer_gathering_errors", None) is not None:
            continue
        errors: dict[str, GatheringError] = {}
        namespace = dict(vars(aioice.ice))
        namespace["relayed_candidate"] = _recording(aioice.ice.relayed_candidate, errors, "relay")
        namespace["server_reflexive_candidate"] = _recording(aioice.ice.server_reflexive_candidate, errors, "srflx")
        gather = _clone(aioice.ice.Connection.get_component_candidates, globals_=namespace)
        connection.get_component_candidates = types.MethodType(gather, connection)
        connection._pair_remote_candidate = types.MethodType(
            _pairing_reachable_only(connection._pair_remote_candidate), connection
        )
        prefer_own_relay(connection)
        connection._rtcxfer_gathering_errors = errors
    return True


def _endpoint(address: Any) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None


def local_gathering(pc: RTCPeerConnection) -> Gathering | None:
    """What ``pc`` gathered: its candidates of each kind, the STUN and TURN server aioice used
    (``Connection.stun_server``, ``turn_server``, ``turn_transport``: aiortc keeps only the
    first of each), whether it gathered relay candidates only, and why an allocation or a STUN
    query failed (where :func:`watch_ice` was on). None where aiortc's layout is not known."""
    connections = _ice_connections(pc)
    if not connections:
        return None
    connection = connections[0]
    turn = _endpoint(getattr(connection, "turn_server", None))
    policy = getattr(connection, "_transport_policy", None)
    errors = getattr(connection, "_rtcxfer_gathering_errors", None) or {}
    return Gathering(
        **count_kinds(candidate.type for candidate in connection.local_candidates),
        stun=_endpoint(getattr(connection, "stun_server", None)),
        turn=turn,
        turn_transport=getattr(connection, "turn_transport", "udp") if turn else None,
        relay_only=policy is not None and getattr(policy, "name", "") == "RELAY",
        relay_error=errors.get("relay"),
        srflx_error=errors.get("srflx"),
    )


def selected_ice_path(pc: RTCPeerConnection) -> IcePath | None:
    """The candidate pair ICE nominated for ``pc``'s (first) component, or None before ICE
    completed: aioice's ``Connection._nominated`` (component -> ``CandidatePair``)."""
    for connection in _ice_connections(pc):
        nominated = getattr(connection, "_nominated", None)
        pair = nominated.get(1) if isinstance(nominated, dict) else None
        if pair is None:
            continue
        local, remote = pair.local_candidate, pair.remote_candidate
        return IcePath(
            Endpoint(local.type, local.host, local.port),
            Endpoint(remote.type, remote.host, remote.port),
            getattr(connection, "turn_transport", "udp") if local.type == "relay" else None,
        )
    return None


# --------------------------------------------------------------------------- SCTP packet size

ATTRIBUTE = "x-rtcxfer-sctp-packet"
"""SDP attribute (``a=x-rtcxfer-sctp-packet:<bytes>``) by which an rtcxfer peer says it reads
SCTP packets up to that size and answers probes of it."""

# RFC 9260 section 3: what aiortc adds around a DATA chunk's user data (12-byte common header,
# 16-byte DATA chunk header). The protocol's values, not aiortc's names for them: aiortc has
# both names only from 1.16, and 1.16 needs Python 3.11.
_SCTP_COMMON_HEADER = 12
_SCTP_DATA_CHUNK_HEADER = 16

STOCK_PACKET_SIZE = getattr(
    aiortc.rtcsctptransport,
    "SCTP_MAX_PACKET_LENGTH",
    aiortc.rtcsctptransport.USERDATA_MAX_LENGTH + _SCTP_COMMON_HEADER + _SCTP_DATA_CHUNK_HEADER,
)
"""aiortc's own SCTP packet size, which every path carries: 1189 bytes from aiortc 1.16 on (it
fits the minimum IPv6 MTU), 1228 before (1200 bytes of user data)."""

RECORD_SIZE = 16384
"""DTLS carries at most 2**14 plaintext bytes in one record."""

MAX_PACKET_SIZE = 65024
"""The largest SCTP packet two rtcxfer peers send: four DTLS records in one UDP datagram (DTLS
allows several records in a datagram, RFC 6347 section 4.1.1), whose plaintexts the receiver
joins into the packet. 65024 bytes and four records' overhead (at most 65 bytes each) stay
under UDP's 65507. A peer that advertises 16384 (rtcxfer before this) gets one record per
datagram, as before."""

RELAY_PACKET_SIZE = 16320
"""The largest SCTP packet a TURN relay is known to pass in one datagram: coturn 4.6.1 relays
ChannelData of at most 16380 bytes (measured on the NAT bed, ``tests/net/test_relayed_sends.py``:
16380 crosses; a larger datagram is dropped without a word, or cut to 16380 bytes on its way to a
client over TCP), and 16320 bytes with DTLS's 37 (AES-GCM) stay under it. 16384-byte packets
would cross there only in two 8 KiB pieces."""

PROBE_SIZES = (MAX_PACKET_SIZE, RECORD_SIZE, RELAY_PACKET_SIZE, 8192, 4096, 1400)
"""Sizes probed, largest first. 1400 still fits a 1500-byte MTU with IPv4 or IPv6, UDP and DTLS
overhead (37 bytes for AES-GCM) around it: on a path that drops fragments, the most it carries."""

PROBE_TIMEOUT = 1.0
"""Seconds to wait for the acknowledgements of one probe round (a LAN answers in milliseconds)."""

BLACK_HOLE_PROBES = 3
BLACK_HOLE_PROBE_TIMEOUT = 0.5
"""After a retransmission timeout (aiortc's RTO is at least 1 s), this many probes of the size in
use, and this long to wait for any answer: a black hole is noticed within 2 s of the loss."""

SOCKET_RECEIVE_BUFFER = 4 * 1024 * 1024
"""UDP receive buffer asked for between two rtcxfer peers (see :func:`_widen_receive_buffers`)."""

REPROBE_AFTER_BLACK_HOLE = 10.0
REPROBE_INTERVAL = 60.0

# What the widened DTLS methods read at once: a whole UDP datagram, so that one record (its
# 2**14 plaintext bytes plus header, explicit nonce and tag) is never split across two reads.
_DTLS_BUFFER = 65536
_AIORTC_DTLS_BUFFER = 1500
_SCTP_METHODS = ("_send", "_transmit", "_receive_sack_chunk", "_t3_expired")
_DTLS_METHODS = ("_recv_next", "_write_ssl")

_UNDECIDED = "not decided yet"
_HEARTBEAT_INFO = 1  # RFC 9260 section 3.3.5: the Heartbeat Info parameter type
_PROBE_TAG = b"rtcxfer-pmtu-probe"
# SCTP common header (12) + chunk header (4) + parameter header (4): what a probe adds to its info.
_PROBE_OVERHEAD = 20

# A piece of an SCTP packet too large for the current size: magic (source port 0 and "rx"),
# packet number, piece index, piece count. No SCTP packet has source port 0 (RFC 9260 3.1).
_PIECE_MAGIC = b"\x00\x00rx"
_PIECE_HEADER = struct.Struct("!4sIBB")
_CHANNEL_DATA_HEADER = struct.Struct("!HH")  # RFC 8656 section 12.4: channel number, length
_PIECES_KEPT = 32  # packets being joined at once; older ones are given up (SCTP resends)
# Pieces of one packet: a 65024-byte packet cut to 1400-byte datagrams needs 47, to the stock
# size 57. With these limits a peer can make us hold at most 32 * 64 * 16 KiB = 32 MiB of pieces.
_MAX_PIECES = 64


def tuning_unsupported_reason() -> str | None:
    """Why this aiortc cannot take the tuning, or None when it can (aiortc 1.9 to 1.16 can):
    the tuning rewrites methods and constants by name and by literal, so an aiortc that changed
    them just runs at stock size."""
    sctp_module = aiortc.rtcsctptransport
    needed = ("USERDATA_MAX_LENGTH", "HeartbeatChunk", "HeartbeatAckChunk", "DataChunk", "serialize_packet")
    missing = [name for name in needed if not hasattr(sctp_module, name)]
    if missing:
        return f"the SCTP module has no {', '.join(missing)}"
    sctp_class = sctp_module.RTCSctpTransport
    dtls_class = aiortc.rtcdtlstransport.RTCDtlsTransport
    for name in _SCTP_METHODS:
        function = getattr(sctp_class, name, None)
        if function is None or "USERDATA_MAX_LENGTH" not in function.__code__.co_names:
            return f"RTCSctpTransport.{name} does not size packets by USERDATA_MAX_LENGTH"
    for name in ("_handle_data", "_send_chunk", "_receive_chunk", "_send_sack"):
        if not callable(getattr(sctp_class, name, None)):
            return f"RTCSctpTransport has no {name}"
    if not {"_sack_needed", "_sack_misordered", "_sack_duplicates"} <= set(sctp_class._send_sack.__code__.co_names):
        return "RTCSctpTransport._send_sack does not read _sack_needed, _sack_misordered and _sack_duplicates"
    for name in _DTLS_METHODS:
        function = getattr(dtls_class, name, None)
        if function is None or function.__code__.co_consts.count(_AIORTC_DTLS_BUFFER) != 1:
            return f"RTCDtlsTransport.{name} does not read {_AIORTC_DTLS_BUFFER}-byte buffers"
    send_data = getattr(dtls_class, "_send_data", None)
    if send_data is None or "_ssl" not in send_data.__code__.co_names or not hasattr(aiortc.rtcdtlstransport, "SSL"):
        return "RTCDtlsTransport._send_data does not write through _ssl (pyOpenSSL)"
    return None


#: Between two rtcxfer peers, a SACK for every this many packets received (RFC 9260 section 6.2:
#: "SHOULD generate a SACK for at least every second packet"; aiortc sends one for every packet),
#: at once when a gap or a duplicate shows, and at most :data:`SACK_DELAY` seconds late.
SACKS_EVERY = 2
SACK_DELAY = 0.02


def tuning_supported() -> bool:
    """Whether this aiortc has the methods and constants the tuning rewrites."""
    return tuning_unsupported_reason() is None


def sctp_user_data_per_packet(channel: RTCDataChannel) -> int | None:
    """The user data one SCTP packet of ``channel``'s connection carries now: aiortc cuts every
    message into DATA chunks of this many bytes, one chunk per packet, so a message of ``n``
    times it fills ``n`` packets and one byte more costs a whole packet more. None where it
    cannot be told (no SCTP transport yet, an aiortc whose ``_send`` does not size by it).

    aiortc's ``RTCSctpTransport._send`` reads the module constant ``USERDATA_MAX_LENGTH``
    (aiortc 1.9 to 1.16); between two rtcxfer peers it reads the copy in its own globals that
    :class:`PacketSizer` keeps at the size in use.
    """
    send = getattr(getattr(channel, "transport", None), "_send", None)
    function = getattr(send, "__func__", send)
    if function is None or "USERDATA_MAX_LENGTH" not in getattr(getattr(function, "__code__", None), "co_names", ()):
        return None
    size = function.__globals__.get("USERDATA_MAX_LENGTH")
    return size if isinstance(size, int) and size > 0 else None


def userdata_max_length(packet_size: int) -> int:
    """User data per DATA chunk in a packet of ``packet_size`` bytes (aiortc's own formula)."""
    return (packet_size - _SCTP_COMMON_HEADER - _SCTP_DATA_CHUNK_HEADER) // 4 * 4


# --------------------------------------------------------------------------- SDP


def remote_packet_size(sdp: str) -> int | None:
    """The size the remote says it reads (:data:`ATTRIBUTE`), or None (a stock endpoint)."""
    prefix = f"a={ATTRIBUTE}:"
    for line in sdp.splitlines():
        if line.startswith(prefix):
            try:
                size = int(line[len(prefix) :].strip())
            except ValueError:
                return None
            return size if size >= STOCK_PACKET_SIZE else None
    return None


def advertise(sdp: str, size: int = MAX_PACKET_SIZE) -> str:
    """``sdp`` with the attribute added to its application (data channel) section."""
    lines = sdp.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    in_application = False
    added = False
    for line in lines:
        if line.startswith("m="):
            if in_application and not added:
                out.append(f"a={ATTRIBUTE}:{size}{newline}")
                added = True
            in_application = line.startswith("m=application")
        out.append(line)
    if in_application and not added:
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] += newline
        out.append(f"a={ATTRIBUTE}:{size}{newline}")
    return "".join(out)


# --------------------------------------------------------------------------- copies of aiortc methods


def _clone(function: Any, *, globals_: dict | None = None, buffer: int | None = None) -> Any:
    code = function.__code__
    if buffer is not None:
        code = code.replace(co_consts=tuple(buffer if c == _AIORTC_DTLS_BUFFER else c for c in code.co_consts))
    clone = types.FunctionType(
        code,
        function.__globals__ if globals_ is None else globals_,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    clone.__kwdefaults__ = function.__kwdefaults__
    clone.__qualname__ = function.__qualname__
    return clone


def widen_dtls_buffers(dtls: Any, size: int = _DTLS_BUFFER) -> None:
    """Let one DTLS transport read and write records of up to ``size`` bytes (idempotent).

    Reading more than one record per datagram is valid DTLS; aiortc writes and reads one
    record per send. Done once the handshake is over, so that the handshake runs as stock.
    """

    def widen() -> None:
        if getattr(dtls, "_rtcxfer_buffer", None) == size:
            return
        for name in _DTLS_METHODS:
            function = getattr(type(dtls), name)
            setattr(dtls, name, types.MethodType(_clone(function, buffer=size), dtls))
        _records_in_one_datagram(dtls)
        dtls._rtcxfer_buffer = size

    if dtls.state == "connected":
        widen()
        return

    def on_state() -> None:
        if dtls.state == "connected":
            widen()

    dtls.on("statechange", on_state)


_DTLS_RECORD_HEADER = 13  # content type, version, epoch, sequence number, length (RFC 6347 4.1)


def _split_records(datagram: bytes) -> list[bytes]:
    """The DTLS records of one datagram, by their headers' lengths; the datagram whole when
    they do not add up (OpenSSL then judges it, as it would have)."""
    records = []
    at = 0
    while at + _DTLS_RECORD_HEADER <= len(datagram):
        end = at + _DTLS_RECORD_HEADER + int.from_bytes(datagram[at + 11 : at + 13], "big")
        if end > len(datagram):
            return [datagram]
        records.append(datagram[at:end])
        at = end
    return records if at == len(datagram) and records else [datagram]


def _records_in_one_datagram(dtls: Any) -> None:
    """One SCTP packet of up to :data:`MAX_PACKET_SIZE` bytes as several DTLS records in one
    datagram: sent as consecutive records that one ``_write_ssl`` (widened) flushes at once; read
    back record by record (OpenSSL reads a memory BIO in pieces of one record's buffer, which
    would cut the second record of a datagram) and joined into the packet (aiortc reads one
    record per datagram). Only between two rtcxfer peers: a peer gets packets above one record
    only when it advertised that it reads them, and datagrams are read as packets of several
    records only from a peer that advertised it sends them (:meth:`PacketSizer._install`);
    from any other peer, every datagram is read as aiortc reads it."""
    ssl = dtls._ssl
    write_bio, read_record = ssl.bio_write, ssl.recv
    send_one = dtls._send_data
    pending: list[bytes] = []

    def write_datagram(datagram: bytes) -> int:
        if not getattr(dtls, "_rtcxfer_join_records", False):  # a peer that sends one record a datagram
            return write_bio(datagram)
        records = _split_records(datagram)
        pending[:] = records[1:]
        return write_bio(records[0])

    def read_datagram(size: int) -> bytes:
        if not pending:
            return read_record(size)
        try:
            parts = [read_record(size)]
            while pending:
                write_bio(pending.pop(0))
                parts.append(read_record(size))
        finally:
            pending.clear()
        return b"".join(parts)

    async def send_packet(data: bytes) -> None:
        if len(data) <= RECORD_SIZE:
            await send_one(data)
            return
        if dtls.state != "connected":
            raise ConnectionError("Cannot send encrypted data, not connected")
        view = memoryview(data)
        for start in range(0, len(data), RECORD_SIZE):
            ssl.send(view[start : start + RECORD_SIZE].tobytes())
        await dtls._write_ssl()

    ssl.bio_write = write_datagram
    ssl.recv = read_datagram
    dtls._send_data = send_packet


def _widen_receive_buffers(sctp: Any) -> None:
    """Ask for :data:`SOCKET_RECEIVE_BUFFER` on the connection's UDP sockets.

    At 16 KiB a datagram, the kernel's default (about 208 KiB) holds a few milliseconds of a
    fast transfer: a receiver that loses the CPU that long drops datagrams (``RcvbufErrors``),
    and SCTP slows down to resend them. The kernel caps the request at ``net.core.rmem_max``.
    """
    try:
        protocols = sctp.transport.transport._connection._protocols
    except AttributeError:
        return
    for protocol in protocols:
        udp = getattr(protocol, "transport", None)
        if isinstance(udp, aioice.turn.TurnTransport):
            # A relayed candidate: the socket is the one to the TURN server, inside aioice's
            # TURN client; over TCP the kernel's own buffers grow as needed.
            speed_up_relayed_sends(udp)
            udp = getattr(getattr(udp, "_TurnTransport__inner_protocol", None), "transport", None)
        handle = udp.get_extra_info("socket") if udp is not None else None
        if handle is None or handle.type != socket.SOCK_DGRAM:
            continue
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RECEIVE_BUFFER)
            logger.debug("UDP receive buffer: {} bytes", handle.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        except OSError as error:
            logger.debug("cannot widen a UDP receive buffer: {}", error)


def speed_up_relayed_sends(relay: Any) -> bool:
    """Make ``relay`` (an aioice ``TurnTransport``) send each datagram at once where its TURN
    channel is bound and fresh; returns whether it could.

    aioice's ``sendto`` starts a task for every datagram (it may have to bind a channel
    first): an SCTP packet through a relay cost a task, its scheduling and a wake-up, a large
    share of a relayed transfer's CPU. Where the channel to ``addr`` is bound and needs no
    refresh, the ChannelData goes out in the call, as aioice's task would send it; everything
    else (binding, refreshing, a closing transport) still goes through aioice's ``sendto``.
    """
    inner = getattr(relay, "_TurnTransport__inner_protocol", None)
    stock_sendto = getattr(relay, "sendto", None)
    needed = ("peer_to_channel", "channel_refresh_at", "peer_connect_waiters", "_send", "transport")
    if inner is None or stock_sendto is None or not all(hasattr(inner, name) for name in needed):
        return False
    if getattr(relay, "_rtcxfer_fast_sends", False):
        return True
    peer_to_channel = inner.peer_to_channel
    refresh_at = inner.channel_refresh_at
    waiters = inner.peer_connect_waiters
    send = inner._send
    pack = _CHANNEL_DATA_HEADER.pack

    def sendto(data: bytes, addr: tuple[str, int]) -> None:
        channel = peer_to_channel.get(addr)
        if (
            channel is None
            or addr in waiters
            or time.time() > refresh_at.get(channel, 0.0)
            or getattr(relay, "_TurnTransport__close_task", None) is not None
            or inner.transport.is_closing()
        ):
            stock_sendto(data, addr)
            return
        send(pack(channel, len(data)) + data)

    relay.sendto = sendto
    relay._rtcxfer_fast_sends = True
    return True


@attrs.frozen
class PacketSize:
    """The SCTP packet size a connection sends, the datagram size the path is known to carry
    (smaller packets travel in pieces of that size), and why."""

    size: int
    datagram: int
    reason: str

    def describe(self) -> str:
        if self.datagram < self.size:
            return f"SCTP packets {self.size} bytes in {self.datagram}-byte datagrams ({self.reason})"
        return f"SCTP packets {self.size} bytes ({self.reason})"


class PacketSizer:
    """The packet size of one connection's SCTP transport: advertise, probe, use, fall back.

    Driven by ``rtcxfer.net.peer.PeerConnection``: :meth:`prepare` before our SDP leaves (then
    :meth:`advertise_in`), :meth:`remote_description` with the peer's SDP, :meth:`start` once
    the channel is open, :meth:`close` at the end. ``on_change`` is called with every new
    :class:`PacketSize` (synchronously; it must not raise).
    """

    def __init__(self, enabled: bool = True, on_change: Callable[[PacketSize], None] | None = None) -> None:
        unsupported = tuning_unsupported_reason() if enabled else None
        self._supported = enabled and unsupported is None
        if not enabled:
            self._disabled_reason: str | None = "disabled by PeerOptions"
        elif unsupported is not None:
            self._disabled_reason = f"large packets off: in aiortc {_aiortc_version()}, {unsupported}"
        else:
            self._disabled_reason = None
        self._on_change = on_change
        self._sctp: Any = None
        self._globals: dict[str, Any] | None = None
        self._limit = STOCK_PACKET_SIZE
        self._current = PacketSize(STOCK_PACKET_SIZE, STOCK_PACKET_SIZE, _UNDECIDED)
        self._settled = asyncio.Event()
        self._prepared = False
        self._task: asyncio.Task | None = None
        self._black_hole = asyncio.Event()
        self._check: asyncio.Task | None = None
        #: Retransmission timeouts seen (each one checked with probes when datagrams are large).
        self.retransmission_timeouts = 0
        self._probes: dict[bytes, tuple[int, asyncio.Future]] = {}
        self._piece_numbers = itertools.count()
        self._joining: OrderedDict[int, list[bytes | None]] = OrderedDict()
        #: Packets received that called for a SACK, and SACKs sent (with large packets on).
        self.packets_to_acknowledge = 0
        self.sacks_sent = 0
        #: Packets received since our last SACK, and the timer or task that sends a late one.
        self._unacknowledged = 0
        self._late_sack: asyncio.TimerHandle | asyncio.Task | None = None

    # -- state

    @property
    def current(self) -> PacketSize:
        return self._current

    @property
    def decided(self) -> bool:
        """True once any size was chosen for a reason (a confirmed probe, a stock peer...)."""
        return self._current.reason != _UNDECIDED

    @property
    def active(self) -> bool:
        """True when both sides read large packets and this side probes and adapts."""
        return self._globals is not None

    async def settled(self, timeout: float | None = None) -> PacketSize:
        """The size once the first decision is made (probes answered or given up)."""
        await asyncio.wait_for(self._settled.wait(), timeout)
        return self._current

    def _packet_for(self, datagram: int) -> int:
        """The SCTP packet size to send where the path carries datagrams of ``datagram`` bytes:
        the largest the peer reads when one datagram carries it; else the datagram's own size
        when that is nearly a whole DTLS record (a TURN relay's :data:`RELAY_PACKET_SIZE`); else
        one DTLS record's, in pieces.
        A packet that crosses in pieces is lost whole with any one of them, and its resend is as
        many pieces again: through a TURN relay under load, eight pieces a packet stalled
        transfers on retransmission timeouts where two did not."""
        if datagram >= self._limit:
            return self._limit
        if datagram >= RELAY_PACKET_SIZE:
            return datagram  # one record in one datagram: a TURN relay's, no pieces
        return min(self._limit, RECORD_SIZE)

    def _decide(self, datagram: int, reason: str, *, settle: bool = True) -> None:
        """Use datagrams of up to ``datagram`` bytes (the path carries them) from now on."""
        if self._globals is not None:
            packet = self._packet_for(datagram)
            # New messages are cut into chunks of this size; those queued already go in pieces.
            self._globals["USERDATA_MAX_LENGTH"] = userdata_max_length(packet)
        else:
            packet = STOCK_PACKET_SIZE
        decision = PacketSize(packet, min(datagram, packet), reason)
        changed = decision != self._current
        self._current = decision
        if settle:
            self._settled.set()
        if changed:
            logger.info("{}", self._current.describe())
            if self._on_change is not None:
                self._on_change(self._current)

    # -- SDP

    def prepare(self, sctp: Any) -> None:
        """Widen our DTLS buffers (once connected): we must read large records before we say so."""
        if not self._supported or self._prepared or sctp is None:
            return
        widen_dtls_buffers(sctp.transport)
        self._prepared = True

    def advertise_in(self, sdp: str) -> str:
        return advertise(sdp, MAX_PACKET_SIZE) if self._prepared else sdp

    def remote_description(self, sdp: str, sctp: Any) -> None:
        """Read the peer's offer or answer; switch to adaptive sizing if it reads large packets."""
        if self._disabled_reason is not None:
            self._decide(STOCK_PACKET_SIZE, self._disabled_reason)
            return
        remote = remote_packet_size(sdp)
        if remote is None or sctp is None:
            self._decide(STOCK_PACKET_SIZE, "the peer does not offer larger packets (a stock WebRTC endpoint)")
            return
        self._limit = min(remote, MAX_PACKET_SIZE)
        self._install(sctp)

    def _install(self, sctp: Any) -> None:
        if self._globals is not None:
            return
        self.prepare(sctp)
        module = aiortc.rtcsctptransport
        namespace = dict(vars(module))
        userdata = userdata_max_length(self._packet_for(STOCK_PACKET_SIZE))
        namespace["USERDATA_MAX_LENGTH"] = userdata
        for name in _SCTP_METHODS:
            setattr(sctp, name, types.MethodType(_clone(getattr(type(sctp), name), globals_=namespace), sctp))
        # aiortc starts the congestion window at 3 packets; the same at the larger size.
        sctp._cwnd = 3 * userdata
        if self._limit > RECORD_SIZE:
            # The peer sends packets of several DTLS records in one datagram (_records_in_one_datagram).
            sctp.transport._rtcxfer_join_records = True
        self._globals = namespace
        self._sctp = sctp
        self._current = PacketSize(self._packet_for(STOCK_PACKET_SIZE), STOCK_PACKET_SIZE, _UNDECIDED)
        sizer = self
        handle_data = sctp._handle_data
        send_chunk = sctp._send_chunk
        receive_chunk = sctp._receive_chunk
        t3_expired = sctp._t3_expired

        async def _handle_data(data: bytes) -> None:
            if data[:4] == _PIECE_MAGIC:
                data = sizer._join(data)
                if data is None:
                    return
            await handle_data(data)

        async def _send_chunk(chunk: Any) -> None:
            if isinstance(chunk, module.DataChunk) and len(chunk.user_data) > userdata_max_length(
                sizer._current.datagram
            ):
                await sizer._send_in_pieces(chunk)
            else:
                await send_chunk(chunk)

        async def _receive_chunk(chunk: Any) -> None:
            if isinstance(chunk, module.HeartbeatAckChunk) and sizer._probe_answered(chunk):
                return
            await receive_chunk(chunk)

        def _t3() -> None:
            sizer._on_retransmission_timeout()
            t3_expired()

        sctp._handle_data = _handle_data
        sctp._send_chunk = _send_chunk
        sctp._receive_chunk = _receive_chunk
        sctp._t3_expired = _t3
        sctp._send_sack = self._delayed_sack(sctp._send_sack)

    # -- acknowledgements: one SACK for every second packet, as RFC 9260 allows

    def _delayed_sack(self, send_sack: Callable[[], Any]) -> Callable[[], Any]:
        """aiortc's ``_send_sack`` (called after every packet that needs one) made to send at
        once only every :data:`SACKS_EVERY` packets, or when a gap or a duplicate shows; the
        others within :data:`SACK_DELAY` seconds. Each SACK costs both sides a DTLS record and
        a datagram: half as many SACKs are a large share of the per-packet work."""
        sctp = self._sctp

        async def delayed() -> None:
            self.packets_to_acknowledge += 1
            self._unacknowledged += 1
            if self._unacknowledged >= SACKS_EVERY or sctp._sack_misordered or sctp._sack_duplicates:
                await acknowledge()
            elif self._late_sack is None:
                self._late_sack = asyncio.get_running_loop().call_later(SACK_DELAY, late)

        async def acknowledge() -> None:
            self._unacknowledged = 0
            if isinstance(self._late_sack, asyncio.TimerHandle):
                self._late_sack.cancel()
                self._late_sack = None
            self.sacks_sent += 1
            await send_sack()

        def late() -> None:
            self._late_sack = asyncio.get_running_loop().create_task(late_sack())

        async def late_sack() -> None:
            try:
                if sctp._sack_needed and self._established():
                    self._unacknowledged = 0
                    self.sacks_sent += 1
                    await send_sack()
            except ConnectionError as error:  # DTLS closed under it: the connection is ending
                logger.debug("late SACK not sent: {}", error)
            finally:
                if self._late_sack is asyncio.current_task():
                    self._late_sack = None

        return delayed

    # -- pieces: packets larger than the datagrams the path is known to carry

    async def _send_in_pieces(self, chunk: Any) -> None:
        sctp = self._sctp
        packet = aiortc.rtcsctptransport.serialize_packet(
            sctp._local_port, sctp._remote_port, sctp._remote_verification_tag, chunk
        )
        room = self._current.datagram - _PIECE_HEADER.size
        count = -(-len(packet) // room)
        number = next(self._piece_numbers) & 0xFFFFFFFF
        for index in range(count):
            header = _PIECE_HEADER.pack(_PIECE_MAGIC, number, index, count)
            await sctp.transport._send_data(header + packet[index * room : (index + 1) * room])

    def _join(self, piece: bytes) -> bytes | None:
        # From the peer: anything malformed is dropped, as SCTP drops a bad packet.
        if len(piece) <= _PIECE_HEADER.size:
            return None
        _, number, index, count = _PIECE_HEADER.unpack_from(piece)
        if not index < count <= _MAX_PIECES or len(piece) - _PIECE_HEADER.size > MAX_PACKET_SIZE:
            return None
        parts = self._joining.get(number)
        if parts is None or len(parts) != count:
            parts = self._joining[number] = [None] * count
            while len(self._joining) > _PIECES_KEPT:
                self._joining.popitem(last=False)
        parts[index] = piece[_PIECE_HEADER.size :]
        if any(part is None for part in parts):
            return None
        del self._joining[number]
        packet = b"".join(parts)  # type: ignore[arg-type]
        return packet if len(packet) <= _DTLS_BUFFER else None

    # -- probing

    def start(self) -> None:
        """Start probing (the association must be up); idempotent, a no-op unless active."""
        if self._globals is None or self._task is not None:
            return
        # Now the sockets exist (an answerer gathers its candidates after reading the offer).
        _widen_receive_buffers(self._sctp)
        self._task = asyncio.get_running_loop().create_task(self._probe_loop())

    def close(self) -> None:
        for task in (self._task, self._check, self._late_sack):
            if task is not None:
                task.cancel()
        for _, future in self._probes.values():
            future.cancel()
        self._probes.clear()

    def _probe_answered(self, chunk: Any) -> bool:
        params = getattr(chunk, "params", None)
        if not params or params[0][0] != _HEARTBEAT_INFO or not params[0][1].startswith(_PROBE_TAG):
            return False
        key = params[0][1][len(_PROBE_TAG) : len(_PROBE_TAG) + 8]
        entry = self._probes.get(key)
        # Only an echo of the whole probe proves that its size came back through the path.
        if entry is not None and len(params[0][1]) == entry[0] - _PROBE_OVERHEAD and not entry[1].done():
            del self._probes[key]
            entry[1].set_result(entry[0])
            # Use a confirmed size at once; the round's verdict on larger ones comes later.
            if entry[0] > self._current.datagram:
                self._decide(entry[0], "path probe confirmed", settle=False)
        return True

    async def _send_probe(self, size: int) -> asyncio.Future:
        module = aiortc.rtcsctptransport
        nonce = os.urandom(8)
        future = asyncio.get_running_loop().create_future()
        self._probes[nonce] = (size, future)
        info = _PROBE_TAG + nonce
        chunk = module.HeartbeatChunk()
        chunk.params = [(_HEARTBEAT_INFO, info + bytes(size - _PROBE_OVERHEAD - len(info)))]
        # Straight to DTLS: a probe is never cut into pieces.
        await type(self._sctp)._send_chunk(self._sctp, chunk)
        return future

    async def probe(
        self, sizes: tuple[int, ...] = PROBE_SIZES, timeout: float = PROBE_TIMEOUT, *, first: bool = False
    ) -> int | None:
        """Probe every size in ``sizes`` (up to the peer's limit) at once; the largest answered
        (with ``first``, the first answered) within ``timeout`` seconds, or None."""
        sizes = tuple(size for size in sizes if size <= self._limit)
        futures = [await self._send_probe(size) for size in sizes]
        if not futures:
            return None
        when = asyncio.FIRST_COMPLETED if first else asyncio.ALL_COMPLETED
        done, pending = await asyncio.wait(futures, timeout=timeout, return_when=when)
        for future in pending:
            future.cancel()
        self._probes = {k: v for k, v in self._probes.items() if not v[1].done()}
        answered = [future.result() for future in done if not future.cancelled()]
        return max(answered, default=None)

    def _established(self) -> bool:
        sctp = self._sctp
        return sctp is not None and sctp._association_state == type(sctp).State.ESTABLISHED

    async def _probe_loop(self) -> None:
        try:
            await self._probe_rounds()
        except ConnectionError as error:
            # DTLS closed under a probe: the connection is ending, and so does probing.
            logger.debug("path probing stopped: {}", error)

    async def _probe_rounds(self) -> None:
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            if not self._established():
                if self._sctp is None or self._sctp.state == "closed":
                    return
                delay = 0.05
                continue
            self._black_hole.clear()
            larger = tuple(size for size in PROBE_SIZES if size > self._current.datagram)
            best = await self.probe(larger) if larger else None
            unanswered = [size for size in larger if best is None or size > best]
            lost = (
                f"probes of {min(unanswered, default=0)} bytes and more unanswered: "
                "a path that drops IP fragments, or a TURN relay's limit"
            )
            if best is not None and best >= self._current.datagram:
                self._decide(best, "path probe confirmed" + (f"; {lost}" if unanswered else ""))
            elif not self._settled.is_set():
                self._decide(STOCK_PACKET_SIZE, lost if unanswered else "the peer reads no larger packets")
            try:
                await asyncio.wait_for(self._black_hole.wait(), REPROBE_INTERVAL)
                delay = REPROBE_AFTER_BLACK_HOLE
            except asyncio.TimeoutError:
                delay = 0.0

    def _on_retransmission_timeout(self) -> None:
        self.retransmission_timeouts += 1
        # A timeout alone does not tell congestion from a black hole: ask the path once more.
        if self._current.datagram <= STOCK_PACKET_SIZE or self._check is not None:
            return
        self._check = asyncio.get_running_loop().create_task(self._check_black_hole(self._current.datagram))

    async def _check_black_hole(self, size: int) -> None:
        try:
            # A few copies, so that one congestion loss is not taken for a black hole.
            try:
                answered = await self.probe((size,) * BLACK_HOLE_PROBES, BLACK_HOLE_PROBE_TIMEOUT, first=True)
            except ConnectionError:
                return
            if answered is None and self._current.datagram == size:
                self._decide(
                    STOCK_PACKET_SIZE,
                    f"datagrams of {size} bytes stopped getting through: black hole on the path, probing again later",
                )
                self._black_hole.set()
        finally:
            self._check = None


# --------------------------------------------------------------------------- the ICE path of one connection


def selected_remote_candidate(channel: RTCDataChannel) -> tuple[str, str] | None:
    """(IP address, candidate type) of the peer's side of the candidate pair ICE selected for
    ``channel``'s connection, the address its packets really go to; None before ICE selected
    one. The type is ``host``, ``srflx``, ``prflx`` or ``relay`` (a TURN server's relay, not
    the peer's own address).

    aiortc shows no selected pair; aioice keeps the nominated pair of each component in the
    private ``Connection._nominated`` (``{component: CandidatePair}``, aioice 0.9 to 0.13),
    reached through ``RTCIceTransport._connection`` (aiortc 1.9 to 1.16). A data channel's
    connection has one component (1).
    """
    connection = getattr(ice_transport(channel), "_connection", None)
    nominated = getattr(connection, "_nominated", None)
    pair = nominated.get(1) if isinstance(nominated, dict) else None
    candidate = getattr(pair, "remote_candidate", None)
    address, kind = getattr(candidate, "host", None), getattr(candidate, "type", None)
    if not isinstance(address, str) or not isinstance(kind, str):
        return None
    # A peer-reflexive candidate learnt from checks the peer sent through its relay is the relay.
    relays = {candidate.ip for candidate in ice_transport(channel).getRemoteCandidates() if candidate.type == "relay"}
    return address, "relay" if address in relays else kind


def local_candidate_addresses(channel: RTCDataChannel) -> frozenset[str]:
    """The IP addresses of every local ICE candidate of ``channel``'s connection: host ones,
    and the server-reflexive (this side's NAT) and relay (its TURN server) ones.

    Public API (``RTCIceGatherer.getLocalCandidates``) under :func:`ice_transport`'s layout.
    """
    return frozenset(
        candidate.ip for candidate in ice_transport(channel).iceGatherer.getLocalCandidates() if candidate.ip
    )


# --------------------------------------------------------------------------- STUN and TURN probes
#
# What ``rtcxfer doctor`` asks a STUN or TURN server, with aioice's STUN codec and TURN client
# (public functions of aioice, but aioice is imported here only).


@attrs.frozen
class StunAnswer:
    """What one STUN server answered a Binding request: ``mapped``, the address it saw the
    request come from (XOR-MAPPED-ADDRESS), and ``other``, its other address for NAT behaviour
    discovery (OTHER-ADDRESS, RFC 5780), where it gives one; both None without an answer."""

    server: tuple[str, int]
    mapped: tuple[str, int] | None = None
    other: tuple[str, int] | None = None


class _Bindings(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: dict[bytes, asyncio.Future[Any]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = aioice.stun.parse_message(data)
        except ValueError:
            return  # not STUN: nothing we asked for
        future = self.answers.get(message.transaction_id)
        if future is not None and not future.done():
            future.set_result(message)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for one request: the others go on, this one times out


async def stun_bindings(
    servers: Sequence[tuple[str, int]], timeout: float, *, local_address: str = "0.0.0.0"
) -> tuple[int, list[StunAnswer]]:
    """Send a STUN Binding request to each of ``servers`` (IP addresses) from one UDP socket,
    resending each after 0.25 s, 0.5 s, 1 s... until ``timeout``; then, from the same socket, to
    each OTHER-ADDRESS (RFC 5780) the answers named that was not asked yet. Return the socket's
    local port and each server's answer (those given first, in their order). One socket: a NAT
    that keeps one public port for every destination shows the same mapped address to each
    server; one that maps per destination shows each a different port."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Bindings, local_addr=(local_address, 0))
    try:
        local_port = transport.get_extra_info("sockname")[1]

        async def ask(server: tuple[str, int]) -> StunAnswer:
            request = aioice.stun.Message(
                message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
            )
            answer: asyncio.Future[Any] = loop.create_future()
            protocol.answers[request.transaction_id] = answer
            deadline = loop.time() + timeout
            wait = 0.25
            while not answer.done() and loop.time() < deadline:
                transport.sendto(bytes(request), server)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(answer), min(wait, max(0.0, deadline - loop.time())))
                wait *= 2
            if not answer.done():
                answer.cancel()
                return StunAnswer(server)
            message = answer.result()
            if message.message_class != aioice.stun.Class.RESPONSE:
                return StunAnswer(server)
            mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get("MAPPED-ADDRESS")
            other = message.attributes.get("OTHER-ADDRESS")
            return StunAnswer(
                server, tuple(mapped) if mapped else None, tuple(other) if other else None  # type: ignore[arg-type]
            )

        answers = list(await asyncio.gather(*(ask(server) for server in servers)))
        others = dict.fromkeys(answer.other for answer in answers if answer.other and answer.other not in servers)
        answers += await asyncio.gather(*(ask(other) for other in others if other is not None))
        return local_port, answers
    finally:
        transport.close()


@attrs.frozen
class TurnAllocation:
    """What a TURN server answered an allocation: the ``relayed`` address and the ``mapped``
    one it saw the request come from; or its ``error_code`` and ``reason`` (401: the
    credentials were refused); or nothing in time (``timed_out``) or no connection (``reason``)."""

    relayed: tuple[str, int] | None = None
    mapped: tuple[str, int] | None = None
    error_code: int | None = None
    reason: str = ""
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        return self.relayed is not None


class _Released(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def turn_allocation(
    server: tuple[str, int],
    username: str,
    password: str,
    *,
    transport: str,
    timeout: float,
    tls: bool = False,
) -> TurnAllocation:
    """Allocate a relay on the TURN ``server`` over ``transport`` (``udp`` or ``tcp``; ``tls``
    for a ``turns:`` server) with these credentials, aioice's TURN client as aiortc uses it,
    and release it at once. Never raises for what the server or the network did."""
    try:
        relay, released = await asyncio.wait_for(
            aioice.turn.create_turn_endpoint(
                _Released,
                server,
                username,
                password,
                transport=transport,
                ssl=ssl.create_default_context() if tls else None,
            ),
            timeout,
        )
    except aioice.stun.TransactionFailed as failed:
        code, reason = failed.response.attributes.get("ERROR-CODE", (None, ""))
        return TurnAllocation(error_code=code, reason=str(reason))
    except (aioice.stun.TransactionTimeout, asyncio.TimeoutError):
        return TurnAllocation(timed_out=True, reason=f"no answer within {timeout:g} s")
    except (OSError, ConnectionError) as error:
        return TurnAllocation(reason=error.strerror or str(error) if isinstance(error, OSError) else str(error))
    relayed = relay.get_extra_info("sockname")
    mapped = relay.get_extra_info("related_address")
    relay.close()  # the release: a Refresh with lifetime 0
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(released.lost, 2.0)
    return TurnAllocation(
        relayed=tuple(relayed) if relayed else None,  # type: ignore[arg-type]
        mapped=tuple(mapped) if mapped else None,  # type: ignore[arg-type]
    )
