"""The ``direct`` transport: file bytes over TLS 1.3 connections between the two peers, when
one can reach the other by TCP; the data channel carries only the offer.

aiortc's SCTP runs in Python one packet at a time (about 5 MB/s between two machines, 100 MB/s
on tuned loopback); a TCP connection moves what the link and the kernel can. Like croc or
magic-wormhole's transit, rtcxfer uses the direct path when it exists and falls back otherwise.

Setting up (once per session, in :meth:`DirectTransport.negotiate`, at most about 2.5 s)::

    client                                             worker
    listen, send
    DIRECT_OFFER::port::fingerprint::ctoken::wtoken::addresses ->
                                                       listen, answer with its own
                                                    <- DIRECT_OFFER::...
                                                       and try to connect to the client's
    try to connect to the worker's                     (2 s; on failure DIRECT_RESULT::failed::unreachable)
    (2 s) ...
    DIRECT_RESULT::client-connects::-                 (or worker-connects, or unreachable::unreachable) ->

Both sides listen and both try at once, so a client that cannot reach the worker is reached by
it instead (the roles swap) and failing both ways costs one 2 s attempt, not two. The client
prefers its own connections, then the worker's; without either, ``negotiate`` raises a
:class:`~rtcxfer.protocol.errors.TransferError` saying why, and the client uses the next transport.

A listener binds the addresses of its connection's ICE host candidates (127.0.0.1 only for a
loopback-only one, the default) at an ephemeral port, or at the fixed ``port`` option: a port
that a NAT or a firewall forwards to this machine (``rtcxfer worker --direct-port``; Vast.ai and
RunAI publish container ports so, an HPC gateway can forward one). The offer names the listening
addresses and, with the ``advertise`` option, the public side of such a mapping (``HOST:PORT``).
Its certificate is made when the process first needs one (the ``cryptography`` package, no
files; see :func:`.direct_tls.identity`). The offer crosses the data channel, which carries
frames only once the session is mutually authenticated.

The peer chooses what its offer names, so the connecting side checks it
(:func:`connect_endpoints`): it connects only to the peer's own address on the ICE path the data
channel took (at the offer's port) and to advertised endpoints, never to a loopback address
(unless the data channel itself is loopback-only), to an address of its own machine (its own
NAT's public address and its TURN relay included), nor to an unspecified, multicast, broadcast
or link-local one. It tries the allowed ones at once, speaks TLS 1.3 only, compares the SHA-256
of the certificate it is shown with the offered fingerprint before it sends anything, then
presents a one-time token (32 random bytes). Whatever its attempt met, the peer hears only
"unreachable" (:data:`UNREACHABLE_REASON`), and not before the attempt's deadline: neither the
words nor the timing of the answer tell a refused port from a silent one, so rtcxfer is no port
scanner for a peer. The listener answers one byte only to a token it issued and has not seen
before. Anything else (no TLS, a wrong or reused token, silence past
:data:`.direct_tls.HANDSHAKE_TIMEOUT`) is closed without a byte of data; at most
:data:`.direct_tls.MAX_PENDING_HANDSHAKES` strangers are handled at once, more are closed on
arrival. The listener closes once both connections arrived, or when the set-up failed or the
session ended.

Each side then holds two connections: one carries the files the client sends, the other the
worker's (each token names which), so the directions never wait for each other. On a
connection, records are ``kind`` (1 byte) and ``length`` (8 bytes big-endian) then the payload::

    sender                                   receiver
    META {"transfer_id","name","size"}    ->
                                          <- ACCEPT offset (8 bytes)  or  ERROR reason
    DATA ... (up to 4 MiB each)           ->
    END sha256 (hex)                      ->
                                          <- ACK sha256 (hex)         or  ERROR reason

The receiving side is :class:`rtcxfer.files.receiving.IncomingFile`, shared with ``rtc-chunked``:
a hidden partial file, SHA-256 while writing, size and hash checked, fsync, rename; a partial left
by a dropped connection is resumed from its length by the next transfer of the same unchanged file.
The sender hashes as it sends (a separate pass first would cost a third of the time at these
rates), so the SHA-256 travels in END; the transfer id comes from the file's identity and
modification time instead (:func:`transfer_id_of`). Bytes move in threads with blocking
sockets (OpenSSL and hashlib release the GIL), about twice what asyncio's TLS streams move here:
per transfer, one thread talks TLS (:class:`.direct_tls.TlsStream`) and a second (:class:`_Stage`) reads and
hashes (sender) or hashes and writes (receiver), with four 1 MiB buffers between them, so memory
stays at a few MiB whatever the file's size.

One TLS connection per direction: a second connection for the same file was not shown to pay
on this kind of machine (see ``benchmarks/README.md``).

The TLS plumbing (certificate, TLS stream, connections, connecting, listening) is in
:mod:`rtcxfer.transports.direct_tls`; this module holds the frames, the negotiation, the file
records and the transfers.

Options (``context.options["direct"]``):

* ``enabled``: ``False`` to never offer the transport.
* ``addresses``: addresses to listen on, and the only ones connected to (default: the
  connection's ICE host addresses; ``127.0.0.1`` when it is loopback-only).
* ``port``: a fixed TCP port to listen on (default 0: an ephemeral port per session); sessions
  setting up at once share it.
* ``advertise``: ``HOST:PORT`` (an IP address) to offer beside the listening addresses: where a
  NAT or firewall forwards ``port`` from.
* ``connect_timeout``: seconds a connection attempt may take (default 2).
* ``progress``: ``callable(name, bytes_done, total)``, called as bytes leave and arrive
  (default: ``TransportContext.progress``).
* ``reply_timeout``: seconds the sender waits for ACCEPT and ACK (default 600).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from rtcxfer.files.paths import check_relative_text
from rtcxfer.files.receiving import REASON_HASH, REASON_INCOMPLETE, IncomingFile, SendReport, transfer_id_for_file
from rtcxfer.log import logger
from rtcxfer.net.link import connection_addresses
from rtcxfer.protocol.errors import (
    ConnectionClosedError,
    IntegrityError,
    LocalProtocolError,
    RtcxferError,
    TransferError,
    UnsafePathError,
    describe,
)
from rtcxfer.protocol.frames import Frame, frame_type, quote_for_reply, text, token
from rtcxfer.transport.base import Delivery, Transport
from rtcxfer.transport.hookspecs import hookimpl
from rtcxfer.transports.direct_tls import (
    ACCEPT,
    ACK,
    CONNECT_TIMEOUT,
    DATA,
    END,
    ERROR,
    META,
    RECORD_HEADER,
    Connection,
    DirectOffer,
    Endpoint,
    Listener,
    connect_pair,
    parse_record_header,
)

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.net.link import Link
    from rtcxfer.transport.base import TransportContext

NAME = "direct"
#: How long the client waits, after its own attempt failed, for the worker's attempt to end.
SWAP_GRACE = 0.5
#: How long the worker's answer to an offer may take.
OFFER_TIMEOUT = 10.0
DEFAULT_REPLY_TIMEOUT = 600.0
#: Bytes read from the file and written as one DATA record.
BLOCK = 1024 * 1024
MAX_DATA_RECORD = 4 * 1024 * 1024
MAX_META_RECORD = 64 * 1024
MAX_REPLY_RECORD = 4096
#: Seconds between progress reports.
PROGRESS_INTERVAL = 0.1

CLIENT_CONNECTS = "client-connects"
WORKER_CONNECTS = "worker-connects"
UNREACHABLE = "unreachable"
FAILED = "failed"
NO_REASON = "-"

# Connection attempts (bounded by the connect timeout) share these threads; the transfers of a
# session have threads of their own (DirectTransport._io), so that one session's idle receive
# loop or long transfer never waits for another's.
_CONNECT_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="rtcxfer-direct-connect")
#: Threads per session: the receiving loop, the sending side, one to spare.
SESSION_THREADS = 3


# --- frames (data channel) ----------------------------------------------------------------


@frame_type("DIRECT_RESULT")
class DirectResult(Frame):
    """Client -> worker: which connections the session uses (``client-connects``,
    ``worker-connects``) or ``unreachable``; worker -> client: ``failed`` (its attempt)."""

    outcome: str = token()
    reason: str = text(greedy=True)


# --- records (TLS connection) -------------------------------------------------------------


@attrs.frozen
class DirectMeta:
    """A file announced on a connection; its SHA-256 comes with the END record, after the bytes."""

    transfer_id: str
    name: str
    size: int

    def encode(self) -> bytes:
        fields = {"transfer_id": self.transfer_id, "name": self.name, "size": self.size}
        return json.dumps(fields, separators=(",", ":")).encode()


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def parse_meta(payload: bytes) -> DirectMeta:
    """The META record a peer sent, or :class:`TransferError` for anything else."""
    try:
        fields = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TransferError("META is not UTF-8 JSON") from None
    if not isinstance(fields, dict) or set(fields) != {"transfer_id", "name", "size"}:
        raise TransferError("META needs exactly transfer_id, name and size")
    size = fields["size"]
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
        raise TransferError("META size is not a non-negative integer")
    if not _is_hex(fields["transfer_id"], 32):
        raise TransferError("META transfer_id is not 32 lowercase hex digits")
    if not isinstance(fields["name"], str):
        raise TransferError("META name is not a string")
    return DirectMeta(fields["transfer_id"], fields["name"], size)


# --- addresses ----------------------------------------------------------------------------
#
# Where this side listens follows the connection: its ICE host addresses (127.0.0.1 for a
# loopback-only one), at an ephemeral port or the fixed ``port`` option. Where it connects is
# the peer's choice, so it is checked (:func:`connect_endpoints`): a peer must not be able to
# point this side at another host and port, and least of all at this machine's own services.

#: What a peer is told when this side's connection attempt failed, whatever happened: no
#: "refused", "reset" or "timed out", which would make rtcxfer a port scanner for the peer.
UNREACHABLE_REASON = "unreachable"


def _loopback_only(channel: object) -> bool:
    addresses = connection_addresses(channel)
    # A channel that cannot tell about its connection is taken as the default: loopback-only.
    return addresses is None or addresses.loopback_only


def listen_addresses(context: TransportContext, channel: object) -> list[str]:
    """Where to listen: the ``addresses`` option, else the addresses of the ICE host
    candidates of the connection ``channel`` runs over (127.0.0.1 if it is loopback-only)."""
    configured = _options(context).get("addresses")
    if configured:
        return [str(address) for address in configured]
    addresses = connection_addresses(channel)
    if addresses is None or addresses.loopback_only:
        return ["127.0.0.1"]
    return [address for address in addresses.local_host_addresses() if _listenable(address)]


def _listenable(address: str) -> bool:
    try:
        # Not link-local, which the connecting side skips (an IPv6 one needs an interface an offer cannot name).
        return not ipaddress.ip_address(address).is_link_local
    except ValueError:  # not an IP address (an mDNS name)
        return False


def fixed_port(context: TransportContext) -> int:
    """The ``port`` option (0: an ephemeral port per session)."""
    port = _options(context).get("port") or 0
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        raise TransferError(f"the direct port must be a TCP port number (1-65535), not {port!r}")
    return port


def advertised_endpoint(context: TransportContext) -> Endpoint | None:
    """The ``advertise`` option (``HOST:PORT``, an :class:`Endpoint` or None), checked."""
    value = _options(context).get("advertise")
    return None if value is None else parse_advertised(value)


def parse_advertised(value: str | Endpoint) -> Endpoint:
    """An address to advertise (``IPv4:PORT``, ``[IPv6]:PORT`` or an :class:`Endpoint`), or
    :class:`TransferError` saying why a peer could not use it."""
    try:
        endpoint = value if isinstance(value, Endpoint) else Endpoint.parse(str(value))
    except ValueError as error:
        raise TransferError(f"the advertised direct address: {error}") from None
    problem = _never(ipaddress.ip_address(endpoint.address))
    if problem:
        raise TransferError(f"the advertised direct address {endpoint} is {problem}")
    return endpoint


def _never(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why no peer may ever make this side connect to ``address``, or None."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        return "a multicast or broadcast address"
    if address.is_link_local:
        return "link-local"
    return None


def _bindable(address: str) -> bool:
    """Whether ``address`` is one of this machine's own (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


@attrs.frozen
class Endpoints:
    """Where this side may connect for a peer's offer (best first), and what it left out and
    why (for this side's log: never sent to the peer)."""

    allowed: list[Endpoint]
    refused: list[str]


def connect_endpoints(context: TransportContext, offer: DirectOffer, channel: object) -> Endpoints:
    """The endpoints of ``offer`` this side may connect to.

    An offer names addresses (the peer listens there, at the offer's port) and advertised
    endpoints (``HOST:PORT``: a port mapped to its listener). Allowed are only:

    * the peer's own address on the candidate pair ICE selected for this connection, at the
      offer's port, if the offer names it (not a TURN relay's address: that is not the peer);
    * the advertised endpoints;

    and of those never a loopback address (unless the data channel itself is loopback-only:
    then loopback ones only, nothing leaves the machine), an address of this machine (one a
    socket can be bound to, or one of this side's ICE candidates: its NAT's public address, its
    TURN relay), an unspecified, multicast, broadcast or link-local one; and, where the
    ``addresses`` option is set, only addresses within it. A connection that cannot tell its
    ICE path (a test's stand-in) counts as loopback-only with the peer at 127.0.0.1.
    """
    path = connection_addresses(channel)
    loopback_only = path is None or path.loopback_only
    peer = path.peer_path_address() if path is not None else None
    if loopback_only:
        peer = peer or "127.0.0.1"
    own = frozenset() if path is None or loopback_only else path.local_candidate_addresses()
    configured = [ipaddress.ip_network(str(each), strict=False) for each in _options(context).get("addresses") or ()]
    offered: list[Endpoint] = []
    refused: list[str] = []
    for raw in offer.addresses.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            offered.append(Endpoint(str(ipaddress.ip_address(entry)), offer.port))
            if offered[-1].address != peer:
                refused.append(f"{offered.pop()}: not the peer's address on the ICE path ({peer or 'none'})")
            continue
        except ValueError:
            pass
        try:
            offered.append(Endpoint.parse(entry))
        except ValueError as error:
            refused.append(f"{entry[:80]!r}: {error}")
    allowed: list[Endpoint] = []
    for endpoint in offered:
        address = ipaddress.ip_address(endpoint.address)
        why = _never(address)
        if why is None and loopback_only and not address.is_loopback:
            why = "not a loopback address, and this connection is loopback-only"
        elif why is None and not loopback_only and address.is_loopback:
            why = "a loopback address"
        elif why is None and not loopback_only and (endpoint.address in own or _bindable(endpoint.address)):
            why = "an address of this machine"
        elif why is None and configured and not any(
            address.version == net.version and address in net for net in configured
        ):
            why = "outside the configured direct addresses"
        if why is not None:
            refused.append(f"{endpoint}: {why}")
        elif endpoint not in allowed:
            allowed.append(endpoint)
    return Endpoints(allowed, refused)


def _options(context: TransportContext) -> dict[str, Any]:
    return context.options.get(NAME, {}) or {}


# --- the transport ------------------------------------------------------------------------


class DirectTransport(Transport):
    name = NAME
    rank = 40
    frame_types = (DirectOffer, DirectResult)
    description = "TLS 1.3 over a direct TCP connection when one peer reaches the other, verified by SHA-256"

    @classmethod
    def usable(cls, context: TransportContext) -> bool:
        return bool(_options(context).get("enabled", True))

    def __init__(self, link: Link, context: TransportContext) -> None:
        super().__init__(link, context)
        self._listener: Listener | None = None
        self._outbound: asyncio.Task[dict[str, Connection]] | None = None
        #: Worker side: the client already said which connections the session uses.
        self._client_chose = False
        self._peer_offer: asyncio.Future[DirectOffer] | None = None
        self._peer_failure: asyncio.Future[str] | None = None
        self._send_connection: Connection | None = None
        self._receive_connection: Connection | None = None
        self._send_lock = asyncio.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self._serving: asyncio.Task | None = None
        self._worker_setup: asyncio.Task | None = None
        self._closed = False
        #: Set once the set-up ended, with or without connections.
        self._settled = asyncio.Event()
        #: One entry per completed or attempted send, for callers and tests.
        self.reports: list[SendReport] = []
        #: How the connections of this session were made: ``client-connects``,
        #: ``worker-connects``, or ``None`` (not (yet) usable).
        self.mode: str | None = None

    @property
    def _options(self) -> dict[str, Any]:
        return _options(self.context)

    async def wait_settled(self, timeout: float) -> None:
        """Wait until this session's set-up ended, with connections or without (worker side:
        the client's DIRECT_RESULT was handled)."""
        await asyncio.wait_for(self._settled.wait(), timeout)

    @property
    def listener(self) -> Listener | None:
        """This side's listener in this session, if it made one (closed or not)."""
        return self._listener

    @property
    def _connect_timeout(self) -> float:
        return float(self._options.get("connect_timeout", CONNECT_TIMEOUT))

    def _futures(self) -> None:
        loop = asyncio.get_running_loop()
        if self._peer_offer is None:
            self._peer_offer = loop.create_future()
            self._peer_failure = loop.create_future()

    # --- negotiation: client side -----------------------------------------------------

    async def negotiate(self) -> bool:
        """Set up the two connections (see the module docstring); ``TransferError`` says why
        not."""
        self._futures()
        assert self._peer_offer is not None and self._peer_failure is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._listener = self._listen(loop)
        await self.link.send(self._listener.offer())
        try:
            offer = await asyncio.wait_for(asyncio.shield(self._peer_offer), OFFER_TIMEOUT)
        except asyncio.TimeoutError:
            self._shut_listener()
            raise TransferError(f"the worker did not answer the direct offer within {OFFER_TIMEOUT:g} s") from None
        except RtcxferError:
            self._shut_listener()
            raise
        deadline = loop.time() + self._connect_timeout + SWAP_GRACE
        outcome, pair, reason = CLIENT_CONNECTS, None, NO_REASON
        try:
            pair = await self._connect(offer)
        except RtcxferError as error:
            mine = str(error)
            pair = await self._await_swap(deadline)
            if pair is not None:
                outcome = WORKER_CONNECTS
                logger.info("direct: the client cannot reach the worker ({}); the worker connected instead", mine)
            else:
                failure = self._peer_failure
                told_us = failure.done() and failure.exception() is None
                theirs = "it reported so" if told_us else "no word from it in time"
                outcome = UNREACHABLE
                listener = self._listener
                mine_at = ", ".join(
                    [str(Endpoint(address, listener.port)) for address in listener.addresses]
                    + ([str(listener.advertise)] if listener.advertise is not None else [])
                )
                reason = (
                    f"gave up after {loop.time() - started:.1f} s: the client cannot reach the worker ({mine}) "
                    f"and the worker cannot reach the client at {mine_at} ({theirs})"
                )
        if outcome != WORKER_CONNECTS:
            self._shut_listener()
        # The worker hears only that it was unreachable: what this side's attempts met is its own business.
        told = UNREACHABLE_REASON if outcome == UNREACHABLE else NO_REASON
        await self.link.send(DirectResult(outcome, told))
        if pair is None:
            raise TransferError(reason)
        self._use(pair, outcome)
        self._settled.set()
        return True

    async def _await_swap(self, deadline: float) -> dict[str, Connection] | None:
        """The worker's connections to our listener, if they arrive before its failure report
        or the deadline."""
        assert self._listener is not None and self._peer_failure is not None
        arrival = asyncio.ensure_future(self._listener.pair())
        try:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait({arrival, self._peer_failure}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not arrival.done():
                arrival.cancel()
        if arrival.done() and not arrival.cancelled() and arrival.exception() is None:
            return arrival.result()
        return None

    def _listen(self, loop: asyncio.AbstractEventLoop) -> Listener:
        return Listener(
            listen_addresses(self.context, self.link.channel),
            loop,
            self.context.role,
            port=fixed_port(self.context),
            advertise=advertised_endpoint(self.context),
        )

    async def _connect(self, offer: DirectOffer) -> dict[str, Connection]:
        """Connections to the peer's offer (:func:`connect_endpoints` says where), or
        :class:`TransferError` with what happened (for this side's log). A failure is not
        raised before the attempt's deadline: how soon an attempt fails tells whether something
        listens there, and the peer must not learn that from the timing of our answer."""
        endpoints = connect_endpoints(self.context, offer, self.link.channel)
        for refusal in endpoints.refused:
            logger.info("direct: not connecting to {}", refusal)
        if not endpoints.allowed:
            refused = "; ".join(endpoints.refused) or "none"
            raise TransferError(f"no address this side may connect to among those offered ({refused})")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._connect_timeout
        deadline = time.monotonic() + self._connect_timeout
        attempt = loop.run_in_executor(_CONNECT_THREADS, connect_pair, endpoints.allowed, offer, deadline)
        try:
            return await asyncio.wait_for(asyncio.shield(attempt), self._connect_timeout + 0.25)
        except asyncio.TimeoutError:
            attempt.add_done_callback(_close_pair_when_done)
            tried = ", ".join(map(str, endpoints.allowed))
            raise TransferError(f"no connection to {tried} within {self._connect_timeout:g} s") from None
        except asyncio.CancelledError:
            attempt.add_done_callback(_close_pair_when_done)
            raise
        except (OSError, ssl.SSLError) as error:
            await asyncio.sleep(max(0.0, give_up - loop.time()))
            raise TransferError(describe(error)) from None

    # --- negotiation: worker side -----------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        self._futures()
        assert self._peer_offer is not None and self._peer_failure is not None
        if isinstance(frame, DirectOffer):
            if self.context.role == "client":
                if self._peer_offer.done():
                    raise TransferError("a second DIRECT_OFFER in this session")
                self._peer_offer.set_result(frame)
            elif self._worker_setup is not None:
                raise TransferError("a second DIRECT_OFFER in this session")
            else:
                self._worker_setup = asyncio.create_task(self._answer(frame))
        elif isinstance(frame, DirectResult):
            if self.context.role == "client":
                if frame.outcome == FAILED and not self._peer_failure.done():
                    self._peer_failure.set_result(frame.reason)
                elif frame.outcome == UNREACHABLE and not self._peer_offer.done():
                    self._peer_offer.set_exception(TransferError(f"the worker cannot offer direct: {frame.reason}"))
            else:
                await self._settle(frame)

    async def _answer(self, offer: DirectOffer) -> None:
        """Worker: listen, answer with our offer, and try the client's offer meanwhile."""
        with suppress(ConnectionClosedError):  # the session ended during the set-up
            await self._answer_offer(offer)

    async def _answer_offer(self, offer: DirectOffer) -> None:
        try:
            self._listener = self._listen(asyncio.get_running_loop())
        except RtcxferError as error:
            logger.warning("direct: {}", error)
            await self.link.send(DirectResult(UNREACHABLE, "the worker cannot listen"))
            return
        await self.link.send(self._listener.offer())
        self._outbound = asyncio.create_task(self._connect(offer))
        try:
            await self._outbound
        except RtcxferError as error:
            if self._client_chose:
                # Too late to matter: the client chose (and closed its listener meanwhile).
                logger.debug("direct: the worker's own attempt ended after the client chose: {}", error)
                return
            logger.info("direct: the worker cannot reach the client: {}", error)
            await self.link.send(DirectResult(FAILED, UNREACHABLE_REASON))

    async def _settle(self, result: DirectResult) -> None:
        """Worker: the client's choice."""
        self._client_chose = True
        setup, listener, outbound = self._worker_setup, self._listener, self._outbound
        if setup is None:
            raise TransferError("DIRECT_RESULT without an offer")
        if listener is None:  # we could not listen and said so
            self._settled.set()
            return
        pair: dict[str, Connection] | None = None
        try:
            if result.outcome == CLIENT_CONNECTS:
                pair = await asyncio.wait_for(listener.pair(), self._connect_timeout)
            elif result.outcome == WORKER_CONNECTS and outbound is not None:
                self._shut_listener()
                pair = await asyncio.wait_for(asyncio.shield(outbound), self._connect_timeout + 1)
        except (asyncio.TimeoutError, RtcxferError) as error:
            logger.warning("direct: the connections the client chose are not here: {}", describe(error))
            pair = None
        if outbound is not None and result.outcome != WORKER_CONNECTS:
            outbound.add_done_callback(_close_pair_when_done)
        if pair is None:
            self._shut_listener()
            logger.info("direct: not used in this session ({})", result.reason)
        else:
            self._use(pair, result.outcome)
        self._settled.set()

    # --- the session's connections ------------------------------------------------------

    def _use(self, pair: dict[str, Connection], mode: str) -> None:
        mine = self.context.role
        theirs = "worker" if mine == "client" else "client"
        self._send_connection, self._receive_connection = pair[mine], pair[theirs]
        self.mode = mode
        # Both connections are here: nothing more to accept (a fixed port is free for the next session).
        self._shut_listener()
        if self._closed:
            self._close_connections()
            return
        self._serving = asyncio.create_task(self._serve(self._receive_connection))
        logger.info("direct: connected ({}), {}", mode, pair[mine].peer)

    def _shut_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _close_connections(self) -> None:
        for connection in (self._send_connection, self._receive_connection):
            if connection is not None:
                connection.close()

    def on_closed(self) -> None:
        self._closed = True
        self._settled.set()
        self._shut_listener()
        self._close_connections()
        if self._threads is not None:
            # Their sockets are shut down: the threads end as soon as their calls return.
            self._threads.shutdown(wait=False)
        for future in (self._peer_offer, self._peer_failure):
            if future is not None and not future.done():
                future.set_exception(ConnectionClosedError("session closed during direct set-up"))
                future.exception()  # retrieved: nobody may be waiting
        if self._outbound is not None:
            self._outbound.add_done_callback(_close_pair_when_done)
        # The receiving task notices its closed connection by itself and keeps the partial.

    # --- receiving ----------------------------------------------------------------------

    def _session_threads(self) -> ThreadPoolExecutor:
        if self._threads is None:
            prefix = f"rtcxfer-direct-{self.context.role}"
            self._threads = ThreadPoolExecutor(SESSION_THREADS, thread_name_prefix=prefix)
        return self._threads

    async def _io(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run blocking connection work in this session's own threads."""
        try:
            work = asyncio.get_running_loop().run_in_executor(self._session_threads(), function, *args)
        except RuntimeError:  # the threads were shut down with the session
            raise ConnectionClosedError("the session ended") from None
        return await work

    async def _serve(self, connection: Connection) -> None:
        """Receive the peer's files on ``connection``, one after another, until it closes."""
        try:
            while True:
                try:
                    _, payload = await self._io(connection.recv_record, (META,), MAX_META_RECORD)
                except (OSError, ssl.SSLError, RtcxferError) as error:
                    if not connection.closed:
                        logger.debug("direct: receiving connection ended: {}", describe(error))
                    return
                if not await self._receive(connection, payload):
                    return
        finally:
            connection.close()

    async def _receive(self, connection: Connection, payload: bytes) -> bool:
        """One file; ``False`` when the connection is no longer usable."""
        try:
            meta = parse_meta(payload)
            incoming = await IncomingFile.open(
                self.context.incoming_dir,
                transfer_id=meta.transfer_id,
                name=meta.name,
                size=meta.size,
                transport=self.name,
                kept_partials_dir=self.context.kept_partials_dir,
                max_size=self.context.max_file_bytes,
                unpack=self.context.unpack,
            )
        except TransferError as error:
            logger.warning("direct: refused a file: {}", error)
            return await self._reply(connection, ERROR, str(error).encode())
        logger.info(
            "direct: receiving {} ({} bytes) from offset {}", quote_for_reply(meta.name), meta.size, incoming.offset
        )
        if not await self._reply(connection, ACCEPT, incoming.offset.to_bytes(8, "big")):
            incoming.abandon(keep=True)
            return False
        report = _progress_reporter(
            self.context.progress_reporter(self.name), meta.name, meta.size, asyncio.get_running_loop()
        )
        if report is not None:
            report(incoming.offset)  # the start, so a resumed file is not counted as sent now
        try:
            announced = await incoming.run_in_thread(
                _receive_bytes, connection, incoming, report, executor=self._session_threads()
            )
        except BaseException as error:
            # Kept for a resume (once the receiving thread let go of it, if we were cancelled).
            incoming.abandon(keep=True)
            if isinstance(error, asyncio.CancelledError):
                connection.close()
                raise
            logger.info(
                "direct: {} interrupted at {} of {} bytes: {}", meta.name, incoming.received, meta.size, describe(error)
            )
            return False
        usable = True

        async def acknowledge(digest: str) -> None:
            nonlocal usable
            usable = await self._reply(connection, ACK, digest.encode())

        try:
            await incoming.complete(announced, acknowledge=acknowledge, deliver=self.context.deliver)
        except TransferError as error:  # the partial is gone
            return await self._reply(connection, ERROR, str(error).encode())
        return usable

    async def _reply(self, connection: Connection, kind: int, payload: bytes) -> bool:
        try:
            await self._io(connection.send_record, kind, payload[:MAX_REPLY_RECORD])
        except (OSError, ssl.SSLError, RtcxferError) as error:
            logger.debug("direct: could not reply: {}", describe(error))
            return False
        return True

    # --- sending ----------------------------------------------------------------------

    async def send_file(self, path: Path, name: str) -> Delivery:
        """Send ``path`` as ``name`` over this session's connection; return once the peer
        confirmed size and SHA-256.

        Raises :class:`IntegrityError` when the peer's check failed, :class:`TransferError`
        when it refused the file or the direct connection failed (which ends ``direct`` for
        this session, not the session: the partial stays with the peer, and the next transfer
        of the same, unchanged file resumes it).

        The file is hashed as it is sent, not before: the transfer id comes from the file's
        identity and modification time (:func:`transfer_id_of`), the SHA-256 follows the bytes.
        A resumed transfer that fails the peer's check is sent once more, whole (the bytes the
        peer kept may not have been this file's).
        """
        try:
            check_relative_text(name)
        except UnsafePathError as error:
            raise LocalProtocolError(f"cannot send a file as {name!r}: {error}") from None
        try:
            return await self._send_once(path, name)
        except IntegrityError as error:
            if not error.after_resume:
                raise
            logger.warning("direct: {} failed its check after a resume ({}); sending it whole", name, error)
            return await self._send_once(path, name)

    async def _send_once(self, path: Path, name: str) -> Delivery:
        """One transfer of the file, META to ACK (from where the peer asks)."""
        if self._worker_setup is not None and not self._settled.is_set():
            # The client may send its first file right after its DIRECT_RESULT, and the worker
            # its first file before it finished handling that result.
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self._connect_timeout + 2)
        async with self._send_lock:
            connection = self._send_connection
            if connection is None or connection.closed:
                raise TransferError("no direct connection in this session")
            tid, size = await asyncio.to_thread(transfer_id_of, self.context.role, path, name)
            meta = DirectMeta(tid, name, size)
            timeout = float(self._options.get("reply_timeout", DEFAULT_REPLY_TIMEOUT))
            progress = self.context.progress_reporter(self.name)
            try:
                await self._io(connection.send_record, META, meta.encode())
                kind, answer = await asyncio.wait_for(self._reply_record(connection), timeout)
                offset = int.from_bytes(answer, "big") if kind == ACCEPT and len(answer) == 8 else 0
                if kind == ACCEPT and 0 <= offset <= size:
                    if offset:
                        logger.info("direct: resuming {} at byte {} of {}", name, offset, size)
                    report = _progress_reporter(progress, name, size, asyncio.get_running_loop())
                    sha256 = await self._io(_send_bytes, connection, path, offset, size, report)
                    self.reports.append(SendReport(tid, name, size, offset, size - offset))
                    kind, answer = await asyncio.wait_for(self._reply_record(connection), timeout)
                elif kind != ERROR:
                    raise ConnectionClosedError(f"the peer answered {name} with an impossible offset or out of turn")
            except BaseException as error:
                # The stream is out of step or gone: this session's direct connection is over
                # (the data channel is not; the caller may fall back to another transport).
                connection.close()
                if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
                    raise
                if isinstance(error, asyncio.TimeoutError):
                    raise TransferError(f"no answer from the peer about {name} within {timeout:g} s") from None
                if isinstance(error, LocalProtocolError):
                    raise
                raise TransferError(f"direct connection to {connection.peer} failed: {describe(error)}") from None
            if kind == ERROR:
                reason = answer.decode("utf-8", "replace")
                if reason.startswith((REASON_HASH, REASON_INCOMPLETE)):
                    failed = IntegrityError(f"the peer refused {name}: {reason}")
                    failed.after_resume = offset > 0
                    raise failed
                raise TransferError(f"the peer refused {name}: {reason}")
            if kind != ACK or answer.decode("ascii", "replace") != sha256:
                raise IntegrityError(f"the peer confirmed {name} with another SHA-256")
        logger.info("direct: delivered {} ({} bytes from offset {})", name, size, offset)
        return Delivery(name=name, size=size, transport=self.name, sha256=sha256, reference=tid)

    async def _reply_record(self, connection: Connection) -> tuple[int, bytes]:
        try:
            return await self._io(connection.recv_record, (ACCEPT, ACK, ERROR), MAX_REPLY_RECORD)
        except TransferError as error:
            connection.close()
            raise ConnectionClosedError(f"the peer broke the direct protocol: {error}") from None


def _progress_reporter(
    progress: Callable[[str, int, int], Any] | None, name: str, size: int, loop: asyncio.AbstractEventLoop
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    last = [0.0]

    def report(done: int) -> None:
        now = time.monotonic()
        if done == size or now - last[0] >= PROGRESS_INTERVAL:
            last[0] = now
            loop.call_soon_threadsafe(progress, name, done, size)

    return report


def transfer_id_of(role: str, path: Path, name: str) -> tuple[str, int]:
    """(transfer id, size) of sending ``path`` as ``name``: the same unchanged file gets the
    same id in a later session (and so resumes); a modified one gets a new id
    (:func:`rtcxfer.files.receiving.transfer_id_for_file`)."""
    return transfer_id_for_file(role, path, name)


class _Stage:
    """A second thread for one stage of a transfer: the calling thread fills buffers and
    :meth:`hand_over` passes them to ``consume`` there, with at most ``depth`` buffers in flight
    (memory stays at ``depth`` MiB). So reading and hashing overlap sending, and receiving
    overlaps hashing and writing: each side keeps both cores of this kind of machine busy
    instead of one. An error in ``consume`` is raised in the calling thread."""

    def __init__(self, consume: Callable[[memoryview], None], depth: int = 4) -> None:
        self._consume = consume
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        for _ in range(depth):
            self._free.put(bytearray(BLOCK))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rtcxfer-direct-stage", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, count = item
            if self._error is None:
                try:
                    self._consume(memoryview(buffer)[:count])
                except BaseException as error:  # handed to the calling thread
                    self._error = error
            self._free.put(buffer)

    def buffer(self) -> bytearray:
        """An empty buffer of :data:`BLOCK` bytes (waits while all are in flight)."""
        self._raise()
        return self._free.get()

    def hand_over(self, buffer: bytearray, count: int) -> None:
        self._full.put((buffer, count))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Wait until every buffer handed over was consumed; raise the consumer's error."""
        self._full.put(None)
        self._thread.join()
        self._raise()

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self._full.put(None)
            self._thread.join()


def _send_bytes(
    connection: Connection, path: Path, offset: int, size: int, report: Callable[[int], None] | None
) -> str:
    """The file from ``offset`` as DATA records, then END with the SHA-256 of the whole file
    (the prefix the receiver holds is read and hashed, not sent). Reading and hashing run here,
    sending in a :class:`_Stage`. Blocking: runs in a thread."""
    digest = hashlib.sha256()
    position = 0
    sent = offset
    with open(path, "rb", buffering=0) as handle, connection.using() as tls:

        def send(block: memoryview) -> None:
            nonlocal sent
            tls.sendall(RECORD_HEADER.pack(DATA, len(block)))
            tls.sendall(block)
            sent += len(block)
            if report is not None:
                report(sent)

        prefix = memoryview(bytearray(min(BLOCK, offset)))
        while position < offset:
            count = handle.readinto(prefix[: min(BLOCK, offset - position)])
            if not count:
                break
            digest.update(prefix[:count])
            position += count
        if report is not None:
            report(position)
        with _Stage(send) as sending:
            while offset <= position < size:
                buffer = sending.buffer()
                count = handle.readinto(memoryview(buffer)[: min(BLOCK, size - position)])
                if not count:
                    break
                digest.update(memoryview(buffer)[:count])
                sending.hand_over(buffer, count)
                position += count
            sending.finish()
        if position != size or handle.read(1):
            # Not a TransferError: the stream is out of step, so the caller closes it.
            raise LocalProtocolError(f"{path.name}: file changed while being sent")
        sha256 = digest.hexdigest()
        tls.sendall(RECORD_HEADER.pack(END, len(sha256)) + sha256.encode())
    return sha256


def _receive_bytes(connection: Connection, incoming: IncomingFile, report: Callable[[int], None] | None = None) -> str:
    """DATA records into the incoming file until END; returns the SHA-256 END announces.
    Receiving runs here, hashing and writing in a :class:`_Stage`. Blocking: runs in the
    thread :meth:`IncomingFile.run_in_thread` lends the file to (a write raises once it was
    abandoned, which ends the loop)."""

    def store(piece: memoryview) -> None:
        incoming.write(piece)
        if report is not None:
            report(incoming.received)

    return _receive_records(connection, incoming, store)


def _receive_records(connection: Connection, incoming: IncomingFile, store: Callable[[memoryview], None]) -> str:
    """The record loop of :func:`_receive_bytes`: ``store`` gets the bytes in another thread."""
    size = incoming.size
    taken = incoming.received
    with connection.using() as tls, _Stage(store) as storing:
        while True:
            header = tls.recv_exactly(RECORD_HEADER.size)
            kind, length = parse_record_header(header, (DATA, END), MAX_DATA_RECORD)
            if kind == END:
                announced = tls.recv_exactly(length).decode("ascii", "replace") if length == 64 else ""
                if not _is_hex(announced, 64):
                    raise TransferError("END does not carry a SHA-256")
                storing.finish()
                return announced
            if taken + length > size:
                raise TransferError(f"data beyond the announced size of {size} bytes")
            while length:
                # Fill a whole buffer before handing it over: one write and one hash update
                # per MiB, not per 16 KiB TLS record.
                buffer = storing.buffer()
                view = memoryview(buffer)
                wanted = min(length, BLOCK)
                filled = 0
                while filled < wanted:
                    count = tls.recv_into(view[filled:wanted], wanted - filled)
                    if not count:
                        raise ConnectionClosedError(f"direct connection to {connection.peer} closed")
                    filled += count
                storing.hand_over(buffer, filled)
                taken += filled
                length -= filled


def _close_pair_when_done(future: asyncio.Future) -> None:
    """Close connections an abandoned attempt made after all."""
    if future.cancelled() or future.exception() is not None:
        return
    for connection in future.result().values():
        connection.close()


@hookimpl
def rtcxfer_frame_types():
    return (DirectOffer, DirectResult)


@hookimpl
def rtcxfer_register_transports(register) -> None:
    register(DirectTransport)


@hookimpl
def rtcxfer_claim_frame(frame: Frame) -> str | None:
    return DirectTransport.name if DirectTransport.claims(frame) else None
