"""End to end through NATs: ``rtcxfer signal`` on the NAT bed's public segment (with the STUN and
TURN servers of each setup), ``rtcxfer worker`` behind one router, ``rtcxfer submit`` behind the
other; one job per setup, its results compared byte for byte, and what each side says about the
path (or about why there is none).

The setups (``rtcxfer.testing.nat_bed``): both behind NATs that keep ports (STUN is enough; with
nothing configured no pair can work), both behind symmetric NATs (only a TURN relay works), the
client's network blocking UDP (TURN over TCP), and TURN credentials coturn refuses. coturn runs
as the bed starts it: no ``denied-peer-ip``, and no route from the public segment to the private
networks, so a relayed send to a private address fails there (coturn then closes the allocation:
rtcxfer's relays never check those addresses).

A failed setup must end by the ICE diagnosis (15 s after the SDP exchange), not by ``submit``'s
``--timeout 120``: the hang guard (100 s) fails the test otherwise. Durations are reported by
``--durations``, never asserted.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.net.aiortc_internals import RELAY_PACKET_SIZE, tuning_supported
from rtcxfer.protocol.ice import turn_rest_credential
from rtcxfer.testing.job_files import expected_sample_results, files_under
from rtcxfer.testing.nat_bed import NatKind
from tests.support.nat_cluster import nat_cluster, submit_from_client

TOKEN = f"e2enat-{secrets.token_hex(8)}"
ROOM = "behind-nat"
EXIT_CONNECTION = 3

#: Network namespaces, coturn and real processes in them.
pytestmark = pytest.mark.slow


def package_for(tmp_path: Path, tag: str) -> tuple[Path, bytes]:
    data = f"# {tag} {secrets.token_hex(8)}\n".encode() + sample_text(4000)
    return build_sample_package(tmp_path / f"{tag}.zip", data=data), data


def assert_job_done(submitted, data: bytes) -> None:
    assert submitted.run.returncode == 0, submitted.describe()
    assert submitted.report["ok"], submitted.describe()
    assert files_under(Path(submitted.report["results_dir"])) == expected_sample_results(data)


def assert_relay_packets(submitted) -> None:
    """Through coturn (16380 bytes a datagram at most) packets of RELAY_PACKET_SIZE, whole."""
    if tuning_supported():
        expected = f"rtcxfer: SCTP packets {RELAY_PACKET_SIZE} bytes (path probe confirmed"
        assert expected in submitted.run.stderr, submitted.describe()


def worker_said(cluster, pattern: str, timeout: float = 20.0) -> str:
    return cluster.worker.wait_for(pattern, timeout).group(0)


def test_stun_alone_gets_through_two_nats_that_keep_ports(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.ENDPOINT_INDEPENDENT, worker_nat=NatKind.ENDPOINT_INDEPENDENT)
    turn = bed.start_turn()  # its STUN service only
    package, data = package_for(tmp_path, "stun")
    with nat_cluster(bed, tmp_path, token=TOKEN, room=ROOM, signal_options=["--stun", turn.stun_url]) as cluster:
        submitted = submit_from_client(cluster, bed, package, room=ROOM)
        assert_job_done(submitted, data)
        assert submitted.report["path"] == "through NAT (server-reflexive)", submitted.describe()
        assert "rtcxfer: data channel through NAT (server-reflexive)" in submitted.run.stderr, submitted.describe()
        worker_said(cluster, r"client client-\w+: data channel through NAT \(server-reflexive\)")


def test_without_stun_or_turn_both_sides_say_what_is_missing(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.ENDPOINT_INDEPENDENT, worker_nat=NatKind.ENDPOINT_INDEPENDENT)
    package, _ = package_for(tmp_path, "nothing")
    with nat_cluster(bed, tmp_path, token=TOKEN, room=ROOM, worker_options=["--any-interface"]) as cluster:
        submitted = submit_from_client(cluster, bed, package, "--any-interface", room=ROOM)
        said = submitted.report["failure"]
        assert submitted.run.returncode == EXIT_CONNECTION, submitted.describe()
        assert said.startswith("no ICE candidate pair worked between this client and worker worker within 15 s"), said
        assert "this client gathered 1 host, 0 server-reflexive and 0 relay candidates" in said
        assert "no STUN or TURN server is configured" in said and "behind NAT" in said
        assert "`rtcxfer signal --stun stun:HOST:3478`" in said and "--turn turn:HOST:3478" in said
        assert "Traceback" not in submitted.run.stderr
        worker = worker_said(cluster, r"session with client-\w+ failed: no ICE candidate pair worked[^\n]*")
        assert "no STUN or TURN server is configured" in worker and "rtcxfer signal --stun" in worker


def test_a_turn_relay_gets_through_two_symmetric_nats(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.SYMMETRIC, worker_nat=NatKind.SYMMETRIC)
    turn = bed.start_turn()
    package, data = package_for(tmp_path, "relay")
    signal = ["--stun", turn.stun_url, "--turn", turn.turn_udp_url, "--turn-secret-file", str(turn.secret_file)]
    with nat_cluster(bed, tmp_path, token=TOKEN, room=ROOM, signal_options=signal) as cluster:
        submitted = submit_from_client(cluster, bed, package, room=ROOM)
        assert_job_done(submitted, data)
        path = submitted.report["path"]
        assert re.fullmatch(r"via TURN relay 198\.51\.100\.1:\d+ (over udp|\(the worker's\))", path), path
        assert f"rtcxfer: data channel {path}" in submitted.run.stderr
        worker_said(cluster, r"client client-\w+: data channel via TURN relay 198\.51\.100\.1:\d+")
        assert_relay_packets(submitted)
    # The allocations lived through the job: coturn closed none of them for a failed relayed send.
    assert "udp send" not in (turn.directory / "turnserver.stderr").read_text()


def test_symmetric_nats_without_turn_are_named_with_turn_as_the_remedy(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.SYMMETRIC, worker_nat=NatKind.SYMMETRIC)
    turn = bed.start_turn()
    package, _ = package_for(tmp_path, "symmetric")
    with nat_cluster(bed, tmp_path, token=TOKEN, room=ROOM, signal_options=["--stun", turn.stun_url]) as cluster:
        submitted = submit_from_client(cluster, bed, package, room=ROOM)
        said = submitted.report["failure"]
        assert submitted.run.returncode == EXIT_CONNECTION, submitted.describe()
        assert "no ICE candidate pair worked" in said and "1 server-reflexive" in said
        assert "Likely cause: symmetric NAT" in said and "Remedy: a TURN relay: `rtcxfer signal --turn" in said
        worker = worker_said(cluster, r"session with client-\w+ failed: no ICE candidate pair worked[^\n]*")
        assert "symmetric NAT" in worker


def test_a_client_network_that_blocks_udp_gets_through_over_turn_tcp(nat_bed, tmp_path):
    """The signaling server hands out TURN over UDP first and over TCP second (aiortc uses the
    first): the client's UDP allocation gets no answer, its first attempt no pair, and its
    relay-only second attempt goes over TCP; the worker answers that offer relay-only too."""
    bed = nat_bed(client_nat=NatKind.UDP_BLOCKED, worker_nat=NatKind.ENDPOINT_INDEPENDENT)
    turn = bed.start_turn()
    package, data = package_for(tmp_path, "tcp")
    signal = ["--stun", turn.stun_url, "--turn", turn.turn_udp_url, "--turn", turn.turn_tcp_url,
              "--turn-secret-file", str(turn.secret_file)]
    with nat_cluster(bed, tmp_path, token=TOKEN, room=ROOM, signal_options=signal) as cluster:
        submitted = submit_from_client(cluster, bed, package, room=ROOM)
        assert_job_done(submitted, data)
        assert re.fullmatch(r"via TURN relay 198\.51\.100\.1:\d+ over tcp", submitted.report["path"]), \
            submitted.describe()
        assert "Trying again through the TURN relay only" in submitted.run.stderr, submitted.describe()
        worker_said(cluster, r"client client-\w+: data channel via TURN relay")
        worker_said(cluster, r"offered relay candidates only: answering with relay candidates only")
        assert_relay_packets(submitted)


def test_forged_and_expired_turn_credentials_are_refused_and_said_to_be(nat_bed, tmp_path):
    """The signaling server signs with another secret than coturn's (forged, for every peer), and
    the client brings static credentials that expired an hour ago: coturn refuses both with 401,
    and each side says that the TURN server refused its credentials."""
    bed = nat_bed(client_nat=NatKind.SYMMETRIC, worker_nat=NatKind.SYMMETRIC)
    turn = bed.start_turn()
    forged_secret = tmp_path / "forged-secret"
    forged_secret.write_text(f"not-coturns-{secrets.token_hex(8)}\n")
    forged_secret.chmod(0o600)
    expired = turn_rest_credential(turn.secret, "client", ttl=60, now=time.time() - 3600)
    expired_password = tmp_path / "expired-password"
    expired_password.write_text(expired.password + "\n")
    expired_password.chmod(0o600)
    package, _ = package_for(tmp_path, "refused")
    signal = ["--stun", turn.stun_url, "--turn", turn.turn_udp_url, "--turn-secret-file", str(forged_secret)]
    with nat_cluster(bed, tmp_path, token=TOKEN, room=ROOM, signal_options=signal) as cluster:
        submitted = submit_from_client(
            cluster, bed, package, "--ice-server", turn.turn_udp_url, "--ice-username", expired.username,
            "--ice-credential-file", str(expired_password), room=ROOM,
        )
        said = submitted.report["failure"]
        assert submitted.run.returncode == EXIT_CONNECTION, submitted.describe()
        assert "the TURN server 198.51.100.1:3478 refused this client's credentials (401 Unauthorized)" in said
        assert "--turn-secret-file" in said and "expired" in said
        worker = worker_said(cluster, r"session with client-\w+ failed: no ICE candidate pair worked[^\n]*")
        assert "refused this worker's credentials (401 Unauthorized)" in worker
    log = turn.log_text()
    assert re.search(rf"user <{re.escape(expired.username)}>: incoming packet \w+ processed, error 401", log), log
    assert re.search(r"user <\d+:worker>: incoming packet \w+ processed, error 401", log), log
