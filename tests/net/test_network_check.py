"""The decisions of ``rtcxfer doctor --signal`` (``rtcxfer.net.network_check``), sans-IO: what STUN
answers say about a NAT, what a network's facts mean for reaching a worker, and reading the
candidates out of an SDP. The checks themselves run through the real command on the NAT bed:
``tests/cli/test_doctor_network.py``."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.net.aiortc_internals import StunAnswer, TurnAllocation, stun_bindings, turn_allocation
from rtcxfer.net.network_check import NatMapping, judge, nat_mapping, sdp_candidates
from rtcxfer.protocol.ice import turn_rest_credential
from rtcxfer.testing import run_async
from tests.support.turn_server import LOOPBACK, coturn, free_udp_and_tcp_port, turnserver_problem

A, B = ("198.51.100.1", 3478), ("198.51.100.1", 3479)
HOST = ["10.1.0.2"]
RELAYED = TurnAllocation(relayed=("198.51.100.1", 49152), mapped=("198.51.100.2", 5000))
NO_ANSWER = TurnAllocation(timed_out=True, reason="no answer within 5 s")
REFUSED = TurnAllocation(error_code=401, reason="Unauthorized")


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([StunAnswer(A, ("198.51.100.2", 5000)), StunAnswer(B, ("198.51.100.2", 5000))], NatMapping.KEEPS_PORTS),
        ([StunAnswer(A, ("198.51.100.2", 5000)), StunAnswer(B, ("198.51.100.2", 6000))], NatMapping.CHANGES_PORTS),
        ([StunAnswer(A, ("198.51.100.2", 4000))], NatMapping.PORT_KEPT),
        ([StunAnswer(A, ("198.51.100.2", 6000))], NatMapping.UNKNOWN),
        ([StunAnswer(A, ("198.51.100.2", 5000)), StunAnswer(B)], NatMapping.UNKNOWN),
        ([StunAnswer(A, ("10.1.0.2", 4000)), StunAnswer(B, ("10.1.0.2", 4000))], NatMapping.NONE),
        ([StunAnswer(A), StunAnswer(B)], NatMapping.NO_ANSWER),
        ([], NatMapping.NO_ANSWER),
    ],
)
def test_what_stun_answers_to_one_socket_say_about_the_nat(answers, expected):
    assert nat_mapping(4000, answers, HOST) == expected


@pytest.mark.parametrize(
    ("facts", "key", "reachable"),
    [
        ({"configured": False, "mapping": NatMapping.NO_ANSWER, "turn": {}}, "no-ice-servers", False),
        ({"mapping": NatMapping.NONE, "turn": {}}, "directly-reachable", True),
        ({"mapping": NatMapping.KEEPS_PORTS, "turn": {}}, "port-keeping-nat", True),
        ({"mapping": NatMapping.PORT_KEPT, "turn": {"udp": REFUSED}}, "port-keeping-nat", True),
        ({"mapping": NatMapping.CHANGES_PORTS, "turn": {"udp": RELAYED, "tcp": RELAYED}}, "port-changing-nat-turn",
         True),
        ({"mapping": NatMapping.CHANGES_PORTS, "turn": {"udp": REFUSED}}, "port-changing-nat", False),
        ({"mapping": NatMapping.CHANGES_PORTS, "turn": {}}, "port-changing-nat", False),
        ({"mapping": NatMapping.NO_ANSWER, "turn": {"udp": NO_ANSWER, "tcp": RELAYED}}, "udp-blocked-turn-tcp", True),
        ({"mapping": NatMapping.NO_ANSWER, "turn": {"udp": NO_ANSWER, "tcp": REFUSED}}, "udp-blocked", False),
        ({"mapping": NatMapping.NO_ANSWER, "turn": {}}, "udp-blocked", False),
        ({"mapping": NatMapping.UNKNOWN, "turn": {}}, "nat-unknown", True),
        ({"mapping": NatMapping.UNKNOWN, "turn": {"udp": RELAYED}}, "turn-relay", True),
        ({"stun_configured": False, "mapping": NatMapping.NO_ANSWER, "turn": {"udp": RELAYED}}, "turn-relay", True),
        ({"stun_configured": False, "mapping": NatMapping.NO_ANSWER, "turn": {"tcp": RELAYED}}, "turn-relay", True),
        ({"stun_configured": False, "mapping": NatMapping.NO_ANSWER, "turn": {"tcp": NO_ANSWER}}, "no-stun-answer",
         False),
    ],
)
def test_each_networks_facts_give_one_verdict(facts, key, reachable):
    verdict = judge(**{"configured": True, "stun_configured": True, **facts})
    assert (verdict.key, verdict.reachable) == (key, reachable), verdict.text


def test_a_verdict_names_the_remedy_when_no_path_exists():
    assert "--stun" in judge(configured=False, mapping=NatMapping.NO_ANSWER, turn={}, stun_configured=False).text
    assert "--turn" in judge(configured=True, mapping=NatMapping.CHANGES_PORTS, turn={}, stun_configured=True).text
    blocked = judge(configured=True, mapping=NatMapping.NO_ANSWER, turn={"udp": NO_ANSWER}, stun_configured=True)
    assert "transport=tcp" in blocked.text


def test_candidates_are_read_from_the_sdp():
    sdp = "\r\n".join([
        "v=0",
        "a=candidate:1 1 udp 2130706431 10.1.0.2 40000 typ host",
        "a=candidate:2 1 udp 1694498815 198.51.100.2 40000 typ srflx raddr 10.1.0.2 rport 40000",
        "a=candidate:3 1 udp 16777215 198.51.100.1 49152 typ relay raddr 198.51.100.2 rport 5000",
        "a=candidate:broken",
        "a=end-of-candidates",
    ])
    assert sdp_candidates(sdp) == [
        ("host", "10.1.0.2", 40000), ("srflx", "198.51.100.2", 40000), ("relay", "198.51.100.1", 49152)
    ]


@given(st.text(max_size=400))
def test_any_sdp_text_reads_without_raising(text):
    for kind, address, port in sdp_candidates(text):
        assert isinstance(kind, str) and isinstance(address, str) and port >= 0


@pytest.mark.slow
@pytest.mark.skipif(turnserver_problem() is not None, reason=str(turnserver_problem()))
def test_stun_bindings_and_turn_allocations_against_coturn_on_loopback(tmp_path):
    """The two probes the doctor sends, against a real coturn on 127.0.0.1: a Binding answered
    with the socket's own address (no NAT on loopback), and one to a port where nothing listens
    left unanswered; an allocation over UDP and over TCP, one with a wrong password refused
    (401), one to a closed TCP port failing at once."""
    secret = "doctor-secret"
    closed = free_udp_and_tcp_port()
    with coturn(tmp_path / "turn", secret) as turn:
        server = (LOOPBACK, turn.port)
        good = turn_rest_credential(secret, "doctor", ttl=600, now=time.time())

        async def probes():
            local_port, answers = await stun_bindings([server, (LOOPBACK, closed)], 1.0)
            allocations = {
                transport: await turn_allocation(server, good.username, good.password, transport=transport,
                                                 timeout=5.0)
                for transport in ("udp", "tcp")
            }
            allocations["wrong"] = await turn_allocation(server, good.username, "wrong", transport="udp", timeout=5.0)
            allocations["closed"] = await turn_allocation((LOOPBACK, closed), good.username, good.password,
                                                          transport="tcp", timeout=5.0)
            return local_port, answers, allocations

        local_port, answers, allocations = run_async(probes(), 60)
    assert answers[0] == StunAnswer(server, (LOOPBACK, local_port)) and answers[1] == StunAnswer((LOOPBACK, closed))
    assert nat_mapping(local_port, answers, [LOOPBACK]) == NatMapping.NONE
    for transport in ("udp", "tcp"):
        assert allocations[transport].succeeded and allocations[transport].relayed[0] == LOOPBACK, allocations
    assert allocations["wrong"].error_code == 401 and not allocations["wrong"].succeeded
    closed_tcp = allocations["closed"]
    assert not closed_tcp.succeeded and not closed_tcp.timed_out and closed_tcp.error_code is None, closed_tcp
