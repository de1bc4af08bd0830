"""The direct transport between two "machines" (``two_host_bed``: two network namespaces joined by
a veth pair), end to end: ``rtcxfer signal`` and ``rtcxfer submit --any-interface`` in host A,
``rtcxfer worker --any-interface`` in host B, no storage shared, automatic transport choice.

* TCP passes: the job's package and its results travel by ``direct`` and the output says so.
* TCP is blocked both ways except the signaling port (nftables): the job still succeeds over
  ``rtc-chunked``, the output says why ``direct`` was not used, and giving up took at most 3 s.
"""

from __future__ import annotations

import random
import re
import secrets
import subprocess
import sys
from pathlib import Path

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.processes import WORKER_READY, CliProcess, start_signaling
from rtcxfer.testing.two_hosts import TwoHosts
from tests.cli.test_e2e_cli import (
    SUBMIT_GUARD,
    _environment,
    describe,
    expected_sample_results,
    files_under,
    result_dir,
)

TOKEN = f"direct2h-{secrets.token_hex(8)}"
ROOM = "direct-two-hosts"


def submit_across(bed: TwoHosts, tmp_path: Path, *, signal_port: int = 0) -> tuple[subprocess.CompletedProcess, bytes]:
    """A worker in B, a signaling server and one automatic-choice ``rtcxfer submit`` in A."""
    env = _environment("INFO")
    services = []
    try:
        signaling, url = start_signaling(
            tmp_path, token=TOKEN, env=env, host=bed.a.address, prefix=bed.a.prefix, port=signal_port
        )
        services.append(signaling)
        (tmp_path / "worker-storage").mkdir()
        worker_args = ["worker", "--signal", url, "--room", ROOM, "--token", TOKEN, "--any-interface"]
        worker_args += ["--work-dir", str(tmp_path / "worker"), "--shared-root", str(tmp_path / "worker-storage")]
        worker = CliProcess("worker", worker_args, tmp_path, env=env, prefix=bed.b.prefix)
        services.append(worker)
        worker.wait_for(WORKER_READY)
        data = f"# direct {secrets.token_hex(8)}\n".encode() + sample_text(20000)
        package = build_sample_package(tmp_path / "package.zip", data=data)
        command = [sys.executable, "-m", "rtcxfer.cli", "submit", str(package), "--signal", url, "--room", ROOM]
        command += ["--token", TOKEN, "--results", str(tmp_path / "results"), "--any-interface", "--timeout", "90"]
        run = bed.a.run(
            command, capture_output=True, text=True, env=_environment(), cwd=tmp_path, timeout=SUBMIT_GUARD,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return run, data
    finally:
        for service in reversed(services):
            service.stop()


def test_submit_uses_direct_between_two_hosts_and_says_so(two_host_bed, tmp_path):
    bed = two_host_bed()
    run, data = submit_across(bed, tmp_path)
    assert run.returncode == 0, describe(run)
    assert "input via direct, results via direct" in run.stdout, describe(run)
    assert "transports for this session: direct, rtc-chunked" in run.stderr, describe(run)
    assert "sending input via direct" in run.stderr, describe(run)
    assert files_under(result_dir(run)) == expected_sample_results(data)


def test_blocked_tcp_falls_back_to_rtc_chunked_within_3_s_and_says_why(two_host_bed, tmp_path):
    signal_port = random.randint(20000, 40000)
    bed = two_host_bed(block_tcp=True, allow_tcp_ports=[signal_port])
    run, data = submit_across(bed, tmp_path, signal_port=signal_port)
    assert run.returncode == 0, describe(run)
    assert "input via rtc-chunked, results via rtc-chunked" in run.stdout, describe(run)
    assert files_under(result_dir(run)) == expected_sample_results(data)
    why = re.search(r"direct is not usable between these peers: .*gave up after ([\d.]+) s: (.*)", run.stderr)
    assert why, describe(run)
    assert float(why.group(1)) <= 3.0, why.group(0)
    assert "the client cannot reach the worker" in why.group(2), why.group(0)
    assert "the worker cannot reach the client" in why.group(2), why.group(0)
    assert bed.b.address in why.group(2) and bed.a.address in why.group(2), why.group(0)
