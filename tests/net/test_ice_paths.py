"""Which path a data channel took, and why none did (``rtcxfer.net.ice_paths``, sans-IO): the
path for each kind of candidate pair, the cause and remedy for each kind of failure, the peer's
SDP read without trusting it; and on loopback, a real peer that finds no pair says so within its
ICE timeout.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.net import peer as rtc
from rtcxfer.net.ice_paths import (
    CAUSES,
    Endpoint,
    Gathering,
    GatheringError,
    IcePath,
    diagnose,
    ice_failure,
    offered_candidates,
    relay_can_reach,
)
from rtcxfer.protocol.errors import IceFailedError
from rtcxfer.testing import run_async

STUN = "198.51.100.1:3478"
TURN = "198.51.100.1:3478"


def host(address: str = "10.1.0.2", port: int = 40000) -> Endpoint:
    return Endpoint("host", address, port)


# --- the path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "remote", "transport", "said", "kind"),
    [
        (host(), host("10.1.0.3"), None, "peer-to-peer (host)", "host"),
        (host(), Endpoint("srflx", "198.51.100.3", 50000), None, "through NAT (server-reflexive)", "nat"),
        (host(), Endpoint("prflx", "198.51.100.3", 50001), None, "through NAT (peer-reflexive)", "nat"),
        (Endpoint("relay", "198.51.100.1", 49160), Endpoint("srflx", "198.51.100.3", 50000), "udp",
         "via TURN relay 198.51.100.1:49160 over udp", "relay"),
        (Endpoint("relay", "198.51.100.1", 49160), Endpoint("relay", "198.51.100.1", 49161), "tcp",
         "via TURN relay 198.51.100.1:49160 over tcp", "relay"),
        (host(), Endpoint("relay", "198.51.100.1", 49161), None, "via TURN relay 198.51.100.1:49161 (the worker's)",
         "relay"),
        (host("2001:db8::2"), host("2001:db8::3"), None, "peer-to-peer (host)", "host"),
    ],
)
def test_the_path_is_said_from_the_chosen_pair(local, remote, transport, said, kind):
    path = IcePath(local, remote, transport)
    assert path.describe("the worker") == said
    assert path.kind == kind


def test_a_relay_endpoint_in_ipv6_is_written_with_brackets():
    path = IcePath(Endpoint("relay", "2001:db8::1", 49160), host(), "udp")
    assert path.describe() == "via TURN relay [2001:db8::1]:49160 over udp"


# --- the diagnosis -----------------------------------------------------------------------------------

NOTHING = Gathering(host=1)
OFFERED_HOST = Gathering(host=1, servers_known=False)
OFFERED_SRFLX = Gathering(host=1, srflx=1, servers_known=False)
OFFERED_RELAY = Gathering(host=1, srflx=1, relay=1, servers_known=False)
REFUSED = GatheringError(401, "401 Unauthorized")
SILENT = GatheringError(None, "no answer within the 5 s of gathering")

CASES = {
    # both behind NAT, nobody configured a STUN or TURN server
    "no-ice-servers": (NOTHING, OFFERED_HOST, ["no STUN or TURN server", "behind NAT", "rtcxfer signal --stun",
                                               "--turn"]),
    # both reached STUN; the NATs change ports per destination
    "symmetric-nat": (Gathering(host=1, srflx=1, stun=STUN), OFFERED_SRFLX, ["symmetric NAT", "TURN relay",
                                                                             "rtcxfer signal --turn"]),
    # the TURN server refused this side's credentials
    "turn-refused": (Gathering(host=1, srflx=1, stun=STUN, turn=TURN, turn_transport="udp", relay_error=REFUSED),
                     OFFERED_SRFLX, ["refused this side's credentials (401 Unauthorized)", "--turn-secret-file",
                                     "clock"]),
    # a STUN server is known, yet no server-reflexive candidate came: UDP blocked here
    "udp-blocked": (Gathering(host=1, stun=STUN, srflx_error=SILENT), OFFERED_RELAY,
                    ["UDP looks blocked", "STUN server 198.51.100.1:3478 never answered", "transport=tcp"]),
    # STUN works, the TURN server gave nothing over UDP
    "turn-unreachable": (Gathering(host=1, srflx=1, stun=STUN, turn=TURN, turn_transport="udp", relay_error=SILENT),
                         OFFERED_SRFLX, ["gave no relay candidate over udp", "transport=tcp"]),
    # the peer offered only host candidates although this side has STUN and a relay
    "peer-without-servers": (Gathering(host=1, srflx=1, relay=1, stun=STUN, turn=TURN, turn_transport="udp"),
                             OFFERED_HOST, ["the worker offered host candidates only", "UDP blocked on its network"]),
    # relays on both sides, and still nothing
    "relay-failed": (Gathering(host=1, srflx=1, relay=1, stun=STUN, turn=TURN, turn_transport="udp"), OFFERED_RELAY,
                     ["even the TURN relay carried no check", "relay port"]),
}


@pytest.mark.parametrize("cause", sorted(CASES))
def test_each_failure_gets_its_cause_and_remedy(cause):
    local, remote, phrases = CASES[cause]
    found, reason, remedy = diagnose(local, remote, peer="the worker")
    assert found == cause
    for phrase in phrases:
        assert phrase in f"{reason}. {remedy}", (phrase, reason, remedy)


def test_every_cause_but_the_catch_all_has_a_case():
    assert set(CASES) | {"unknown"} == set(CAUSES)


def test_the_explanation_says_what_each_side_gathered_and_when():
    local = Gathering(host=1, srflx=1, stun=STUN, turn=TURN, turn_transport="tcp", relay_error=REFUSED)
    failure = ice_failure(local, OFFERED_SRFLX, 15.2, peer="worker gpu-1", this="this client")
    text = failure.explain()
    assert text.startswith("no ICE candidate pair worked between this client and worker gpu-1 within 15 s: ")
    assert ("this client gathered 1 host, 1 server-reflexive and 0 relay candidates (STUN 198.51.100.1:3478; "
            "TURN 198.51.100.1:3478 over tcp: 401 Unauthorized); worker gpu-1 offered 1 host, 1 server-reflexive "
            "and 0 relay candidates") in text
    assert "Likely cause: the TURN server 198.51.100.1:3478 refused this client's credentials" in text
    assert failure.cause == "turn-refused" and failure.turn_known and str(failure) == text


def test_a_side_without_servers_says_so():
    assert NOTHING.describe() == "1 host, 0 server-reflexive and 0 relay candidates (no STUN or TURN server configured)"
    assert Gathering(relay=1, turn=TURN, relay_only=True).describe() == (
        "0 host, 0 server-reflexive and 1 relay candidate (TURN 198.51.100.1:3478 over udp; relay candidates only)")


def test_a_peer_that_offered_nothing_is_named():
    cause, reason, _ = diagnose(Gathering(relay=1, turn=TURN, relay_only=True), Gathering(servers_known=False),
                                peer="the client")
    assert cause == "peer-without-servers" and "the client offered no candidate at all" in reason


# --- the peer's SDP ------------------------------------------------------------------------------------

SDP = """v=0
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
a=candidate:1 1 udp 2130706431 10.1.0.2 40000 typ host
a=candidate:2 1 udp 1694498815 198.51.100.2 40000 typ srflx raddr 10.1.0.2 rport 40000
a=candidate:3 1 udp 16777215 198.51.100.1 49160 typ relay raddr 198.51.100.2 rport 40001
a=candidate:4 1 udp 1845501695 198.51.100.2 40002 typ prflx
a=candidate:5 1 udp 1 192.0.2.9 1 typ unknownkind
"""


def test_the_offered_candidates_are_counted_by_kind():
    offered = offered_candidates(SDP)
    assert (offered.host, offered.srflx, offered.relay) == (1, 2, 1)
    assert not offered.servers_known and offered.describe() == offered.counts()


@given(st.text(max_size=2000))
def test_any_sdp_text_is_counted_without_error(text):
    offered = offered_candidates(text)
    assert 0 <= offered.total <= text.count("a=candidate:")


@given(st.lists(st.sampled_from(["a=candidate:", "typ", "host", "srflx", "relay", "prflx", " ", "\n", "x"]),
                max_size=60))
def test_candidate_lines_made_of_the_right_words_are_counted_without_error(words):
    text = "".join(words)
    assert offered_candidates(text).total <= text.count("a=candidate:")


# --- which peer addresses a TURN server is asked to relay to --------------------------------------------


@pytest.mark.parametrize(
    ("relay", "peer", "reachable"),
    [
        ("198.51.100.1", "10.2.0.2", False),  # the NAT bed: a public TURN server, a private peer address
        ("203.0.113.7", "192.168.1.20", False),
        ("203.0.113.7", "172.20.0.5", False),
        ("203.0.113.7", "100.64.3.4", False),  # carrier-grade NAT space
        ("203.0.113.7", "127.0.0.1", False),
        ("203.0.113.7", "169.254.1.1", False),
        ("203.0.113.7", "fe80::1", False),
        ("203.0.113.7", "fd00::5", False),
        ("203.0.113.7", "8.8.4.4", True),  # a peer with a public address on its interface
        ("198.51.100.1", "198.51.100.3", True),
        ("10.0.0.5", "10.9.9.9", True),  # a TURN server inside the same private network
        ("192.168.1.1", "10.9.9.9", False),
        ("203.0.113.7", "worker.local", False),  # an mDNS name
    ],
)
def test_relays_only_check_addresses_a_turn_server_reaches(relay, peer, reachable):
    assert relay_can_reach(relay, peer) is reachable


# --- a real peer that finds no pair --------------------------------------------------------------------


def unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def candidates_moved_to(sdp: str, port: int) -> str:
    """``sdp`` with every candidate's port replaced: its checks go where nothing answers."""
    lines = []
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            fields[5] = str(port)
            line = " ".join(fields)
        lines.append(line)
    return "".join(lines)


def test_a_peer_that_finds_no_pair_says_why_within_its_ice_timeout():
    """Two loopback peers whose descriptions reach each other with candidates on a port where
    nothing listens: no pair can work, and each gives up after its ICE timeout (1 s here, not
    the minute aioice would keep trying) with what each side gathered and offered."""

    async def scenario():
        options = rtc.PeerOptions(ice_timeout=1.0)
        offerer = rtc.PeerConnection(options, names=("this client", "worker w"))
        answerer = rtc.PeerConnection(options, names=("this worker", "client c"))
        nowhere = unused_udp_port()
        try:
            answer = await answerer.accept_offer(candidates_moved_to(await offerer.create_offer(), nowhere))
            await offerer.accept_answer(candidates_moved_to(answer, nowhere))
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(offerer.wait_channel_open(timeout=30), answerer.wait_channel_open(30),
                                           return_exceptions=True)
            waited = asyncio.get_running_loop().time() - started
            assert offerer.ice_path is None and answerer.ice_path is None
            return results, waited
        finally:
            await asyncio.gather(offerer.close(), answerer.close())

    (client_error, worker_error), waited = run_async(scenario())
    assert waited < 30  # the ICE timeout ended it, not wait_channel_open's own
    for error in (client_error, worker_error):
        assert isinstance(error, IceFailedError), error
        failure = error.failure
        assert failure.cause == "no-ice-servers" and failure.local.host == 1 and failure.remote.host == 1
        assert failure.seconds >= 1.0
    assert str(client_error).startswith("no ICE candidate pair worked between this client and worker w within 1 s")
    assert "this worker gathered 1 host" in str(worker_error)


def test_loopback_peers_take_the_host_path():
    async def scenario():
        offerer_channel, answerer_channel, close = await rtc.connect_pair_in_process()
        try:
            return close.offerer.ice_path, close.answerer.ice_path
        finally:
            await close()

    offerer, answerer = run_async(scenario())
    assert offerer.describe() == answerer.describe() == "peer-to-peer (host)"
    assert offerer.local.address == offerer.remote.address == "127.0.0.1"


def test_a_wait_cut_short_while_ice_is_still_checking_is_diagnosed_as_ices_failure():
    """A worker's set-up deadline (``Limits.setup_timeout``) may run out before ICE's own: the
    wait ends then, and as ICE's failure with what each side gathered, not a bare timeout."""

    async def scenario():
        options = rtc.PeerOptions(ice_timeout=30.0)
        offerer = rtc.PeerConnection(options, names=("this client", "worker w"))
        answerer = rtc.PeerConnection(options, names=("this worker", "client c"))
        nowhere = unused_udp_port()
        try:
            answer = await answerer.accept_offer(candidates_moved_to(await offerer.create_offer(), nowhere))
            await offerer.accept_answer(candidates_moved_to(answer, nowhere))
            with pytest.raises(IceFailedError) as failed:
                await answerer.wait_channel_open(timeout=1.0)
            return failed.value
        finally:
            await asyncio.gather(offerer.close(), answerer.close())

    error = run_async(scenario())
    assert error.failure.cause == "no-ice-servers"
    assert 1.0 <= error.failure.seconds < 30
    assert str(error).startswith("no ICE candidate pair worked between this worker and client c within 1 s")
