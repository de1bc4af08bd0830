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
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.job_files import expected_sample_results, files_under, results_dir_of
from rtcxfer.testing.processes import describe
from rtcxfer.testing.two_hosts import TwoHosts
from tests.support.two_host_cluster import cluster_across, submit_from_a

TOKEN = f"direct2h-{secrets.token_hex(8)}"
ROOM = "direct-two-hosts"

#: Network namespaces and real processes in them.
pytestmark = pytest.mark.slow


def submit_across(bed: TwoHosts, tmp_path: Path, *, signal_port: int = 0) -> tuple[subprocess.CompletedProcess, bytes]:
    """A worker in B, a signaling server and one automatic-choice ``rtcxfer submit`` in A."""
    with cluster_across(bed, tmp_path, token=TOKEN, room=ROOM, signal_port=signal_port) as cluster:
        data = f"# direct {secrets.token_hex(8)}\n".encode() + sample_text(20000)
        package = build_sample_package(tmp_path / "package.zip", data=data)
        options = ["--results", str(tmp_path / "results"), "--timeout", "90"]
        return submit_from_a(cluster, bed, package, *options, room=ROOM), data


def test_submit_uses_direct_between_two_hosts_and_says_so(two_host_bed, tmp_path):
    bed = two_host_bed()
    run, data = submit_across(bed, tmp_path)
    assert run.returncode == 0, describe(run)
    assert "input via direct, results via direct" in run.stdout, describe(run)
    assert "transports for this session: direct, rtc-chunked" in run.stderr, describe(run)
    assert "sending input via direct" in run.stderr, describe(run)
    assert files_under(results_dir_of(run)) == expected_sample_results(data)


def test_blocked_tcp_falls_back_to_rtc_chunked_within_3_s_and_says_why(two_host_bed, tmp_path):
    signal_port = random.randint(20000, 40000)
    bed = two_host_bed(block_tcp=True, allow_tcp_ports=[signal_port])
    run, data = submit_across(bed, tmp_path, signal_port=signal_port)
    assert run.returncode == 0, describe(run)
    assert "input via rtc-chunked, results via rtc-chunked" in run.stdout, describe(run)
    assert files_under(results_dir_of(run)) == expected_sample_results(data)
    why = re.search(r"direct is not usable between these peers: .*gave up after ([\d.]+) s: (.*)", run.stderr)
    assert why, describe(run)
    assert float(why.group(1)) <= 3.0, why.group(0)
    assert "the client cannot reach the worker" in why.group(2), why.group(0)
    assert "the worker cannot reach the client" in why.group(2), why.group(0)
    assert bed.b.address in why.group(2) and bed.a.address in why.group(2), why.group(0)
