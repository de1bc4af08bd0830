"""``rtcxfer.net.aiortc_internals`` steering aioice's ICE (``watch_ice``, ``local_gathering``,
``selected_ice_path``), on real aiortc peers: why a TURN allocation failed is kept (aioice drops
it), relay candidates do not check the peer's private addresses, and the pair chosen through a
real coturn is told as a relay path. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import secrets
import socket
import time

import aioice
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from rtcxfer.net import aiortc_internals
from rtcxfer.net import peer as rtc
from rtcxfer.protocol.ice import IceServer, turn_rest_credential
from rtcxfer.testing import run_async
from tests.support.turn_server import LOOPBACK, coturn, turnserver_problem

pytestmark = pytest.mark.skipif(
    aiortc_internals.ice_watch_unsupported_reason() is not None,
    reason=str(aiortc_internals.ice_watch_unsupported_reason()),
)

SECRET = f"ice-watch-{secrets.token_hex(12)}"
needs_coturn = pytest.mark.skipif(turnserver_problem() is not None, reason=str(turnserver_problem()))


def closed_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


async def gathered(servers: list[RTCIceServer]):
    """Gather on 127.0.0.1 with ``servers``, watched; return the connection and what it gathered."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
    pc.createDataChannel("rtcxfer")
    aiortc_internals.restrict_host_candidates(pc, (LOOPBACK,))
    assert aiortc_internals.watch_ice(pc)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, aiortc_internals.local_gathering(pc)


def test_a_turn_server_that_refuses_the_connection_is_said_to():
    async def scenario():
        url = f"turn:{LOOPBACK}:{closed_tcp_port()}?transport=tcp"
        pc, gathering = await gathered([RTCIceServer(url, "user", "password")])
        await pc.close()
        return gathering

    gathering = run_async(scenario())
    assert (gathering.host, gathering.srflx, gathering.relay) == (1, 0, 0)
    assert gathering.turn.startswith(f"{LOOPBACK}:") and gathering.turn_transport == "tcp"
    assert gathering.relay_error.text == "connection refused" and gathering.relay_error.code is None


class RelayProtocol:
    """Stands for aioice's protocol of a TURN allocation: only its candidate is looked at when pairing."""

    def __init__(self, address: str) -> None:
        self.local_candidate = aioice.Candidate(
            foundation="relay1", component=1, transport="udp", priority=1, host=address, port=49160, type="relay"
        )

    async def close(self) -> None:
        pass


def remote(address: str, kind: str, port: int = 40000) -> aioice.Candidate:
    candidate = aioice.Candidate(
        foundation=f"{kind}-{address}", component=1, transport="udp", priority=2, host=address, port=port, type=kind
    )
    candidate._network_host = address
    return candidate


def test_relay_candidates_do_not_check_the_peers_private_addresses():
    """A relay on a public TURN server is paired with the peer's public candidates and its
    public host address, never with its private or loopback host addresses (coturn closes the
    whole allocation when it has no route there); the host candidate still pairs with all."""

    async def scenario():
        pc, _ = await gathered([])
        connection = pc.sctp.transport.transport.iceGatherer._connection  # aioice's, under aiortc's ICE transport
        connection._protocols.append(RelayProtocol("198.51.100.1"))
        for candidate in (remote("10.2.0.2", "host"), remote("198.51.100.3", "srflx"),
                          remote("198.51.100.1", "relay", 49161), remote("8.8.4.4", "host"),
                          remote("127.0.0.1", "host", 40001)):
            connection._pair_remote_candidate(candidate)
        pairs = {(pair.local_candidate.type, pair.remote_candidate.host) for pair in connection._check_list}
        await pc.close()
        return pairs

    pairs = run_async(scenario())
    relayed = {address for kind, address in pairs if kind == "relay"}
    assert relayed == {"198.51.100.3", "198.51.100.1", "8.8.4.4"}
    assert {address for kind, address in pairs if kind == "host"} == {
        "10.2.0.2", "198.51.100.3", "198.51.100.1", "8.8.4.4", "127.0.0.1"}


class HostProtocol(RelayProtocol):
    """Stands for aioice's protocol of a host candidate."""

    def __init__(self, address: str) -> None:
        self.local_candidate = aioice.Candidate(
            foundation="host1", component=1, transport="udp", priority=2, host=address, port=50000, type="host"
        )


@pytest.mark.parametrize("order", ["own relay first", "own relay last"])
def test_of_the_nominated_pairs_the_one_through_this_sides_own_relay_carries_the_data(order):
    """Behind symmetric NATs a pair through this side's relay and one straight into the peer's
    relayed address both succeed, aggressively nominated, within a millisecond; whichever comes
    last, the data goes through this side's own relay (coturn reads a relayed address through a
    64 KiB buffer and drops bursts there). A pair with no relay at all beats both."""

    async def scenario():
        pc, _ = await gathered([])
        connection = pc.sctp.transport.transport.iceGatherer._connection
        relay, host = RelayProtocol("198.51.100.1"), HostProtocol("10.1.0.2")
        peers_relay = remote("198.51.100.1", "relay", 49999)
        connection._remote_candidates.append(peers_relay)
        # The peer's check through its relay made our pair to it peer-reflexive; ours through
        # our relay reached its NAT's mapping.
        into_peers_relay = aioice.ice.CandidatePair(host, remote("198.51.100.1", "prflx", 49999))
        through_own_relay = aioice.ice.CandidatePair(relay, remote("198.51.100.3", "prflx", 61000))
        pairs = [through_own_relay, into_peers_relay]
        if order == "own relay last":
            pairs.reverse()
        chosen = []
        for pair in pairs:
            connection._check_list.append(pair)
            pair.nominated = True
            connection.check_state(pair, aioice.ice.CandidatePair.State.SUCCEEDED)
            connection.check_complete(pair)
            chosen.append(connection._nominated[1])
        # Then a direct pair succeeds as well: no relay at all is better still.
        direct = aioice.ice.CandidatePair(host, remote("198.51.100.3", "srflx", 62000))
        connection._check_list.append(direct)
        direct.nominated = True
        connection.check_state(direct, aioice.ice.CandidatePair.State.SUCCEEDED)
        connection.check_complete(direct)
        chosen.append(connection._nominated[1])
        await pc.close()
        return pairs, chosen, through_own_relay, direct

    pairs, chosen, through_own_relay, direct = run_async(scenario())
    assert chosen == [pairs[0], through_own_relay, direct]


@pytest.mark.slow
@needs_coturn
def test_a_turn_server_that_refuses_the_credentials_is_said_to(tmp_path):
    with coturn(tmp_path / "turn", SECRET) as turn:

        async def scenario():
            forged = turn_rest_credential("not-" + SECRET, "client-1", ttl=600, now=time.time())
            good = turn_rest_credential(SECRET, "client-1", ttl=600, now=time.time())
            results = []
            for credential in (forged, good):
                pc, gathering = await gathered([RTCIceServer(turn.turn_url("udp"), credential.username,
                                                             credential.password)])
                await pc.close()
                results.append(gathering)
            return results

        refused, allocated = run_async(scenario(), 60)
    assert refused.relay == 0 and refused.relay_error.code == 401, refused
    assert str(refused.relay_error) == "401 Unauthorized"
    assert allocated.relay == 1 and allocated.relay_error is None, allocated


@pytest.mark.slow
@needs_coturn
@pytest.mark.skipif(not rtc.relay_only_supported(), reason="this aiortc has no relay transport policy")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_relay_only_peers_meet_through_coturn_and_say_so(tmp_path, transport):
    with coturn(tmp_path / "turn", SECRET) as turn:

        async def scenario():
            credential = turn_rest_credential(SECRET, "peer", ttl=600, now=time.time())
            options = rtc.PeerOptions(
                loopback_only=False,
                relay_only=True,
                ice_servers=[IceServer(turn.turn_url(transport), credential.username, credential.password)],
            )
            offerer = rtc.PeerConnection(options)
            answerer = rtc.PeerConnection(options)
            try:
                offer = await offerer.create_offer()
                await offerer.accept_answer(await answerer.accept_offer(offer))
                channel = await offerer.wait_channel_open(30)
                await answerer.wait_channel_open(30)
                await channel.send_text("through the relay")
                return offer, offerer.ice_path, answerer.ice_path, offerer.ice_gathering()
            finally:
                await offerer.close()
                await answerer.close()

        offer, offerer_path, answerer_path, gathering = run_async(scenario(), 60)
    kinds = {line.split(" typ ")[1].split()[0] for line in offer.splitlines() if line.startswith("a=candidate:")}
    assert kinds == {"relay"}
    assert gathering.relay_only and (gathering.host, gathering.srflx, gathering.relay) == (0, 0, 1)
    for path in (offerer_path, answerer_path):
        assert path.kind == "relay" and path.describe().startswith(f"via TURN relay {LOOPBACK}:")
    assert offerer_path.describe().endswith(f"over {transport}")
