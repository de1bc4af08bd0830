"""Which path a data channel took, and why none did (sans-IO).

ICE pairs one of this side's candidates with one of the peer's. What the chosen pair's two
candidates are tells the path (:class:`IcePath`, :meth:`IcePath.describe`)::

    peer-to-peer (host)                              both host candidates: one network, or public addresses
    through NAT (server-reflexive)                   a NAT's mapping that a STUN server found (or ICE learned)
    via TURN relay 198.51.100.1:49160 over udp       this side's TURN allocation relays (udp|tcp: to the server)
    via TURN relay 198.51.100.1:49161 (the worker's) the peer's allocation relays

When no pair works, what each side gathered (:class:`Gathering`: how many host, server-reflexive
and relay candidates, with which STUN and TURN server, and why an allocation or a STUN query
failed) and what the peer offered (its SDP's candidates) tell the likely cause and its remedy
(:func:`diagnose`, :class:`IceFailure`):

===========================  ====================================================  ========================
cause                        seen                                                   remedy
===========================  ====================================================  ========================
``turn-refused``             this side's TURN allocation answered 401/403           the same secret on both
``no-ice-servers``           no STUN/TURN here, only host candidates there          ``signal --stun/--turn``
``udp-blocked``              a STUN server known, yet no server-reflexive answer    TURN over TCP
``turn-unreachable``         a TURN server known, no allocation (no answer)         TURN over TCP / reachable
``peer-without-servers``     server-reflexive here, only host candidates there      STUN/TURN for the peer
``symmetric-nat``            server-reflexive on both sides, no relay anywhere      a TURN relay
``relay-failed``             relay candidates, still no pair                        the TURN server's relay
``unknown``                  anything else                                          ``rtcxfer doctor``
===========================  ====================================================  ========================

The texts follow :mod:`rtcxfer.cli.messages`: what happened, the likely cause, what to do. The
I/O edge (:mod:`rtcxfer.net.aiortc_internals`) reads aioice's candidates into these objects;
nothing here touches a network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

__all__ = [
    "CAUSES",
    "KIND_NAMES",
    "Endpoint",
    "Gathering",
    "GatheringError",
    "IceFailure",
    "IcePath",
    "count_kinds",
    "diagnose",
    "ice_failure",
    "offered_candidates",
    "relay_can_reach",
]

#: How ICE candidate types are named for people.
KIND_NAMES = {"host": "host", "srflx": "server-reflexive", "prflx": "peer-reflexive", "relay": "relay"}

#: Every cause :func:`diagnose` can name.
CAUSES = (
    "turn-refused",
    "no-ice-servers",
    "udp-blocked",
    "turn-unreachable",
    "peer-without-servers",
    "symmetric-nat",
    "relay-failed",
    "unknown",
)

#: TURN answers that refuse the credentials (RFC 8656: 401 Unauthorized; coturn also answers
#: 403 Forbidden to a user it does not know in some setups).
_REFUSED_CODES = frozenset({401, 403})

_STUN_REMEDY = "`rtcxfer signal --stun stun:HOST:3478` (enough where both NATs keep ports)"
_TURN_REMEDY = (
    "`rtcxfer signal --turn turn:HOST:3478 --turn-secret-file FILE` with the TURN server's shared secret "
    "(coturn: use-auth-secret, static-auth-secret)"
)
_TCP_TURN_REMEDY = (
    "a TURN server the blocked network reaches over TCP: `rtcxfer signal --turn 'turn:HOST:3478?transport=tcp' "
    "--turn-secret-file FILE` (or port 443 where only the web gets out)"
)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


@attrs.frozen
class Endpoint:
    """One candidate of a pair: its ICE type (``host``, ``srflx``, ``prflx``, ``relay``) and
    transport address."""

    kind: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@attrs.frozen
class IcePath:
    """The candidate pair ICE chose: ``local`` (this side's: ``host`` or ``relay``; aioice sends
    from nothing else), ``remote`` (the peer's), and ``turn_transport`` (``udp`` or ``tcp``:
    how this side reaches its TURN server, for a local relay candidate)."""

    local: Endpoint
    remote: Endpoint
    turn_transport: str | None = None

    @property
    def kind(self) -> str:
        """``relay``, ``nat`` or ``host``: what carries the packets."""
        if "relay" in (self.local.kind, self.remote.kind):
            return "relay"
        if {"srflx", "prflx"} & {self.local.kind, self.remote.kind}:
            return "nat"
        return "host"

    def describe(self, peer: str = "the peer") -> str:
        """``peer-to-peer (host)``, ``through NAT (server-reflexive)`` (or ``peer-reflexive``
        when ICE learned the mapping from the peer's checks), ``via TURN relay ADDRESS over
        udp|tcp`` (this side's allocation) or ``via TURN relay ADDRESS (PEER's)``."""
        if self.local.kind == "relay":
            return f"via TURN relay {self.local} over {self.turn_transport or 'udp'}"
        if self.remote.kind == "relay":
            return f"via TURN relay {self.remote} ({peer}'s)"
        if self.kind == "nat":
            seen = "srflx" if "srflx" in (self.local.kind, self.remote.kind) else "prflx"
            return f"through NAT ({KIND_NAMES[seen]})"
        return "peer-to-peer (host)"


@attrs.frozen
class GatheringError:
    """Why a TURN allocation or a STUN query got no candidate: the STUN error ``code`` (401...)
    where the server answered one, and a short text (``401 Unauthorized``, ``no answer``)."""

    code: int | None
    text: str

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class Gathering:
    """What one side gathered (its candidates of each kind) and with which servers.

    For this side everything is known; for the peer only what its SDP offered
    (:func:`offered_candidates`): ``servers_known`` is then False and the servers None.
    """

    host: int = 0
    srflx: int = 0
    relay: int = 0
    #: ``HOST:PORT`` of the STUN and TURN server used (aiortc uses the first of each), or None.
    stun: str | None = None
    turn: str | None = None
    turn_transport: str | None = None
    #: Relay candidates only (the ICE transport policy "relay").
    relay_only: bool = False
    relay_error: GatheringError | None = None
    srflx_error: GatheringError | None = None
    servers_known: bool = True

    @property
    def total(self) -> int:
        return self.host + self.srflx + self.relay

    def counts(self) -> str:
        """``1 host, 1 server-reflexive and 0 relay candidates``."""
        return f"{self.host} host, {self.srflx} server-reflexive and {_plural(self.relay, 'relay candidate')}"

    def describe(self) -> str:
        """The counts, then the servers and what went wrong with them (this side only)."""
        if not self.servers_known:
            return self.counts()
        servers = []
        if self.stun:
            failed = f": {self.srflx_error}" if self.srflx_error and not self.srflx else ""
            servers.append(f"STUN {self.stun}{failed}")
        if self.turn:
            failed = f": {self.relay_error}" if self.relay_error and not self.relay else ""
            servers.append(f"TURN {self.turn} over {self.turn_transport or 'udp'}{failed}")
        if self.relay_only:
            servers.append("relay candidates only")
        return f"{self.counts()} ({'; '.join(servers) or 'no STUN or TURN server configured'})"


def offered_candidates(sdp: str) -> Gathering:
    """The kinds of candidates an SDP offers (``a=candidate:... typ KIND``), as a
    :class:`Gathering` whose servers are unknown. A peer-reflexive candidate counts as
    server-reflexive: either is a NAT's public mapping."""
    kinds = []
    for line in sdp.splitlines():
        fields = line.split()
        if line.startswith("a=candidate:") and "typ" in fields[:-1]:
            kinds.append(fields[fields.index("typ") + 1])
    return Gathering(**count_kinds(kinds), servers_known=False)


_SITE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fe80::/10")
)


def relay_can_reach(relay_address: str, peer_address: str) -> bool:
    """Whether a TURN server whose relay address is ``relay_address`` can be expected to reach
    ``peer_address`` (a peer's host candidate): a global address, or one of the same private
    network block as the relay address (a TURN server inside that site). Loopback and
    link-local addresses, and another site's private ones, no TURN server outside reaches.

    Asking a TURN server to relay there is useless at best; coturn 4.6.1 even closes the whole
    allocation when its relay socket's send fails (``udp send: Network is unreachable`` where it
    has no route to the address).
    """
    try:
        peer = ipaddress.ip_address(peer_address)
        relay = ipaddress.ip_address(relay_address)
    except ValueError:
        return False  # an mDNS name: aioice never relays to those either
    if peer.is_loopback or peer.is_link_local or peer.is_unspecified or peer.is_multicast:
        return False
    for network in _SITE_NETWORKS:
        if peer.version == network.version and peer in network:
            return relay.version == network.version and relay in network
    return True


@attrs.frozen
class IceFailure:
    """Why no candidate pair worked, as far as this side can tell: what it gathered
    (``local``), what the peer offered (``remote``), after how many ``seconds``, and the
    likely ``cause`` (one of :data:`CAUSES`) with its ``remedy``."""

    local: Gathering
    remote: Gathering
    seconds: float
    cause: str
    reason: str
    remedy: str
    #: How the peer is named in texts: ``the worker``, ``client client-1a2b``.
    peer: str = "the peer"
    #: How this side is named: ``this client``, ``this worker``.
    this: str = "this side"

    @property
    def turn_known(self) -> bool:
        """Whether this side had a TURN server (a relay-only second attempt can then help)."""
        return self.local.turn is not None

    def gathered(self) -> str:
        """``this client gathered ...; the worker offered ...``."""
        return f"{self.this} gathered {self.local.describe()}; {self.peer} offered {self.remote.describe()}"

    def explain(self) -> str:
        """The whole story in one paragraph: what failed, what was gathered, the likely cause, the remedy."""
        return (
            f"no ICE candidate pair worked between {self.this} and {self.peer} within {self.seconds:.0f} s: "
            f"{self.gathered()}. Likely cause: {self.reason}. Remedy: {self.remedy}"
        )

    def __str__(self) -> str:
        return self.explain()


def _refused(error: GatheringError | None) -> bool:
    return error is not None and error.code in _REFUSED_CODES


def diagnose(
    local: Gathering, remote: Gathering, *, peer: str = "the peer", this: str = "this side"
) -> tuple[str, str, str]:
    """The likely cause of a failed ICE negotiation, from what this side gathered and what the
    peer offered: ``(cause, reason, remedy)``, ``cause`` one of :data:`CAUSES`. The first rule
    that fits wins (see the module docstring's table)."""
    if not local.relay and _refused(local.relay_error):
        return (
            "turn-refused",
            f"the TURN server {local.turn} refused {this}'s credentials ({local.relay_error}), so no relay "
            "candidate could be made: credentials signed with another secret than the TURN server's, or expired "
            "ones (a clock that is wrong, on either host)",
            "give `rtcxfer signal --turn-secret-file` the TURN server's own shared secret (coturn: "
            "static-auth-secret with use-auth-secret), keep both hosts' clocks right, and for static credentials "
            "check --ice-username and --ice-credential-file",
        )
    here_servers = local.stun is not None or local.turn is not None
    there_reflexive = remote.srflx > 0 or remote.relay > 0
    if not here_servers and not there_reflexive and not local.srflx and not local.relay:
        return (
            "no-ice-servers",
            "no STUN or TURN server is configured, and the host addresses both sides offered do not reach each "
            "other: they are on different networks, behind NAT",
            f"{_STUN_REMEDY}, and for any NAT {_TURN_REMEDY}; the worker and `submit` use them with no flag",
        )
    if local.stun and not local.srflx and not local.relay:
        turn_note = ""
        if local.turn:
            turn_note = f"; the TURN server {local.turn} got no further over {local.turn_transport or 'udp'} either"
        return (
            "udp-blocked",
            f"UDP looks blocked on {this}'s network: the STUN server {local.stun} never answered, so no "
            f"server-reflexive candidate was gathered{turn_note}",
            _TCP_TURN_REMEDY,
        )
    if local.turn and not local.relay:
        over = local.turn_transport or "udp"
        return (
            "turn-unreachable",
            f"the TURN server {local.turn} gave no relay candidate over {over} ({local.relay_error or 'no answer'})",
            f"check that it runs and that this network reaches it over {over}; otherwise {_TCP_TURN_REMEDY}",
        )
    if not there_reflexive:
        offered = (
            f"{peer} offered host candidates only: its STUN server got no answer (UDP blocked on its network?) "
            "or it has none configured"
            if remote.total
            else f"{peer} offered no candidate at all (relay candidates only, and no TURN allocation?)"
        )
        return (
            "peer-without-servers",
            offered,
            f"{_TURN_REMEDY} (over TCP where UDP is blocked: `turn:HOST:3478?transport=tcp`), handed to both sides "
            "by the signaling server",
        )
    if local.srflx and remote.srflx and not local.relay and not remote.relay:
        return (
            "symmetric-nat",
            "symmetric NAT: both sides reached the STUN server, yet no pair worked, so a NAT on at least one side "
            "gives every destination its own port (or a firewall filters what arrives), and the public addresses "
            "STUN found do not work for the peer",
            f"a TURN relay: {_TURN_REMEDY}",
        )
    if local.relay or remote.relay:
        return (
            "relay-failed",
            "relay candidates were there, yet even the TURN relay carried no check: the TURN server may refuse to "
            "relay to these peers (denied-peer-ip), or a firewall in front of it blocks its relay ports",
            "read the TURN server's log for the peers' sessions (coturn --verbose), and open its relay port range",
        )
    return (
        "unknown",
        "the candidates both sides offered did not reach each other",
        f"run `rtcxfer doctor` on both sides; {_TURN_REMEDY} gets through most networks",
    )


def ice_failure(
    local: Gathering, remote: Gathering, seconds: float, *, peer: str = "the peer", this: str = "this side"
) -> IceFailure:
    """An :class:`IceFailure` with its cause diagnosed (:func:`diagnose`)."""
    cause, reason, remedy = diagnose(local, remote, peer=peer, this=this)
    return IceFailure(local, remote, seconds, cause, reason, remedy, peer, this)


def count_kinds(kinds: Iterable[str]) -> dict[str, int]:
    """How many of each of ``host``, ``srflx`` and ``relay`` are in ``kinds`` (a ``prflx``
    counts as ``srflx``)."""
    counts = {"host": 0, "srflx": 0, "relay": 0}
    for kind in kinds:
        kind = "srflx" if kind == "prflx" else kind
        if kind in counts:
            counts[kind] += 1
    return counts
