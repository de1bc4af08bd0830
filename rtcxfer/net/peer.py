"""rtcxfer's aiortc glue: peer connection, data channel, backpressure.

With :mod:`rtcxfer.net.aiortc_internals`, the only modules that import aiortc. This one uses
aiortc's public API only: every private name or internal layout of aiortc and aioice it relies
on (the remote's max message size, the DTLS peer certificate, the ICE transport under a channel,
one connection's host candidates) is reached through a function of ``aiortc_internals``.

What lives here:

* :class:`PeerOptions` and :func:`strip_non_loopback_candidates`: the loopback-only mode (the
  default) in which no packet is ever sent to an address other than 127.0.0.1: no STUN, no TURN,
  no mDNS, this connection's host candidates on 127.0.0.1 only
  (:func:`~rtcxfer.net.aiortc_internals.restrict_host_candidates`, per connection: an
  any-interface peer in the same process gathers on every interface), remote candidates
  elsewhere dropped.
* :class:`PeerConnection`: one ``RTCPeerConnection`` carrying one ordered, reliable data channel
  labelled ``"rtcxfer"``. aiortc gathers every candidate before ``setLocalDescription`` returns,
  so the SDP exchange is exactly one message each way (no trickle ICE).
* :class:`DataChannel`: ``send_text`` / ``send_bytes`` with backpressure on ``bufferedAmount``,
  ``recv`` from a queue fed synchronously by aiortc's ``message`` event, ``drain``; and the
  connection under it (``loopback_only``, ``local_host_addresses``,
  ``remote_candidate_addresses``: :class:`rtcxfer.net.link.ConnectionAddresses`), for the
  ``direct`` transport.
* :func:`connect_pair_in_process` (tests, benchmarks) and :func:`connect_via` (glue for any
  signaling client that can send and receive an SDP dict).
* Large SCTP packets between two rtcxfer peers (65024 bytes as four DTLS records in one
  datagram, instead of aiortc's 1189 bytes, 1228 before aiortc 1.16; about 10x the throughput
  at 16 KiB, and 0.7x the CPU per byte again at 64 KiB) in datagrams as large as the path
  carries, found by
  probing: the mechanism lives in :mod:`rtcxfer.net.aiortc_internals`, driven from
  :class:`PeerConnection`. A stock peer sees no difference.

Facts about aiortc 1.16 this module relies on (read in its source):

* ``RTCDataChannel.send`` accepts exactly ``str`` and ``bytes`` (an ``isinstance`` check); a
  ``bytearray`` or ``memoryview`` raises ``ValueError``, so those are converted with ``bytes()``
  once. A ``str`` is UTF-8 encoded by aiortc; the limit applies to the encoded length.
* The largest message ``send`` accepts is the *remote's* ``a=max-message-size`` (262144 for
  aiortc 1.16 peers, 65536 for aiortc 1.9 to 1.15 and when the SDP has none, 0 meaning
  unlimited); aiortc 1.16 raises ``ValueError`` above it
  (:func:`~rtcxfer.net.aiortc_internals.remote_max_message_size`). We check first and raise
  :class:`~rtcxfer.protocol.errors.LocalProtocolError`.
* ``bufferedAmount`` counts bytes queued locally (not delivered). ``bufferedamountlow`` fires
  only when the amount *crosses* down to ``bufferedAmountLowThreshold``.
* aiortc gathers candidates in ``setLocalDescription``, on the ICE transports made by then (the
  offerer's once its data channel exists, the answerer's once the offer is set).
* ``pc.close()`` aborts SCTP and drops whatever is queued or in flight: callers must finish a
  transfer at the application level (end marker + acknowledgement) before closing.
* ``RTCPeerConnection`` and ``RTCDataChannel`` remove all their listeners once closed, after
  emitting ``connectionstatechange`` / ``close`` one last time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from cryptography.hazmat.primitives import hashes

from rtcxfer.log import logger
from rtcxfer.net import aiortc_internals
from rtcxfer.net.aiortc_internals import PacketSize, PacketSizer, UnsupportedAiortcError
from rtcxfer.net.ice_paths import Gathering, IceFailure, IcePath, ice_failure, offered_candidates
from rtcxfer.net.signaling.handshake import HandshakeRefusal, SdpAnswer, SdpOffer, decode_handshake
from rtcxfer.net.signaling.messages import PeerLeft, Relay
from rtcxfer.protocol.errors import (
    ConnectionClosedError,
    IceFailedError,
    IceServerError,
    LocalProtocolError,
    RemoteProtocolError,
)
from rtcxfer.protocol.frames import quote_for_log
from rtcxfer.protocol.ice import IceServer

if TYPE_CHECKING:  # pragma: no cover - typing.Self is 3.11+, never imported at run time
    from typing import Self

__all__ = [
    "CHANNEL_LABEL",
    "DEFAULT_HIGH_WATERMARK",
    "ICE_TIMEOUT",
    "DataChannel",
    "PairCloser",
    "PeerConnection",
    "PeerOptions",
    "connect_pair_in_process",
    "connect_via",
    "install_uvloop_if_available",
    "relay_only_supported",
    "signaling_adapter",
    "strip_non_loopback_candidates",
]

CHANNEL_LABEL = "rtcxfer"
"""Label of the single data channel rtcxfer opens; other labels from a peer are refused."""

DEFAULT_HIGH_WATERMARK = 4 * 1024 * 1024
"""Above this many locally queued bytes, senders wait (design: 1-4 MiB is a good start)."""

LOOPBACK_ADDRESS = "127.0.0.1"

ICE_TIMEOUT = 15.0
"""Seconds from the SDP exchange for ICE to find a working candidate pair before the attempt is
given up and diagnosed (:class:`~rtcxfer.protocol.errors.IceFailedError`). A pair that works
answers in well under a second, even through a TURN relay; aioice itself would try a silent
pair for a minute (seven transmissions, 0.5 s doubling) before saying so."""

OFFER_RESEND_SECONDS = 2.5
"""Seconds an offer waits for its answer before it is sent again (the same offer: a worker that
has it already ignores the copy). A worker answers once it has gathered its candidates, within
a second or two even with STUN and TURN; one that got no answer out had dropped the offer."""

# What aiortc assumes when the remote SDP carries no a=max-message-size (RFC 8841 section 6).
_DEFAULT_REMOTE_MAX_MESSAGE_SIZE = 65536

# How often drain() looks at bufferedAmount: the event aiortc offers fires at the low
# threshold, not at zero, and a few milliseconds are nothing next to its ~7 MB/s.
_DRAIN_POLL_SECONDS = 0.005

Message = str | bytes
Role = Literal["offerer", "answerer"]
SignalingSend = Callable[[dict[str, str]], Awaitable[Any]]
SignalingReceive = Callable[[], Awaitable[Any]]


# --------------------------------------------------------------------------- loopback mode


def _candidate_addresses(sdp: str) -> list[str]:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ ..
    fields = (line.split() for line in sdp.splitlines() if line.startswith("a=candidate:"))
    return [each[4] if len(each) > 4 else "" for each in fields]


def strip_non_loopback_candidates(sdp: str) -> str:
    """Return ``sdp`` without the ``a=candidate`` lines whose address is not 127.0.0.1.

    Applied to every remote description in loopback-only mode: a peer's SDP could name any
    address, or an ``.local`` mDNS host name that aioice would resolve by multicast, and either
    would send packets off the loopback interface.
    """
    kept: list[str] = []
    dropped = 0
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ ..
            fields = line.split()
            if len(fields) < 6 or fields[4] != LOOPBACK_ADDRESS:
                dropped += 1
                continue
        kept.append(line)
    if dropped:
        logger.debug("dropped {} non-loopback remote ICE candidate(s)", dropped)
    return "".join(kept)


def _ice_server(entry: Any) -> IceServer:
    """``entry`` (an :class:`~rtcxfer.protocol.ice.IceServer`, a URL, or aiortc's RTCIceServer)
    as an IceServer, its URLs checked (:class:`~rtcxfer.protocol.errors.IceServerError`)."""
    if isinstance(entry, IceServer):
        return entry
    if isinstance(entry, str):
        return IceServer(entry)
    if isinstance(entry, RTCIceServer):
        if entry.credentialType != "password":
            raise IceServerError(f"ICE server {entry.urls!r}: only password credentials are supported")
        return IceServer(entry.urls, entry.username, entry.credential)
    raise TypeError(f"an ICE server is a URL string, an IceServer or an RTCIceServer, not {type(entry).__name__}")


def _ice_servers(entries: Any) -> tuple[IceServer, ...]:
    if isinstance(entries, (str, IceServer, RTCIceServer)):
        entries = (entries,)
    return tuple(_ice_server(entry) for entry in entries)


def _check_ice_servers(instance: PeerOptions, attribute: attrs.Attribute, value: tuple) -> None:
    if instance.loopback_only and value:
        raise ValueError("ice_servers must be empty when loopback_only is set (no STUN/TURN)")


#: IPv6 URLs already warned about: once per process, not once per connection.
_IPV6_URLS_TOLD: set[str] = set()


def _rtc_ice_server(server: IceServer) -> RTCIceServer | None:
    # aiortc's URL pattern cannot read an IPv6 address in brackets: such a URL would make
    # aiortc raise when it gathers, so it is left out (a browser peer can use it).
    urls = [str(url) for url in server.urls if not url.host_is_ipv6]
    for url in server.urls:
        if url.host_is_ipv6 and str(url) not in _IPV6_URLS_TOLD:
            _IPV6_URLS_TOLD.add(str(url))
            logger.warning("ICE server {} left out: aiortc cannot use an IPv6 address in a URL; use a host name",
                           url)
    return RTCIceServer(urls=urls, username=server.username, credential=server.credential) if urls else None


@attrs.frozen
class PeerOptions:
    """How a :class:`PeerConnection` is built.

    ``loopback_only`` (the default) restricts this connection's host candidates to 127.0.0.1,
    uses no ICE server and drops remote candidates that are not 127.0.0.1: nothing is ever sent
    to any other address. Other connections in the process are not affected: one built with
    ``loopback_only=False`` gathers on every interface whatever was built before it. Where this
    aiortc/aioice cannot restrict one connection, a loopback-only one is refused
    (:class:`~rtcxfer.net.aiortc_internals.UnsupportedAiortcError`).

    ``ice_servers``: STUN and TURN servers, as URL strings, :class:`~rtcxfer.protocol.ice.IceServer`
    or aiortc ``RTCIceServer`` objects (with ``username`` and ``credential`` for TURN), kept as
    IceServer objects whose URLs are checked (:class:`~rtcxfer.protocol.errors.IceServerError`);
    only allowed without ``loopback_only``; even then the default is no ICE server at all, never
    aiortc's public STUN default.

    ``ice_servers_from_signaling`` (default on): :meth:`with_signaled_ice_servers` adds the ICE
    servers a signaling server handed out, and a connection given any gathers on every
    interface: loopback-only holds only while no ICE server is known. Off, these options are
    used as they are.

    ``ice_timeout``: seconds from the SDP exchange for ICE to find a working candidate pair
    (:data:`ICE_TIMEOUT`); past it, or when ICE fails sooner, :meth:`PeerConnection.wait_channel_open`
    raises :class:`~rtcxfer.protocol.errors.IceFailedError` with what each side gathered and the
    likely cause. ``relay_only``: gather relay candidates only (the ICE transport policy "relay",
    :meth:`relay_only_retry`).

    ``high_watermark`` is the :class:`DataChannel` send-side buffer limit in bytes.

    ``large_packets`` (default on): offer the peer SCTP packets larger than aiortc's stock size
    (:data:`~rtcxfer.net.aiortc_internals.STOCK_PACKET_SIZE`); when it is an rtcxfer peer too, both
    send large packets (:data:`~rtcxfer.net.aiortc_internals.MAX_PACKET_SIZE`) in datagrams of
    the largest size the path is confirmed (by probing) to carry
    (:mod:`rtcxfer.net.aiortc_internals`). A stock peer never sees a difference.
    """

    loopback_only: bool = True
    ice_servers: tuple[IceServer, ...] = attrs.field(default=(), converter=_ice_servers, validator=_check_ice_servers)
    high_watermark: int = attrs.field(default=DEFAULT_HIGH_WATERMARK, validator=attrs.validators.ge(0))
    large_packets: bool = True
    ice_servers_from_signaling: bool = True
    ice_timeout: float = attrs.field(default=ICE_TIMEOUT, validator=attrs.validators.gt(0))
    relay_only: bool = False

    def with_signaled_ice_servers(self, servers: tuple[IceServer, ...]) -> PeerOptions:
        """These options for a connection made after a signaling server handed out ``servers``:
        they follow this peer's own (aiortc uses only the first STUN and the first TURN server,
        so one given here wins), and gathering is on every interface. Unchanged when ``servers``
        is empty or ``ice_servers_from_signaling`` is off."""
        if not servers or not self.ice_servers_from_signaling:
            return self
        return attrs.evolve(self, loopback_only=False, ice_servers=self.ice_servers + tuple(servers))

    def rtc_configuration(self) -> RTCConfiguration:
        """An ``RTCConfiguration`` with an explicit (empty in loopback mode) ICE server list.

        ``iceServers`` is always passed: ``RTCConfiguration()`` alone means a public STUN server.
        A URL aiortc cannot use (an IPv6 address) is left out, with a warning.
        """
        converted = [] if self.loopback_only else [_rtc_ice_server(server) for server in self.ice_servers]
        servers = [server for server in converted if server is not None]
        if self.relay_only and not self.loopback_only:
            return RTCConfiguration(iceServers=servers, iceTransportPolicy=_relay_policy())
        return RTCConfiguration(iceServers=servers)

    @property
    def has_turn(self) -> bool:
        return not self.loopback_only and any(server.has_turn for server in self.ice_servers)

    def relay_only_retry(self, failed_turn_transport: str | None = None) -> PeerOptions | None:
        """These options for a second attempt with relay candidates only (the ICE transport
        policy "relay"), or None where that cannot help: no TURN server, or an aiortc without
        the policy (:func:`relay_only_supported`). ``failed_turn_transport`` (``udp``): the first
        attempt's TURN allocation over it failed, so a TURN URL over another transport goes
        first (aiortc uses only the first TURN URL it is given), and without one, None."""
        if self.relay_only or not self.has_turn or not relay_only_supported():
            return None
        servers = self.ice_servers
        if failed_turn_transport is not None:
            other = [
                IceServer(turn, server.username, server.credential)
                for server in servers
                if (turn := [url for url in server.urls if url.is_turn and url.transport != failed_turn_transport])
            ]
            if not other:
                return None  # the one TURN transport there is failed already
            servers = tuple(other) + servers
        return attrs.evolve(self, ice_servers=servers, relay_only=True)


def relay_only_supported() -> bool:
    """Whether this aiortc has the ICE transport policy "relay" (``RTCIceTransportPolicy``: aiortc
    1.16 has it, older releases may not)."""
    return _relay_policy() is not None


def _relay_policy() -> Any:
    try:
        from aiortc import RTCIceTransportPolicy
    except ImportError:
        return None
    return RTCIceTransportPolicy.RELAY


def _max_message_size_in_sdp(sdp: str) -> int:
    for line in sdp.splitlines():
        if line.startswith("a=max-message-size:"):
            try:
                return int(line.split(":", 1)[1])
            except ValueError:
                break
    return _DEFAULT_REMOTE_MAX_MESSAGE_SIZE


# --------------------------------------------------------------------------- data channel

# Queue sentinel: everything before it is delivered, then recv raises.
_CLOSED = object()


class DataChannel:
    """An open (or opening) ``RTCDataChannel`` with awaitable send, recv and drain.

    Built by :class:`PeerConnection` (never by hand in application code): the ``message``
    handler is attached in the constructor, which the answering side runs synchronously inside
    aiortc's ``datachannel`` event, so no early message can be lost.

    Receive side: aiortc has no receive-side flow control (SCTP's window is fed regardless of
    whether anybody reads), so the queue is unbounded; a bounded queue could only drop
    messages or block aiortc's event loop. Memory is bounded by the *sender's* backpressure
    and by the reader keeping up; a reader that stops reading lets the queue grow.

    It also tells about the connection under it (:class:`rtcxfer.net.link.ConnectionAddresses`):
    :attr:`loopback_only`, :meth:`local_host_addresses`, :meth:`remote_candidate_addresses`,
    :meth:`peer_path_address`, :meth:`local_candidate_addresses`.
    """

    def __init__(
        self,
        channel: RTCDataChannel,
        *,
        high_watermark: int = DEFAULT_HIGH_WATERMARK,
        sdp_max_message_size: int = _DEFAULT_REMOTE_MAX_MESSAGE_SIZE,
        loopback_only: bool = True,
    ) -> None:
        if high_watermark < 0:
            raise ValueError("high_watermark must be >= 0")
        self._channel = channel
        self._high = high_watermark
        self._loopback_only = loopback_only
        self._sdp_max_message_size = sdp_max_message_size
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._room = asyncio.Event()  # set by bufferedamountlow and by closing
        self._settled = asyncio.Event()  # set once open, or once closed before opening
        self._closed = False
        self._close_reason = "data channel closed"

        channel.bufferedAmountLowThreshold = high_watermark // 4
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._room.set)
        channel.on("open", self._settled.set)
        channel.on("close", self._on_close)
        if channel.readyState == "open":
            self._settled.set()
        elif channel.readyState in ("closing", "closed"):
            self._mark_closed(f"data channel already {channel.readyState}")

    # -- event handlers: called synchronously by pyee, so they must never raise

    def _on_message(self, message: Message) -> None:
        if not self._closed:
            self._queue.put_nowait(message)

    def _on_close(self) -> None:
        self._mark_closed("data channel closed")

    def _mark_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        self._queue.put_nowait(_CLOSED)
        self._room.set()
        self._settled.set()
        logger.debug("data channel {!r}: {}", self._channel.label, reason)

    # -- properties

    @property
    def label(self) -> str:
        return self._channel.label

    @property
    def closed(self) -> bool:
        """True once the channel or its peer connection closed (or failed), locally or remotely."""
        return self._closed

    @property
    def is_open(self) -> bool:
        return not self._closed and self._channel.readyState == "open"

    @property
    def buffered_amount(self) -> int:
        """Bytes queued locally by aiortc and not yet handed to SCTP (not "delivered")."""
        return self._channel.bufferedAmount

    @property
    def high_watermark(self) -> int:
        return self._high

    @property
    def max_message_size(self) -> int | None:
        """The largest message (in bytes, UTF-8 for text) the remote accepts; None if unlimited.

        The limit aiortc itself enforces when it has one, else the remote SDP's
        ``a=max-message-size`` (:func:`~rtcxfer.net.aiortc_internals.remote_max_message_size`).
        """
        return aiortc_internals.remote_max_message_size(self._channel, self._sdp_max_message_size) or None

    @property
    def sctp_user_data_per_packet(self) -> int | None:
        """Bytes of a message one SCTP packet carries now (aiortc cuts messages into packets of
        this much); None before SCTP is up. A message of a whole number of them wastes no packet
        on a short last piece."""
        return aiortc_internals.sctp_user_data_per_packet(self._channel)

    # -- the connection under the channel

    @property
    def loopback_only(self) -> bool:
        """True when the connection was built loopback-only: its host candidates are 127.0.0.1
        and remote candidates elsewhere were dropped, so it sends nothing off loopback."""
        return self._loopback_only

    def local_host_addresses(self) -> tuple[str, ...]:
        """The addresses of this connection's own ICE host candidates (``("127.0.0.1",)`` for a
        loopback-only one; empty before candidates are gathered)."""
        return aiortc_internals.local_host_addresses(self._channel)

    def remote_candidate_addresses(self) -> frozenset[str]:
        """The IP addresses of the remote peer's ICE candidates (empty before ICE started)."""
        return aiortc_internals.remote_candidate_addresses(self._channel)

    def peer_path_address(self) -> str | None:
        """The peer's own IP address on the candidate pair ICE selected, where this side's
        packets go (its host address, or its NAT's public one); None before ICE selected a pair,
        and when the peer's side of it is a TURN relay (an address of the relay, not the peer's)."""
        selected = aiortc_internals.selected_remote_candidate(self._channel)
        return selected[0] if selected is not None and selected[1] != "relay" else None

    def local_candidate_addresses(self) -> frozenset[str]:
        """The IP addresses of all this side's ICE candidates: host, server-reflexive (this
        side's NAT), relay (its TURN server)."""
        return aiortc_internals.local_candidate_addresses(self._channel)

    # -- sending

    async def send_text(self, text: str) -> None:
        """Send one text message, waiting first while the local buffer is over the watermark.

        Raises :class:`LocalProtocolError` if its UTF-8 form exceeds :attr:`max_message_size`,
        :class:`ConnectionClosedError` if the channel is closed.
        """
        if self._closed:
            raise ConnectionClosedError(self._close_reason)
        limit = self.max_message_size
        # UTF-8 needs at most 4 bytes a character: only encode when the text could be too big.
        if limit is not None and len(text) * 4 > limit:
            size = len(text.encode("utf-8"))
            if size > limit:
                raise LocalProtocolError(f"text message of {size} bytes exceeds the remote's maximum of {limit}")
        if self._channel.bufferedAmount > self._high:
            await self._wait_for_room()
        self._send(text)

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send one binary message, waiting first while the local buffer is over the watermark.

        ``bytes`` are handed to aiortc without a copy; a ``bytearray`` or ``memoryview`` is
        copied once, because aiortc's ``send`` accepts nothing else. Raises
        :class:`LocalProtocolError` above :attr:`max_message_size`,
        :class:`ConnectionClosedError` if the channel is closed.
        """
        if self._closed:
            raise ConnectionClosedError(self._close_reason)
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        limit = self.max_message_size
        if limit is not None and size > limit:
            raise LocalProtocolError(f"binary message of {size} bytes exceeds the remote's maximum of {limit}")
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._channel.bufferedAmount > self._high:
            await self._wait_for_room()
        self._send(data)

    async def _wait_for_room(self) -> None:
        channel = self._channel
        # Check before each wait: bufferedamountlow fires only on a downward crossing, and
        # other senders may have refilled the buffer between the event and our wake-up.
        while channel.bufferedAmount > self._high:
            if self._closed:
                raise ConnectionClosedError(self._close_reason)
            self._room.clear()
            await self._room.wait()
        if self._closed:
            raise ConnectionClosedError(self._close_reason)

    def _send(self, message: Message) -> None:
        try:
            self._channel.send(message)
        except InvalidStateError as exc:
            # readyState is closing/closed: aiortc got there before our close event did.
            raise ConnectionClosedError(f"data channel is {self._channel.readyState}") from exc
        except ValueError as exc:
            # Only reachable if aiortc's limit changed under us; our own check runs first.
            raise LocalProtocolError(str(exc)) from exc

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until aiortc's local send queue is empty (``bufferedAmount == 0``).

        This means "handed to SCTP", not "received": it does not replace an application-level
        acknowledgement before closing. Raises ``asyncio.TimeoutError`` after ``timeout`` seconds and
        :class:`ConnectionClosedError` if the channel closes with bytes still queued.
        """

        async def _drain() -> None:
            while self._channel.bufferedAmount > 0:
                if self._closed:
                    raise ConnectionClosedError(
                        f"{self._close_reason} with {self._channel.bufferedAmount} bytes unsent"
                    )
                await asyncio.sleep(_DRAIN_POLL_SECONDS)

        await asyncio.wait_for(_drain(), timeout)

    # -- receiving

    async def recv(self) -> Message:
        """The next message (``str`` for text, ``bytes`` for binary), in order.

        Messages received before the channel closed are still returned; after them, and on
        every later call, :class:`ConnectionClosedError` is raised.
        """
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            item = await self._queue.get()
        if item is _CLOSED:
            # Put it back so that concurrent and later receivers wake and fail too.
            self._queue.put_nowait(_CLOSED)
            raise ConnectionClosedError(self._close_reason)
        return item

    def close(self) -> None:
        """Close the channel (an SCTP stream reset) and wake receivers and senders.

        Queued but unsent bytes may be lost: :meth:`drain` and wait for the peer's
        acknowledgement first.
        """
        self._mark_closed("data channel closed locally")
        if self._channel.readyState not in ("closing", "closed"):
            self._channel.close()

    def dtls_fingerprints(self) -> tuple[str, str] | None:
        """SHA-256 fingerprints ``(local, remote)`` of the DTLS certificates this channel runs
        over, as this side's handshake saw them (the remote one from the certificate the peer
        really presented); None before DTLS is up. Session authentication binds both."""
        try:
            dtls = aiortc_internals.dtls_transport(self._channel)
            local = next(f.value for f in dtls.getLocalParameters().fingerprints if f.algorithm == "sha-256")
            peer_certificate = aiortc_internals.peer_certificate(self._channel)
        except (AttributeError, StopIteration):
            return None
        if peer_certificate is None:
            return None
        # Computed here: aiortc's certificate_digest changed its signature between releases.
        digest = peer_certificate.fingerprint(hashes.SHA256()).hex().upper()
        remote = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
        return local.upper(), remote

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._channel.readyState
        return f"<DataChannel {self._channel.label!r} {state} buffered={self.buffered_amount}>"


# --------------------------------------------------------------------------- peer connection


class PeerConnection:
    """One ``RTCPeerConnection`` carrying the ``"rtcxfer"`` data channel.

    Offerer: ``sdp = await create_offer()``, send it, ``await accept_answer(answer)``.
    Answerer: ``answer = await accept_offer(sdp)``, send it back. Both then
    ``channel = await wait_channel_open(timeout)`` and finally ``await close()``.
    Construct it inside a running event loop.

    If the connection fails or closes, the channel is marked closed so that waiting receivers
    and senders wake with :class:`ConnectionClosedError`; ``close()`` must still be called to
    release the sockets.
    """

    def __init__(
        self,
        options: PeerOptions | None = None,
        *,
        any_channel_label: bool = False,
        names: tuple[str, str] = ("this side", "the peer"),
    ) -> None:
        self._options = options if options is not None else PeerOptions()
        # Whether a channel the peer opens may carry another label than "rtcxfer".
        self._any_channel_label = any_channel_label
        # How a failed ICE negotiation names the two sides ("this client", "worker gpu-1").
        self._names = names
        if self._options.loopback_only:
            unsupported = aiortc_internals.host_restriction_unsupported_reason()
            if unsupported is not None:
                # Fail before anything is gathered: a loopback-only peer must not gather elsewhere.
                raise UnsupportedAiortcError(f"no loopback-only peer: {unsupported}")
        self._pc = RTCPeerConnection(configuration=self._options.rtc_configuration())
        #: Observers of the SCTP packet size (``PacketSize``); called on every change.
        self.on_packet_size: list[Callable[[PacketSize], None]] = []
        self._sizer = PacketSizer(self._options.large_packets, on_change=self._packet_size_changed)
        self._channel: DataChannel | None = None
        # Set once the channel wrapper exists, or once the connection ended without one.
        self._channel_ready = asyncio.Event()
        self._ended_reason: str | None = None
        self._closing = False
        # The remote SDP's a=max-message-size: the limit where aiortc keeps none of its own.
        self._sdp_max_message_size = _DEFAULT_REMOTE_MAX_MESSAGE_SIZE
        # ICE: set once a pair is nominated; the watchdog gives up after ice_timeout.
        self._ice_completed = asyncio.Event()
        self._ice_watchdog: asyncio.Task | None = None
        self._ice_failure: IceFailure | None = None
        self._ice_started = 0.0
        self._remote_offered = Gathering(servers_known=False)
        self._pc.on("connectionstatechange", self._on_connection_state_change)
        self._pc.on("iceconnectionstatechange", self._on_ice_state_change)
        self._pc.on("datachannel", self._on_datachannel)

    # -- properties

    @property
    def options(self) -> PeerOptions:
        return self._options

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState

    @property
    def local_sdp(self) -> str | None:
        description = self._pc.localDescription
        return description.sdp if description is not None else None

    @property
    def channel(self) -> DataChannel | None:
        """The data channel wrapper once it exists (it may not be open yet)."""
        return self._channel

    # -- aiortc events (synchronous, must not raise)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if (channel.label != CHANNEL_LABEL and not self._any_channel_label) or self._channel is not None:
            logger.warning("refusing unexpected data channel {!r} from the peer", channel.label)
            channel.close()
            return
        # Synchronously, inside the event: the message handler must exist before aiortc
        # delivers the next packet, or the peer's first messages are lost.
        self._channel = self._wrap(channel)
        self._channel_ready.set()

    def _on_connection_state_change(self) -> None:
        state = self._pc.connectionState
        logger.debug("peer connection state: {}", state)
        if state == "failed" and not self._ice_completed.is_set():
            self._fail_ice()
        if state in ("failed", "closed") and self._ended_reason is None:
            self._ended_reason = f"peer connection {state}"
            if self._channel is not None:
                self._channel._mark_closed(self._ended_reason)
            self._channel_ready.set()

    def _on_ice_state_change(self) -> None:
        state = self._pc.iceConnectionState
        logger.debug("ICE connection state: {}", state)
        if state == "completed":
            self._ice_completed.set()
        elif state == "failed" and not self._ice_completed.is_set():
            self._fail_ice()

    def _watch_ice(self) -> None:
        """Start the ICE watchdog: both descriptions are set, so aiortc's checks start now."""
        if self._ice_watchdog is None and not self._closing:
            self._ice_started = asyncio.get_running_loop().time()
            self._ice_watchdog = asyncio.create_task(self._ice_deadline())

    async def _ice_deadline(self) -> None:
        try:
            await asyncio.wait_for(self._ice_completed.wait(), self._options.ice_timeout)
        except asyncio.TimeoutError:
            self._fail_ice()

    def _fail_ice(self) -> None:
        """ICE found no working pair (it said so, or the watchdog ran out): diagnose it and end
        the wait for the channel with :class:`IceFailedError`."""
        if self._ice_failure is not None or self._closing:
            return
        local = aiortc_internals.local_gathering(self._pc) or Gathering(servers_known=False)
        remote = self._remote_offered
        elapsed = asyncio.get_running_loop().time() - self._ice_started if self._ice_started else 0.0
        this, peer = self._names
        self._ice_failure = ice_failure(local, remote, elapsed, peer=peer, this=this)
        logger.debug("ICE failed: {}", self._ice_failure.gathered())
        self._ended_reason = self._ice_failure.explain()
        if self._channel is not None:
            self._channel._mark_closed(self._ended_reason)
        self._channel_ready.set()

    @property
    def ice_failure(self) -> IceFailure | None:
        """Why no candidate pair worked (what each side gathered, the likely cause), once ICE failed."""
        return self._ice_failure

    @property
    def ice_path(self) -> IcePath | None:
        """The candidate pair ICE chose (:meth:`IcePath.describe` says which way the data goes),
        or None before ICE completed (or where this aioice cannot tell)."""
        return aiortc_internals.selected_ice_path(self._pc)

    def ice_gathering(self) -> Gathering | None:
        """What this side gathered, with which STUN/TURN server, and why an allocation or a STUN
        query failed (None where this aiortc cannot tell)."""
        return aiortc_internals.local_gathering(self._pc)

    def _wrap(self, channel: RTCDataChannel) -> DataChannel:
        return DataChannel(
            channel,
            high_watermark=self._options.high_watermark,
            sdp_max_message_size=self._sdp_max_message_size,
            loopback_only=self._options.loopback_only,
        )

    def _check_usable(self) -> None:
        if self._closing:
            raise ConnectionClosedError("peer connection closed")

    async def _set_remote(self, sdp: str, kind: str) -> None:
        self._remote_offered = offered_candidates(sdp)  # as the peer sent it: the diagnosis tells
        if self._options.loopback_only:
            sdp = strip_non_loopback_candidates(sdp)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except InvalidStateError as exc:
            raise LocalProtocolError(f"cannot accept an SDP {kind} now: {exc}") from exc
        except ValueError as exc:
            raise RemoteProtocolError(f"the peer's SDP {kind} is invalid: {exc}") from exc
        self._sdp_max_message_size = _max_message_size_in_sdp(sdp)
        if self._channel is not None:
            self._channel._sdp_max_message_size = self._sdp_max_message_size
        self._sizer.remote_description(sdp, self._pc.sctp)

    async def _set_local(self, description: RTCSessionDescription) -> None:
        """``setLocalDescription``, where aiortc gathers: a loopback-only connection's gatherers
        are restricted to 127.0.0.1 first, and what they gathered is checked after."""
        if self._options.loopback_only:
            aiortc_internals.restrict_host_candidates(self._pc, (LOOPBACK_ADDRESS,))
        else:
            aiortc_internals.watch_ice(self._pc)
        await self._pc.setLocalDescription(description)
        if self._options.loopback_only:
            gathered = _candidate_addresses(self._pc.localDescription.sdp)
            elsewhere = sorted({address for address in gathered if address != LOOPBACK_ADDRESS})
            if elsewhere:
                # Only if aioice changed under the restriction; never let such an SDP leave.
                await self.close()
                raise UnsupportedAiortcError(
                    f"loopback-only, yet aioice gathered host candidates on {', '.join(elsewhere)}: connection closed"
                )

    def _local_sdp_to_send(self) -> str:
        return self._sizer.advertise_in(self._pc.localDescription.sdp)

    def _packet_size_changed(self, size: PacketSize) -> None:
        for observer in list(self.on_packet_size):
            try:
                observer(size)
            except Exception:  # an observer's bug must not break the SCTP transport
                logger.exception("packet size observer failed")

    def watch_packet_size(self, callback: Callable[[PacketSize], None]) -> None:
        """Call ``callback`` with the packet size now if it is decided, and on every change."""
        if self._sizer.decided:
            callback(self._sizer.current)
        self.on_packet_size.append(callback)

    @property
    def packet_size(self) -> PacketSize:
        """The SCTP packet size this side sends now, and why."""
        return self._sizer.current

    @property
    def sctp_packet_size(self) -> int:
        return self._sizer.current.size

    async def packet_size_settled(self, timeout: float | None = 5.0) -> PacketSize:
        """The packet size once the first probe round is over (or known without one)."""
        return await self._sizer.settled(timeout)

    # -- offer / answer

    async def create_offer(self) -> str:
        """Create the ``"rtcxfer"`` channel (ordered, reliable) and return the SDP offer.

        The channel must exist before the offer, or the SDP has no application section.
        The returned SDP already holds every local candidate.
        """
        self._check_usable()
        if self._channel is not None:
            raise LocalProtocolError("create_offer() was already called on this connection")
        self._channel = self._wrap(self._pc.createDataChannel(CHANNEL_LABEL, ordered=True))
        self._channel_ready.set()
        self._sizer.prepare(self._pc.sctp)
        try:
            await self._set_local(await self._pc.createOffer())
        except InvalidStateError as exc:
            raise LocalProtocolError(f"cannot create an offer now: {exc}") from exc
        return self._local_sdp_to_send()

    async def accept_offer(self, sdp: str) -> str:
        """Apply the peer's SDP offer and return our SDP answer (with all our candidates)."""
        self._check_usable()
        await self._set_remote(sdp, "offer")
        try:
            await self._set_local(await self._pc.createAnswer())
        except InvalidStateError as exc:
            raise LocalProtocolError(f"cannot create an answer now: {exc}") from exc
        self._watch_ice()
        return self._local_sdp_to_send()

    async def accept_answer(self, sdp: str) -> None:
        """Apply the peer's SDP answer to the offer :meth:`create_offer` returned."""
        self._check_usable()
        if self._channel is None:
            raise LocalProtocolError("accept_answer() before create_offer()")
        await self._set_remote(sdp, "answer")
        self._watch_ice()

    async def wait_channel_open(self, timeout: float | None = 30.0) -> DataChannel:
        """Wait until the data channel is open and return it.

        Raises ``asyncio.TimeoutError`` (the builtin ``TimeoutError`` on Python 3.11+)
        after ``timeout`` seconds (None: no limit),
        :class:`~rtcxfer.protocol.errors.IceFailedError` when ICE finds no working candidate pair
        within the options' ``ice_timeout`` or ``timeout`` (or fails sooner), and :class:`ConnectionClosedError`
        if the connection fails or closes first.
        """

        def ended() -> ConnectionClosedError:
            if self._ice_failure is not None:
                return IceFailedError(self._ice_failure.explain(), self._ice_failure)
            return ConnectionClosedError(self._ended_reason or "peer connection closed")

        async def _wait() -> DataChannel:
            await self._channel_ready.wait()
            channel = self._channel
            if channel is None:
                raise ended()
            await channel._settled.wait()
            if channel.closed:
                if self._ice_failure is not None:
                    raise ended()
                raise ConnectionClosedError(channel._close_reason)
            self._sizer.start()
            return channel

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except asyncio.TimeoutError:
            # Out of time with ICE still checking: what each side gathered says why.
            if self._ice_watchdog is not None and not self._ice_completed.is_set():
                self._fail_ice()
                if self._ice_failure is not None:
                    raise ended() from None
            raise

    async def close(self) -> None:
        """Close the connection (idempotent). Unsent and in-flight bytes are dropped."""
        if self._closing:
            return
        self._closing = True
        if self._ended_reason is None:
            self._ended_reason = "peer connection closed locally"
        if self._channel is not None:
            self._channel._mark_closed(self._ended_reason)
        self._channel_ready.set()
        self._sizer.close()
        if self._ice_watchdog is not None:
            self._ice_watchdog.cancel()
        # Shielded: when the peer has gone, aiortc is often closing already in a task of its
        # own, and our close() then awaits that task's future; cancelling us (the client left
        # the room meanwhile) would cancel that future, and aiortc's task would then fail
        # ("Task exception was never retrieved ... InvalidStateError").
        await asyncio.shield(self._pc.close())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<PeerConnection {self._pc.connectionState} channel={self._channel!r}>"


# --------------------------------------------------------------------------- conveniences


class PairCloser:
    """The ``close_fn`` of :func:`connect_pair_in_process`: ``await close_fn()`` closes both.

    ``offerer`` and ``answerer`` are the two :class:`PeerConnection` objects, for tests that
    need to close or inspect one side only.
    """

    def __init__(self, offerer: PeerConnection, answerer: PeerConnection) -> None:
        self.offerer = offerer
        self.answerer = answerer

    async def __call__(self) -> None:
        await asyncio.gather(self.offerer.close(), self.answerer.close())


async def connect_pair_in_process(
    options: PeerOptions | None = None, timeout: float = 30.0
) -> tuple[DataChannel, DataChannel, PairCloser]:
    """Two real peers in this process, SDP handed over directly (no signaling server).

    Returns ``(offerer_channel, answerer_channel, close_fn)``; both channels are open.
    """
    options = options if options is not None else PeerOptions()
    offerer = PeerConnection(options)
    answerer = PeerConnection(options)
    close_fn = PairCloser(offerer, answerer)
    try:
        answer = await answerer.accept_offer(await offerer.create_offer())
        await offerer.accept_answer(answer)
        results = await asyncio.gather(
            offerer.wait_channel_open(timeout),
            answerer.wait_channel_open(timeout),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
    except BaseException:
        await close_fn()
        raise
    offerer_channel, answerer_channel = results
    return offerer_channel, answerer_channel, close_fn


def _expect_sdp(message: Any, kind: str) -> str:
    handshake = decode_handshake(message)
    if isinstance(handshake, HandshakeRefusal):
        # The other side says what it expected instead (see docs/protocol.md, section 1.4).
        raise RemoteProtocolError(f"the peer refused our SDP {'offer' if kind == 'answer' else 'message'}: "
                                  f"{quote_for_log(handshake.message, 300)}")
    if isinstance(handshake, (SdpOffer, SdpAnswer)) and handshake.KIND == kind:
        return handshake.sdp
    if not isinstance(message, Mapping):
        raise RemoteProtocolError(f"expected an SDP {kind} message, got a {type(message).__name__}")
    # Describe, never echo: the message came from the network.
    raise RemoteProtocolError(f"expected an SDP {kind} message, got kind {str(message.get('kind'))[:32]!r}")


async def connect_via(
    signaling_send: SignalingSend,
    signaling_receive: SignalingReceive,
    role: Role,
    options: PeerOptions | None = None,
    timeout: float = 30.0,
    *,
    names: tuple[str, str] = ("this side", "the peer"),
    resend_offer_after: float | None = OFFER_RESEND_SECONDS,
) -> tuple[PeerConnection, DataChannel]:
    """Connect through any signaling channel, given a way to send and to receive one message.

    ``signaling_send(payload)`` delivers ``{"kind": "offer" | "answer", "sdp": ...}`` to the
    other side; ``signaling_receive()`` returns the next such payload from it. With a
    ``SignalingClient``, whose ``receive()`` wraps payloads in relay events and interleaves
    peer events, :func:`signaling_adapter` builds the pair::

        send, receive = signaling_adapter(client, peer_id)
        peer, channel = await connect_via(send, receive, "offerer")

    The offerer sends the offer and receives the answer; the answerer the reverse. The whole
    handshake, up to an open channel, is bounded by ``timeout`` (``asyncio.TimeoutError``); ICE
    that finds no working candidate pair raises
    :class:`~rtcxfer.protocol.errors.IceFailedError` sooner (``options.ice_timeout``), its text
    naming the two sides by ``names`` (this side's, the peer's). A payload of the wrong shape or
    kind raises :class:`RemoteProtocolError`. On any failure the peer connection is closed.
    Returns ``(peer_connection, open_channel)``; the caller owns ``peer_connection.close()``.

    The offerer sends its offer again each ``resend_offer_after`` seconds without an answer: a
    worker under a flood of offers drops some at random, and one that has the offer already
    ignores the copy (see :mod:`rtcxfer.worker.limits`).
    """
    if role not in ("offerer", "answerer"):
        raise ValueError(f"role must be 'offerer' or 'answerer', not {role!r}")
    peer = PeerConnection(options, names=names)

    async def _handshake() -> DataChannel:
        if role == "offerer":
            offer = SdpOffer(await peer.create_offer()).to_payload()
            await signaling_send(offer)
            answer = await _answer_to(offer, signaling_send, signaling_receive, resend_offer_after)
            await peer.accept_answer(_expect_sdp(answer, "answer"))
        else:
            offer = _expect_sdp(await signaling_receive(), "offer")
            await signaling_send(SdpAnswer(await peer.accept_offer(offer)).to_payload())
        return await peer.wait_channel_open(None)

    try:
        channel = await asyncio.wait_for(_handshake(), timeout)
    except BaseException:
        await peer.close()
        raise
    return peer, channel


async def _answer_to(
    offer: dict[str, str], send: SignalingSend, receive: SignalingReceive, resend_after: float | None
) -> Any:
    """The next payload from the other side, the offer sent again each ``resend_after`` seconds
    until it comes."""
    while True:
        try:
            return await asyncio.wait_for(receive(), resend_after)
        except asyncio.TimeoutError:
            logger.info("no answer to the offer within {:g} s: sending it again", resend_after)
            await send(offer)


def signaling_adapter(client: Any, peer_id: str) -> tuple[SignalingSend, SignalingReceive]:
    """``(send, receive)`` for :func:`connect_via` over a ``rtcxfer.net.signaling.SignalingClient``
    (or anything with its ``send_to(peer_id, payload)`` and ``receive()``).

    ``receive`` returns the payload of the next :class:`~rtcxfer.net.signaling.messages.Relay`
    from ``peer_id``, skips other events, and raises :class:`ConnectionClosedError` if
    ``peer_id`` leaves the room (:class:`~rtcxfer.net.signaling.messages.PeerLeft`), since the
    handshake could then never complete.
    """

    async def send(payload: dict[str, str]) -> None:
        await client.send_to(peer_id, payload)

    async def receive() -> Any:
        while True:
            event = await client.receive()
            if isinstance(event, Relay) and event.sender == peer_id:
                return event.payload
            if isinstance(event, PeerLeft) and event.peer_id == peer_id:
                raise ConnectionClosedError(f"peer {peer_id!r} left during the SDP exchange")
            # Joins, and relays from other peers, are not part of this handshake.
            logger.debug("signaling event ignored during the SDP exchange: {}", type(event).__name__)

    return send, receive


def install_uvloop_if_available() -> bool:
    """Install uvloop's event loop policy if uvloop is importable; return whether it was.

    Call it before ``asyncio.run``; loops created earlier are unaffected. uvloop speeds aiortc
    up by about 1.3-1.5x here and is an optional extra (``rtcxfer[fast]``).
    """
    try:
        import uvloop
    except ImportError:
        logger.debug("uvloop is not installed; keeping the default event loop")
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    logger.debug("uvloop event loop policy installed")
    return True
