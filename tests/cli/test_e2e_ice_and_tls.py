"""End to end through real ``rtcxfer`` processes on 127.0.0.1: a job over a ``wss://`` signaling
server whose certificate a throwaway CA issued (``--certfile``/``--keyfile``, ``--ca-file``), a
refused untrusted certificate, ICE servers handed out without a credential reaching any log,
and a bad ICE URL refused with exit 2 and no traceback.

The STUN/TURN URLs handed out point at 127.0.0.1 and are never contacted: no client offers to a
worker that was given them (that coturn accepts the credentials is
``tests/net/test_turn_credentials.py``). The job runs over a server that hands out none, so
its peers stay on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.cluster import start_cluster
from rtcxfer.testing.job_files import expected_sample_results, files_under, results_dir_of
from rtcxfer.testing.processes import describe, run_cli
from tests.support.certificates import issue_server_certificate, make_authority
from tests.support.cli import environment

pytestmark = pytest.mark.slow

TOKEN = f"tls-{secrets.token_hex(8)}"
ROOM = "tls"
EXIT_USAGE, EXIT_CONNECTION = 2, 3


def test_a_bad_ice_url_is_exit_2_with_no_traceback_and_no_credential(tmp_path: Path) -> None:
    package = build_sample_package(tmp_path / "package.zip", data=b"x")
    run = run_cli("submit", str(package), "--ice-server", "turn:alice:hunter2@turn.example.org",
                  env=environment(), cwd=tmp_path)
    assert run.returncode == EXIT_USAGE, describe(run)
    assert "credentials do not belong in the URL" in run.stderr and "--ice-username" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout and "hunter2" not in run.stderr + run.stdout
    run = run_cli("signal", "--port", "0", "--stun", "stun.example.org", env=environment(), cwd=tmp_path)
    assert run.returncode == EXIT_USAGE and "no scheme" in run.stderr and "Traceback" not in run.stderr, describe(run)


def test_a_job_over_wss_with_a_private_ca_and_an_untrusted_certificate_refused(tmp_path: Path) -> None:
    authority = make_authority(tmp_path)
    certificate = issue_server_certificate(authority, tmp_path)
    tls = ["--certfile", str(certificate.cert_path), "--keyfile", str(certificate.key_path)]
    ca = ["--ca-file", str(authority.cert_path)]
    with start_cluster(tmp_path, token=TOKEN, env=environment(), service_env=environment("INFO"),
                       signal_options=tls, worker_options=ca) as cluster:
        assert cluster.url.startswith("wss://127.0.0.1:")
        cluster.worker = cluster.start_worker(ROOM, work_dir=tmp_path / "work")
        data = f"# over wss {secrets.token_hex(8)}\n".encode() + sample_text(5000)
        package = build_sample_package(tmp_path / "package.zip", data=data)
        run = cluster.submit(package, *ca, "--results", str(tmp_path / "results"), "--quiet", "--timeout", "30",
                             room=ROOM)
        assert run.returncode == 0, describe(run)
        assert files_under(results_dir_of(run)) == expected_sample_results(data)

        listed = cluster.run("workers", *cluster.connection_options(ROOM), *ca, "--json")
        assert listed.returncode == 0, describe(listed)
        assert [worker["id"] for worker in json.loads(listed.stdout)] == ["worker"]

        # Without the CA: the system's store does not know it. Exit 3, saying what to do.
        for command in (["workers"], ["submit", str(package), "--timeout", "10"]):
            refused = cluster.run(*command, *cluster.connection_options(ROOM))
            assert refused.returncode == EXIT_CONNECTION, describe(refused)
            assert "does not verify" in refused.stderr and "--ca-file" in refused.stderr, describe(refused)
            assert "Traceback" not in refused.stderr, describe(refused)


def credentials_around(secret: str, name: str, moment: float, ttl: int) -> set[str]:
    """Every credential ``name`` could have been given within a minute of ``moment``."""
    passwords = set()
    for expiry in range(int(moment) + ttl - 60, int(moment) + ttl + 60):
        username = f"{expiry}:{name}"
        passwords.add(base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode())
    return passwords


def test_ice_servers_reach_the_peers_and_no_credential_reaches_any_log(tmp_path: Path) -> None:
    secret = f"turn-{secrets.token_hex(12)}"
    (tmp_path / "turn-secret").write_text(secret + "\n")
    ice = ["--stun", "stun:127.0.0.1:3478", "--turn", "turn:127.0.0.1:3478?transport=udp",
           "--turn", "turn:127.0.0.1:3478?transport=tcp", "--turn-secret-file", str(tmp_path / "turn-secret"),
           "--turn-ttl", "600"]
    started = time.time()
    with start_cluster(tmp_path, token=TOKEN, env=environment("DEBUG"), service_env=environment("DEBUG"),
                       signal_options=ice) as cluster:
        worker = cluster.start_worker(ROOM, "--peer-id", "gpu-1", work_dir=tmp_path / "work")
        worker.wait_for(r"registered; peers \{\}; ICE servers stun:127\.0\.0\.1:3478, "
                        r"turn:127\.0\.0\.1:3478\?transport=udp, turn:127\.0\.0\.1:3478\?transport=tcp")
        listed = cluster.run("workers", *cluster.connection_options(ROOM), "--json")
        assert listed.returncode == 0, describe(listed)
        client_id = re.search(r"SignalingClient client '(client-[0-9a-f]+)'", listed.stderr).group(1)
        signal_log = cluster.services[0].text()
        assert "peers are told to use stun:127.0.0.1:3478, turn:127.0.0.1:3478?transport=udp" in signal_log
        logs = {"signal": signal_log, "worker": worker.text(), "workers": listed.stderr + listed.stdout}
    given = credentials_around(secret, "gpu-1", started, 600) | credentials_around(secret, client_id, started, 600)
    for name, text in logs.items():
        assert secret not in text, name
        assert not [password for password in given if password in text], name
