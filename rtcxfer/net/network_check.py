"""What this machine's network lets a peer do, checked the way a support engineer would
(``rtcxfer doctor --signal URL``): can it reach the signaling server (and verify its TLS), is it
admitted to the room, which STUN and TURN servers does the server hand out, which ICE candidates
does it gather with them, does a TURN allocation succeed over UDP and over TCP, does its NAT
keep ports; and what that means for reaching a worker (:class:`Verdict`).

Whether a NAT keeps ports is told from one UDP socket's STUN Binding requests to two or more
STUN endpoints (every distinct ``stun:`` and UDP ``turn:`` endpoint the server hands out, and
the OTHER-ADDRESS a server doing RFC 5780 names): the same public port seen by each means one
mapping for every destination (endpoint-independent, "cone": STUN is enough); different ones
mean a new mapping per destination ("symmetric": only a TURN relay gets through). With one
endpoint only, a public port equal to the socket's own suggests a port-keeping NAT, without
proving it, and the report says so.

:func:`check_network` does the I/O; :func:`nat_mapping` and :func:`judge` decide, sans-IO. Every
packet goes only to the signaling server and the STUN/TURN servers it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import socket
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import attrs

from rtcxfer.log import logger
from rtcxfer.net import aiortc_internals
from rtcxfer.net.aiortc_internals import StunAnswer, TurnAllocation
from rtcxfer.net.peer import PeerConnection, PeerOptions
from rtcxfer.net.signaling.client import SignalingClient, SignalingServerError, SignalingTlsError
from rtcxfer.protocol.errors import SignalingError, describe
from rtcxfer.protocol.ice import IceServer, IceUrl

__all__ = [
    "CANDIDATE_KINDS",
    "NatMapping",
    "NetworkReport",
    "Step",
    "Verdict",
    "check_network",
    "judge",
    "nat_mapping",
    "sdp_candidates",
]

#: Seconds a STUN or TURN server has to answer (aioice gives its gathering 5 s too).
ANSWER_TIMEOUT = 5.0
#: Seconds to reach and register with the signaling server.
SIGNALING_TIMEOUT = 10.0

#: ICE candidate types as the report names them.
CANDIDATE_KINDS = {"host": "host", "srflx": "server-reflexive", "prflx": "peer-reflexive", "relay": "relay"}

OK, PROBLEM, INFO = "ok", "problem", "info"


@attrs.frozen
class Step:
    """One check: ``name`` (``signaling server``, ``TURN over UDP``...), ``status`` (``ok``,
    ``problem`` or ``info``) and what was found, in words."""

    name: str
    status: str
    text: str


class NatMapping:
    """What a NAT does to a UDP socket's source port, as far as STUN answers tell."""

    NONE = "none"  # the STUN server sees this machine's own address: no NAT
    KEEPS_PORTS = "endpoint-independent"  # one public port for every destination
    PORT_KEPT = "port-kept"  # one destination only, its public port the socket's own: probably keeps ports
    CHANGES_PORTS = "address-dependent"  # a new public port per destination
    UNKNOWN = "unknown"  # one destination, another port: cannot tell
    NO_ANSWER = "no-answer"


@attrs.frozen
class Verdict:
    """What the checks mean: ``key`` (stable, for scripts and tests), whether a worker elsewhere
    can be reached by some path (``reachable``), and in words."""

    key: str
    reachable: bool
    text: str


@attrs.frozen
class NetworkReport:
    url: str
    room: str
    steps: tuple[Step, ...]
    verdict: Verdict
    #: Why the signaling server could not be used (the CLI turns some into advice), or None.
    signaling_error: BaseException | None = None


# --------------------------------------------------------------------------- sans-IO: reading and judging


def sdp_candidates(sdp: str) -> list[tuple[str, str, int]]:
    """(type, address, port) of each ``a=candidate`` line of ``sdp`` that can be read."""
    found = []
    for line in sdp.splitlines():
        if not line.startswith("a=candidate:"):
            continue
        # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
        fields = line.split()
        if len(fields) >= 8 and fields[6] == "typ" and fields[5].isascii() and fields[5].isdigit():
            found.append((fields[7], fields[4], int(fields[5])))
    return found


def nat_mapping(local_port: int, answers: Sequence[StunAnswer], own_addresses: Sequence[str]) -> str:
    """The :class:`NatMapping` that STUN ``answers`` to one socket (bound to ``local_port``) show,
    this machine's addresses being ``own_addresses``."""
    mapped = [answer.mapped for answer in answers if answer.mapped is not None]
    if not mapped:
        return NatMapping.NO_ANSWER
    if any(address in own_addresses and port == local_port for address, port in mapped):
        return NatMapping.NONE
    destinations = {answer.server for answer in answers if answer.mapped is not None}
    if len(set(mapped)) > 1:
        return NatMapping.CHANGES_PORTS
    if len(destinations) > 1:
        return NatMapping.KEEPS_PORTS
    return NatMapping.PORT_KEPT if mapped[0][1] == local_port else NatMapping.UNKNOWN


def _relay(transport: str, turn: dict[str, TurnAllocation]) -> bool:
    allocation = turn.get(transport)
    return allocation is not None and allocation.succeeded


def judge(*, configured: bool, mapping: str, turn: dict[str, TurnAllocation], stun_configured: bool) -> Verdict:
    """The verdict for a network whose STUN answers show ``mapping`` and whose TURN allocations
    ended as ``turn`` (by transport, ``udp``/``tcp``; a transport absent: no such TURN URL),
    ``configured`` telling whether the signaling server handed out any STUN or TURN server."""
    via = [transport.upper() for transport in ("udp", "tcp") if _relay(transport, turn)]
    relay = f"the TURN relay (over {' and '.join(via)})" if via else ""
    if not configured:
        return Verdict(
            "no-ice-servers", False,
            "no STUN or TURN configured on the signaling server: only workers on this same network can be reached "
            "(with --any-interface on both sides). To reach a worker behind another NAT, start rtcxfer signal with "
            "--stun URL (and --turn URL --turn-secret-file FILE for a TURN relay)",
        )  # fmt: skip
    udp_answered = mapping != NatMapping.NO_ANSWER or _relay("udp", turn)
    udp_asked = stun_configured or "udp" in turn
    if udp_asked and not udp_answered:
        if _relay("tcp", turn):
            return Verdict(
                "udp-blocked-turn-tcp", True,
                "UDP blocked: no STUN or TURN server answers over UDP, TURN over TCP works: every session with "
                "a worker goes through the TURN relay over TCP",
            )  # fmt: skip
        return Verdict(
            "udp-blocked", False,
            "UDP blocked and no TURN over TCP that works: no worker outside this network can be reached. Give "
            "rtcxfer signal a TURN server over TCP (--turn turn:HOST:3478?transport=tcp, or turns:HOST:5349), "
            "or let UDP out of this network",
        )  # fmt: skip
    if mapping == NatMapping.NONE:
        return Verdict(
            "directly-reachable", True,
            "directly reachable: the STUN server sees this machine at its own address (no NAT in between): a "
            "worker can reach it peer-to-peer" + (f"; {relay} is there too" if relay else ""),
        )  # fmt: skip
    if mapping in (NatMapping.KEEPS_PORTS, NatMapping.PORT_KEPT):
        proof = "" if mapping == NatMapping.KEEPS_PORTS else " (probably: one STUN endpoint only, the port was kept)"
        fallback = f"; if the worker's NAT changes ports, {relay} carries the session" if relay else (
            "; a worker behind a NAT that changes ports needs a TURN relay (rtcxfer signal --turn)")
        return Verdict(
            "port-keeping-nat", True,
            f"behind a NAT that keeps ports{proof}: STUN is enough to reach a worker peer-to-peer{fallback}",
        )  # fmt: skip
    if mapping == NatMapping.CHANGES_PORTS:
        if relay:
            return Verdict(
                "port-changing-nat-turn", True,
                f"behind a NAT that changes ports (a new public port per destination, \"symmetric\"): peer-to-peer "
                f"fails, only {relay} reaches a worker",
            )  # fmt: skip
        return Verdict(
            "port-changing-nat", False,
            "behind a NAT that changes ports (a new public port per destination, \"symmetric\") and no TURN relay "
            "that works: no worker behind another NAT can be reached. Give rtcxfer signal a TURN server "
            "(--turn URL --turn-secret-file FILE)",
        )  # fmt: skip
    if relay:
        return Verdict(
            "turn-relay", True,
            f"{relay} works whatever this network's NAT does" + (
                "" if stun_configured else " (no STUN server configured: every session goes through the relay)"),
        )  # fmt: skip
    if mapping == NatMapping.UNKNOWN:
        return Verdict(
            "nat-unknown", True,
            "behind a NAT whose kind one STUN endpoint cannot tell: STUN may be enough to reach a worker, or not "
            "(a second STUN URL on rtcxfer signal tells; a TURN relay works either way)",
        )  # fmt: skip
    return Verdict(
        "no-stun-answer", False,
        "no STUN server answers and no TURN relay works: no worker outside this network can be reached",
    )


# --------------------------------------------------------------------------- I/O: the checks


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _signaling_target(url: str) -> tuple[str, str, int]:
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in ("ws", "wss") or not parsed.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    return scheme, parsed.hostname, parsed.port or (443 if scheme == "wss" else 80)


def _certificate_text(certificate: dict[str, Any] | None) -> str:
    if not certificate:
        return "verified"

    def name(field: str) -> str:
        parts = dict(pair for entry in certificate.get(field, ()) for pair in entry)
        return parts.get("commonName") or parts.get("organizationName") or "?"

    return f"verified: certificate for {name('subject')!r}, issued by {name('issuer')!r}, valid until " \
           f"{certificate.get('notAfter', '?')}"


async def _reach(host: str, port: int) -> Step:
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), SIGNALING_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as error:
        why = "no answer" if isinstance(error, asyncio.TimeoutError) else (error.strerror or describe(error))
        return Step("signaling server", PROBLEM, f"cannot reach {_endpoint(host, port)} over TCP: {why}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    elapsed = (time.monotonic() - started) * 1000
    return Step("signaling server", OK, f"{_endpoint(host, port)} answers over TCP ({elapsed:.0f} ms)")


async def _tls(host: str, port: int, context: ssl.SSLContext | None) -> tuple[Step, BaseException | None]:
    context = context or ssl.create_default_context()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), SIGNALING_TIMEOUT
        )
    except ssl.SSLCertVerificationError as error:
        reason = error.verify_message or error.reason or str(error)
        return Step("TLS", PROBLEM, f"the certificate does not verify: {reason}"), SignalingTlsError(
            f"wss://{_endpoint(host, port)}", reason)
    except (OSError, asyncio.TimeoutError) as error:
        return Step("TLS", PROBLEM, f"no TLS handshake: {describe(error)}"), error
    certificate = writer.get_extra_info("peercert")
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return Step("TLS", OK, _certificate_text(certificate)), None


def _expiry(servers: Sequence[IceServer]) -> str:
    for server in servers:
        head = (server.username or "").split(":", 1)[0]
        if server.has_turn and head.isdigit():
            moment = datetime.datetime.fromtimestamp(int(head), datetime.timezone.utc)
            return f" (TURN credentials made for this peer, valid until {moment:%Y-%m-%d %H:%M} UTC)"
    return ""


async def _addresses(urls: Sequence[IceUrl]) -> dict[IceUrl, tuple[str, int] | None]:
    """Each URL's IPv4 address and port (as aiortc uses them), or None if its name does not resolve."""
    loop = asyncio.get_running_loop()
    resolved: dict[IceUrl, tuple[str, int] | None] = {}
    for url in urls:
        try:
            infos = await loop.getaddrinfo(url.host, url.port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
            resolved[url] = (infos[0][4][0], url.port)
        except OSError:
            resolved[url] = None
    return resolved


async def _gather(servers: Sequence[IceServer]) -> list[tuple[str, str, int]]:
    """The candidates a peer of this machine gathers with ``servers`` (all interfaces)."""
    peer = PeerConnection(PeerOptions(loopback_only=False, ice_servers=tuple(servers), large_packets=False))
    try:
        return sdp_candidates(await peer.create_offer())
    finally:
        await peer.close()


def _candidates_text(candidates: Sequence[tuple[str, str, int]]) -> str:
    parts = []
    for kind, name in CANDIDATE_KINDS.items():
        found = dict.fromkeys(
            address if kind == "host" else _endpoint(address, port) for each, address, port in candidates
            if each == kind
        )
        if found:
            parts.append(f"{name} {', '.join(found)}")
    return "; ".join(parts) or "none"


def _turn_text(url: IceUrl, allocation: TurnAllocation) -> tuple[str, str]:
    where = f"{url}"
    if allocation.succeeded:
        assert allocation.relayed is not None
        seen = f", seen from {_endpoint(*allocation.mapped)}" if allocation.mapped else ""
        return OK, f"relay {_endpoint(*allocation.relayed)} allocated on {where}{seen}"
    if allocation.error_code == 401:
        return PROBLEM, (f"{where} refused the credentials (401 {allocation.reason}): the TURN server's shared "
                         "secret is not the one in rtcxfer signal's --turn-secret-file, or the clocks disagree")
    if allocation.error_code is not None:
        return PROBLEM, f"{where} refused the allocation ({allocation.error_code} {allocation.reason})"
    return PROBLEM, f"{where}: {allocation.reason or 'no answer'}"


async def check_network(
    url: str,
    room: str,
    *,
    token: str | None = None,
    signaling_ssl: ssl.SSLContext | None = None,
    timeout: float = ANSWER_TIMEOUT,
) -> NetworkReport:
    """Run every check against the signaling server at ``url`` as a client of ``room``
    (``token``: the room token, as ``SignalingClient`` takes it; ``signaling_ssl``: the context
    a ``wss://`` server is verified with, None for the system's CAs). Never raises for what the
    network or the servers did: that is what the report is about."""
    steps: list[Step] = []

    def failed(key: str, text: str, error: BaseException | None = None) -> NetworkReport:
        return NetworkReport(url, room, tuple(steps), Verdict(key, False, text), error)

    try:
        scheme, host, port = _signaling_target(url)
    except ValueError as error:
        steps.append(Step("signaling server", PROBLEM, str(error)))
        return failed("signaling-unreachable", "cannot check the network: the signaling URL is not usable", error)
    steps.append(await _reach(host, port))
    if steps[-1].status != OK:
        return failed("signaling-unreachable", f"the signaling server at {url} cannot be reached from here")
    if scheme == "wss":
        step, error = await _tls(host, port, signaling_ssl)
        steps.append(step)
        if error is not None:
            return failed("signaling-tls", f"the signaling server's TLS at {url} does not verify", error)
    else:
        steps.append(Step("TLS", INFO, "none (ws://): the room token's HMAC and the TURN credentials the server "
                                       "hands out cross the network in clear text; wss:// keeps them private"))
    peer_id = f"doctor-{secrets.token_hex(4)}"
    signaling = SignalingClient(url, room, "client", peer_id, token, open_timeout=SIGNALING_TIMEOUT, ssl=signaling_ssl)
    try:
        await signaling.connect()
    except SignalingServerError as error:
        steps.append(Step("room", PROBLEM, f"the signaling server refused {peer_id} in room {room!r}: {error}"))
        return failed("signaling-refused", f"the signaling server at {url} does not admit this peer", error)
    except (SignalingError, OSError, asyncio.TimeoutError) as error:
        steps.append(Step("room", PROBLEM, f"registration failed: {describe(error)}"))
        return failed("signaling-unreachable", f"the signaling server at {url} cannot be used", error)
    try:
        servers = signaling.ice_servers
        workers = list(signaling.workers)
    finally:
        await signaling.close()
    present = f"workers in the room now: {', '.join(workers)}" if workers else "no worker in the room now"
    steps.append(Step("room", OK, f"registered in room {room!r} as {peer_id} (admitted); {present}"))

    urls = [url for server in servers for url in server.urls]
    stun_urls = [url for url in urls if not url.is_turn]
    turn_urls = [url for url in urls if url.is_turn]
    if servers:
        listed = "; ".join(", ".join(str(url) for url in server.urls) for server in servers)
        steps.append(Step("ICE servers", OK, f"handed out: {listed}{_expiry(servers)}"))
    else:
        steps.append(Step("ICE servers", PROBLEM, "the signaling server hands out no STUN or TURN server"))

    # STUN: every distinct UDP endpoint that answers Binding requests (TURN servers do too).
    resolved = await _addresses([url for url in urls if url.scheme == "stun" or url.transport == "udp"])
    for each, address in resolved.items():
        if address is None:
            steps.append(Step("STUN", PROBLEM, f"{each}: the host name does not resolve"))
    destinations = list(dict.fromkeys(address for address in resolved.values() if address is not None))
    turn_choice: dict[str, tuple[IceUrl, IceServer]] = {}
    for server in servers:
        for each in server.urls:
            if each.is_turn and each.transport is not None:
                turn_choice.setdefault(each.transport, (each, server))

    async def stun() -> tuple[int, list[StunAnswer]]:
        if not destinations:
            return 0, []
        return await aiortc_internals.stun_bindings(destinations, timeout)

    async def allocate(transport: str) -> TurnAllocation:
        each, server = turn_choice[transport]
        target = (await _addresses([each]))[each]
        if target is None:
            return TurnAllocation(reason="the host name does not resolve")
        return await aiortc_internals.turn_allocation(
            target, server.username or "", server.credential or "", transport=transport, timeout=timeout,
            tls=each.scheme == "turns",
        )  # fmt: skip

    transports = list(turn_choice)
    gathered, bindings, *allocations = await asyncio.gather(
        _gather(servers), stun(), *(allocate(transport) for transport in transports), return_exceptions=True
    )
    if isinstance(gathered, BaseException):
        logger.debug("gathering failed: {}", describe(gathered))
        steps.append(Step("candidates", PROBLEM, f"gathering failed: {describe(gathered)}"))
        gathered = []
    host_addresses = [address for kind, address, _ in gathered if kind == "host"]
    kinds = {kind for kind, _, _ in gathered}
    wanted = {"host"} | ({"srflx"} if stun_urls else set()) | ({"relay"} if turn_urls else set())
    missing = [CANDIDATE_KINDS[kind] for kind in ("host", "srflx", "relay") if kind in wanted - kinds]
    note = "".join(f"; no {kind} candidate" for kind in missing)
    steps.append(Step("candidates", OK if not missing else PROBLEM,
                      f"as submit and the worker gather them: {_candidates_text(gathered)}{note}"))

    if isinstance(bindings, BaseException):
        steps.append(Step("STUN", PROBLEM, f"no STUN request could be sent: {describe(bindings)}"))
        bindings = (0, [])
    local_port, answers = bindings
    mapping = nat_mapping(local_port, answers, host_addresses)
    if destinations:
        seen = ", ".join(
            f"{_endpoint(*answer.server)} sees it at {_endpoint(*answer.mapped)}" if answer.mapped
            else f"{_endpoint(*answer.server)} does not answer" for answer in answers
        )  # fmt: skip
        steps.append(Step("STUN", OK if mapping != NatMapping.NO_ANSWER else PROBLEM,
                          f"from one UDP socket (local port {local_port}): {seen}"))
        steps.append(Step("NAT", INFO if mapping != NatMapping.CHANGES_PORTS else PROBLEM, _mapping_text(mapping)))

    results: dict[str, TurnAllocation] = {}
    for transport, outcome in zip(transports, allocations, strict=True):
        if isinstance(outcome, BaseException):
            outcome = TurnAllocation(reason=describe(outcome))
        results[transport] = outcome
        status, text = _turn_text(turn_choice[transport][0], outcome)
        steps.append(Step(f"TURN over {transport.upper()}", status, text))
    first_turn = next(iter(turn_urls), None)
    if first_turn is not None and first_turn.transport in results and not results[first_turn.transport].succeeded \
            and any(allocation.succeeded for allocation in results.values()):
        steps.append(Step("note", INFO, f"aiortc gathers a relay with the first TURN URL only ({first_turn}), which "
                                        "does not work from here"))
    verdict = judge(configured=bool(servers), mapping=mapping, turn=results, stun_configured=bool(stun_urls))
    return NetworkReport(url, room, tuple(steps), verdict)


def _mapping_text(mapping: str) -> str:
    return {
        NatMapping.NONE: "none: the STUN server sees this machine's own address and port",
        NatMapping.KEEPS_PORTS: "keeps one public port for every destination (endpoint-independent mapping)",
        NatMapping.PORT_KEPT: "kept the socket's own port; with one STUN endpoint only, whether it keeps one port for "
                           "every destination is not proven (a second stun: URL on rtcxfer signal would tell)",
        NatMapping.CHANGES_PORTS: "gives each destination a new public port (address-dependent mapping, \"symmetric\")",
        NatMapping.UNKNOWN: "changed the socket's port; with one STUN endpoint only, whether it keeps one port for "
                         "every destination cannot be told (a second stun: URL on rtcxfer signal would tell)",
        NatMapping.NO_ANSWER: "unknown: no STUN answer over UDP",
    }[mapping]
