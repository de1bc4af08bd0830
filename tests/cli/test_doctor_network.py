"""``rtcxfer doctor --signal`` through the real command: in the client network of the NAT bed, one
test per verdict (the kind of NAT and what ``rtcxfer signal`` hands out vary), and on 127.0.0.1
the signaling server's side of it (TLS verified or not, the room token refused).

The bed's coturn also listens on a second port (``--aux-server``), and the signaling server
hands out both as ``stun:`` URLs: from one UDP socket to both, the doctor sees whether the
client's NAT keeps one public port for every destination.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from rtcxfer.testing.nat_bed import PUBLIC_SERVER_ADDRESS, NatKind
from rtcxfer.testing.processes import describe, run_cli, start_signaling
from tests.support.certificates import issue_server_certificate, make_authority
from tests.support.cli import environment

TOKEN = f"doctor-{secrets.token_hex(8)}"
ROOM = "doctor"
SECOND_STUN = f"stun:{PUBLIC_SERVER_ADDRESS}:3479"

#: Network namespaces and real processes in them.
pytestmark = pytest.mark.slow


def doctor_in_client_network(bed, tmp_path: Path, *, stun: bool, turn: bool, wrong_secret: bool = False):
    """coturn (second port 3479) and ``rtcxfer signal`` in ``public`` handing out STUN and/or
    TURN, then ``rtcxfer doctor --signal`` behind the client's router: its run."""
    server = bed.start_turn(options=[f"--aux-server={PUBLIC_SERVER_ADDRESS}:3479"])
    options = ["--stun", server.stun_url, "--stun", SECOND_STUN] if stun else []
    if turn:
        secret_file = server.secret_file
        if wrong_secret:
            secret_file = tmp_path / "not-the-secret"
            secret_file.write_text("not the secret coturn has\n")
        options += ["--turn", server.turn_udp_url, "--turn", server.turn_tcp_url]
        options += ["--turn-secret-file", str(secret_file)]
    signal, url = start_signaling(
        tmp_path, token=TOKEN, env=environment("INFO"), host=bed.public.address, prefix=bed.public.prefix,
        options=options,
    )  # fmt: skip
    try:
        return run_cli("doctor", "--signal", url, "--room", ROOM, "--token", TOKEN, env=environment(), cwd=tmp_path,
                       prefix=bed.client.prefix)
    finally:
        signal.stop()


def line(run, name: str) -> str:
    """The doctor's line about ``name`` (``verdict``, ``  STUN``...), without the name."""
    found = re.search(rf"^{re.escape(name)}: (.*)$", run.stdout, re.M)
    assert found, f"no {name!r} line:\n{describe(run)}"
    return found.group(1)


def test_endpoint_independent_nat_with_stun_is_enough(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.ENDPOINT_INDEPENDENT)
    run = doctor_in_client_network(bed, tmp_path, stun=True, turn=False)
    assert run.returncode == 0, describe(run)
    router = re.escape(bed.client_router.address)
    assert re.search(rf"server-reflexive {router}:\d+", line(run, "  candidates")), describe(run)
    # One socket, two STUN endpoints, one public port.
    ports = re.findall(rf"sees it at {router}:(\d+)", line(run, "  STUN"))
    assert len(ports) == 2 and ports[0] == ports[1], describe(run)
    assert line(run, "  NAT").startswith("keeps one public port for every destination"), describe(run)
    assert line(run, "verdict").startswith("behind a NAT that keeps ports: STUN is enough to reach a worker"), \
        describe(run)


def test_symmetric_nat_with_turn_reaches_workers_only_through_the_relay(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.SYMMETRIC)
    run = doctor_in_client_network(bed, tmp_path, stun=True, turn=True)
    assert run.returncode == 0, describe(run)
    router = re.escape(bed.client_router.address)
    ports = re.findall(rf"sees it at {router}:(\d+)", line(run, "  STUN"))
    assert len(ports) == 2 and ports[0] != ports[1], describe(run)
    assert line(run, "  NAT").startswith("PROBLEM: gives each destination a new public port"), describe(run)
    assert re.search(rf"relay {re.escape(PUBLIC_SERVER_ADDRESS)}:\d+", line(run, "  candidates")), describe(run)
    for transport in ("UDP", "TCP"):
        assert line(run, f"  TURN over {transport}").startswith(f"relay {PUBLIC_SERVER_ADDRESS}:"), describe(run)
    assert line(run, "verdict").startswith("behind a NAT that changes ports"), describe(run)
    assert "only the TURN relay (over UDP and TCP) reaches a worker" in line(run, "verdict"), describe(run)


def test_symmetric_nat_without_turn_reaches_no_worker_elsewhere(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.SYMMETRIC)
    run = doctor_in_client_network(bed, tmp_path, stun=True, turn=False)
    assert run.returncode == 1, describe(run)
    assert "and no TURN relay that works" in line(run, "verdict") and "--turn" in line(run, "verdict"), describe(run)


def test_blocked_udp_with_turn_over_tcp_goes_through_the_relay_over_tcp(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.UDP_BLOCKED)
    run = doctor_in_client_network(bed, tmp_path, stun=True, turn=True)
    assert run.returncode == 0, describe(run)
    assert line(run, "  STUN").startswith("PROBLEM:") and "does not answer" in line(run, "  STUN"), describe(run)
    assert line(run, "  TURN over UDP").startswith("PROBLEM:"), describe(run)
    assert line(run, "  TURN over TCP").startswith(f"relay {PUBLIC_SERVER_ADDRESS}:"), describe(run)
    assert line(run, "verdict").startswith("UDP blocked: ") and "TURN over TCP works" in line(run, "verdict"), \
        describe(run)


def test_no_stun_or_turn_on_the_server_means_same_network_workers_only(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.ENDPOINT_INDEPENDENT)
    run = doctor_in_client_network(bed, tmp_path, stun=False, turn=False)
    assert run.returncode == 1, describe(run)
    assert line(run, "  ICE servers") == "PROBLEM: the signaling server hands out no STUN or TURN server"
    assert line(run, "  candidates").endswith(f"host {bed.client.address}"), describe(run)
    assert line(run, "verdict").startswith(
        "no STUN or TURN configured on the signaling server: only workers on this same network can be reached"
    ), describe(run)


def test_turn_credentials_coturn_refuses_are_reported_as_such(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.ENDPOINT_INDEPENDENT)
    run = doctor_in_client_network(bed, tmp_path, stun=True, turn=True, wrong_secret=True)
    for transport in ("UDP", "TCP"):
        assert "refused the credentials (401" in line(run, f"  TURN over {transport}"), describe(run)
    # STUN still works through this NAT: a worker can be reached peer-to-peer.
    assert run.returncode == 0, describe(run)
    assert line(run, "verdict").startswith("behind a NAT that keeps ports"), describe(run)


def test_the_signaling_servers_tls_and_the_room_token_are_checked(tmp_path):
    """On 127.0.0.1: a ``wss://`` server whose certificate a private CA issued is verified with
    ``--ca-file`` and refused without it, a wrong token is refused; each says what to do."""
    authority = make_authority(tmp_path)
    certificate = issue_server_certificate(authority, tmp_path)
    tls = ["--certfile", str(certificate.cert_path), "--keyfile", str(certificate.key_path)]
    signal, url = start_signaling(tmp_path, token=TOKEN, env=environment("INFO"), options=tls)
    try:
        def doctor(*options: str):
            return run_cli("doctor", "--signal", url, "--room", ROOM, *options, env=environment(), cwd=tmp_path)

        trusted = doctor("--token", TOKEN, "--ca-file", str(authority.cert_path))
        assert line(trusted, "  TLS").startswith("verified: certificate for '127.0.0.1', issued by 'rtcxfer test CA'")
        assert line(trusted, "  room").startswith(f"registered in room {ROOM!r} as doctor-"), describe(trusted)
        # No STUN or TURN on this server: a worker elsewhere cannot be reached, exit 1.
        assert trusted.returncode == 1 and "no STUN or TURN configured" in line(trusted, "verdict")

        untrusted = doctor("--token", TOKEN)
        assert untrusted.returncode == 1, describe(untrusted)
        assert line(untrusted, "  TLS").startswith("PROBLEM: the certificate does not verify"), describe(untrusted)
        assert "--ca-file" in line(untrusted, "  advice"), describe(untrusted)
        assert "  room:" not in untrusted.stdout

        refused = doctor("--token", "not-the-token", "--ca-file", str(authority.cert_path))
        assert refused.returncode == 1, describe(refused)
        assert "bad-token" in line(refused, "  room") and "--token" in line(refused, "  advice"), describe(refused)
        assert "Traceback" not in trusted.stderr + untrusted.stderr + refused.stderr
    finally:
        signal.stop()
