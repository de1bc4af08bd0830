"""End to end between two "machines": ``rtcxfer signal`` and ``rtcxfer submit --any-interface``
in host A, ``rtcxfer worker --any-interface`` in host B (``two_host_bed``), one job over
rtc-chunked per kind of link, results compared byte for byte.

The only interfaces in either namespace are ``lo`` and the veth, so ``--any-interface``
offers the veth address only. The worker shares no storage with the client.
"""

from __future__ import annotations

import re
import secrets

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.net.aiortc_internals import MAX_PACKET_SIZE, RECORD_SIZE, STOCK_PACKET_SIZE, tuning_supported
from rtcxfer.testing.job_files import expected_sample_results, files_under, results_dir_of
from rtcxfer.testing.processes import describe
from tests.support.two_host_cluster import cluster_across, submit_from_a

TOKEN = f"e2e2h-{secrets.token_hex(8)}"
ROOM = "two-hosts"

#: Network namespaces and real processes in them.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("drop", [False, True], ids=["fragments-pass", "fragments-dropped"])
def test_submit_over_rtc_chunked_between_two_hosts(two_host_bed, tmp_path, drop):
    bed = two_host_bed(drop_fragments=drop)
    with cluster_across(bed, tmp_path, token=TOKEN, room=ROOM) as cluster:
        worker = cluster.worker
        data = f"# two hosts {secrets.token_hex(8)}\n".encode() + sample_text(20000)
        package = build_sample_package(tmp_path / "package.zip", data=data)
        options = ["--results", str(tmp_path / "results"), "--transport", "rtc-chunked", "--timeout", "60"]
        run = submit_from_a(cluster, bed, package, *options, room=ROOM)
        assert run.returncode == 0, describe(run)
        assert "input via rtc-chunked, results via rtc-chunked" in run.stdout, describe(run)
        assert files_under(results_dir_of(run)) == expected_sample_results(data)
        # What the user sees about the packet size, on both sides.
        said = re.findall(r"SCTP packets (\d+) bytes(?: in (\d+)-byte datagrams)? \(([^)]*)", run.stdout + run.stderr)
        assert said, describe(run)
        worker.wait_for(r"client \S+: SCTP packets \d+ bytes")
        if not tuning_supported():  # an older aiortc: stock packets, and it still works
            assert said[-1][0] == str(STOCK_PACKET_SIZE), said
        elif drop:
            # Packets of one DTLS record in datagrams of one MTU at most (the verdict on the
            # larger probes may come after this short job).
            assert said[-1][0] == str(RECORD_SIZE) and int(said[-1][1]) <= 1400, said
        else:
            assert said[-1] == (str(MAX_PACKET_SIZE), "", "path probe confirmed"), said
