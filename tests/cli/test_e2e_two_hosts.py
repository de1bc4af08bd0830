"""End to end between two "machines": ``rtcxfer signal`` and ``rtcxfer submit --any-interface``
in host A, ``rtcxfer worker --any-interface`` in host B (``two_host_bed``), one job over
rtc-chunked per kind of link, results compared byte for byte.

The only interfaces in either namespace are ``lo`` and the veth, so ``--any-interface``
offers the veth address only. The worker shares no storage with the client.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.net.aiortc_internals import STOCK_PACKET_SIZE, tuning_supported
from rtcxfer.testing.processes import WORKER_READY, CliProcess, start_signaling
from tests.cli.test_e2e_cli import (
    SUBMIT_GUARD,
    _environment,
    describe,
    expected_sample_results,
    files_under,
    result_dir,
)

TOKEN = f"e2e2h-{secrets.token_hex(8)}"
ROOM = "two-hosts"


@pytest.mark.parametrize("drop", [False, True], ids=["fragments-pass", "fragments-dropped"])
def test_submit_over_rtc_chunked_between_two_hosts(two_host_bed, tmp_path, drop):
    bed = two_host_bed(drop_fragments=drop)
    env = _environment("INFO")
    services = []
    try:
        signaling, url = start_signaling(tmp_path, token=TOKEN, env=env, host=bed.a.address, prefix=bed.a.prefix)
        services.append(signaling)
        worker_args = ["worker", "--signal", url, "--room", ROOM, "--token", TOKEN, "--any-interface"]
        worker_args += ["--work-dir", str(tmp_path / "worker"), "--shared-root", str(tmp_path / "worker-storage")]
        (tmp_path / "worker-storage").mkdir()
        worker = CliProcess("worker", worker_args, tmp_path, env=env, prefix=bed.b.prefix)
        services.append(worker)
        worker.wait_for(WORKER_READY)

        data = f"# two hosts {secrets.token_hex(8)}\n".encode() + sample_text(20000)
        package = build_sample_package(tmp_path / "package.zip", data=data)
        results = tmp_path / "results"
        command = [sys.executable, "-m", "rtcxfer.cli", "submit", str(package), "--signal", url, "--room", ROOM]
        command += ["--token", TOKEN, "--results", str(results), "--transport", "rtc-chunked", "--any-interface"]
        command += ["--timeout", "60"]
        run = bed.a.run(
            command, capture_output=True, text=True, env=_environment(), cwd=tmp_path, timeout=SUBMIT_GUARD,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert run.returncode == 0, describe(run)
        assert "input via rtc-chunked, results via rtc-chunked" in run.stdout, describe(run)
        assert files_under(result_dir(run)) == expected_sample_results(data)
        # What the user sees about the packet size, on both sides.
        said = re.findall(r"SCTP packets (\d+) bytes(?: in (\d+)-byte datagrams)? \(([^)]*)", run.stdout + run.stderr)
        assert said, describe(run)
        worker.wait_for(r"client \S+: SCTP packets \d+ bytes")
        if not tuning_supported():  # an older aiortc: stock packets, and it still works
            assert said[-1][0] == str(STOCK_PACKET_SIZE), said
        elif drop:
            # 16 KiB packets in datagrams of one MTU at most (the verdict on the larger probes
            # may come after this short job).
            assert said[-1][0] == "16384" and int(said[-1][1]) <= 1400, said
        else:
            assert said[-1] == ("16384", "", "path probe confirmed"), said
    finally:
        for service in reversed(services):
            service.stop()
