"""The direct transport across NAT (``nat_bed``), end to end through the real commands: ``rtcxfer
signal --stun`` on the public segment, ``rtcxfer worker --direct-port P --direct-advertise
198.51.100.3:Q`` behind the worker's router, ``rtcxfer submit`` behind the client's; both routers
keep ports (endpoint-independent NAT), so the data channel runs peer-to-peer with STUN.

* The worker's router forwards public TCP port Q to the worker's P (what Vast.ai or RunAI do
  for a published container port): the job's bytes travel by ``direct`` and the output says so.
* Nothing is forwarded: the job goes over ``rtc-chunked``, and giving ``direct`` up cost at most
  3 s (the run without ``direct`` at all, ``RTCXFER_BLOCK_PLUGINS=direct``, is the yardstick).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.cluster import start_cluster
from rtcxfer.testing.job_files import expected_sample_results, files_under, results_dir_of
from rtcxfer.testing.processes import describe
from tests.support.cli import environment

TOKEN = f"directnat-{secrets.token_hex(8)}"
ROOM = "direct-nat"
#: The worker's direct port, and the public port its router forwards to it.
DIRECT_PORT, PUBLIC_PORT = 9000, 40123

#: Network namespaces and real processes in them.
pytestmark = pytest.mark.slow


def jobs_through_nat(bed, tmp_path: Path, *submit_envs: dict[str, str]) -> list[tuple[subprocess.CompletedProcess,
                                                                                      bytes, float]]:
    """A signaling server (with the bed's STUN server) in ``public``, a worker with a fixed,
    advertised direct port behind the worker's router, and one ``rtcxfer submit`` from behind
    the client's router per environment in ``submit_envs``: (run, its input data, seconds)."""
    turn = bed.start_turn()
    runs = []
    with start_cluster(
        tmp_path,
        token=TOKEN,
        env=environment(),
        service_env=environment("INFO"),
        signal_host=bed.public.address,
        signal_prefix=bed.public.prefix,
        signal_options=["--stun", turn.stun_url],
    ) as cluster:
        advertised = f"{bed.worker_router.address}:{PUBLIC_PORT}"
        cluster.worker = cluster.start_worker(
            ROOM, "--direct-port", str(DIRECT_PORT), "--direct-advertise", advertised,
            name="worker", work_dir=tmp_path / "worker", prefix=bed.worker.prefix,
        )  # fmt: skip
        cluster.worker.wait_for(rf"direct connections on TCP port {DIRECT_PORT}, offered as {re.escape(advertised)}")
        for number, extra in enumerate(submit_envs):
            data = f"# direct through NAT {secrets.token_hex(8)}\n".encode() + sample_text(20000)
            package = build_sample_package(tmp_path / f"package-{number}.zip", data=data)
            options = ["--results", str(tmp_path / f"results-{number}"), "--timeout", "60"]
            started = time.monotonic()
            run = cluster.submit(package, *options, room=ROOM, prefix=bed.client.prefix, env=environment(**extra))
            runs.append((run, data, time.monotonic() - started))
    return runs


def test_a_mapped_direct_port_carries_the_job_through_nat(nat_bed, tmp_path):
    bed = nat_bed()
    assert bed.publish_worker_port(DIRECT_PORT, public_port=PUBLIC_PORT) == (bed.worker_router.address, PUBLIC_PORT)
    [(run, data, _)] = jobs_through_nat(bed, tmp_path, {})
    assert run.returncode == 0, describe(run)
    assert "input via direct, results via direct" in run.stdout, describe(run)
    assert "sending input via direct" in run.stderr, describe(run)
    assert files_under(results_dir_of(run)) == expected_sample_results(data)
    # The client connected out to the advertised address; the worker's router forwarded it.
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert re.search(r"direct: connected \(client-connects\), 198\.51\.100\.2:\d+", log), log[-3000:]


def test_without_the_mapping_the_job_goes_over_rtc_chunked_and_direct_costs_at_most_3_s(nat_bed, tmp_path):
    bed = nat_bed()
    (unmapped, data, with_direct), (directless, directless_data, without_direct) = jobs_through_nat(
        bed, tmp_path, {}, {"RTCXFER_BLOCK_PLUGINS": "direct"}
    )
    for run, sent in ((unmapped, data), (directless, directless_data)):
        assert run.returncode == 0, describe(run)
        assert "input via rtc-chunked, results via rtc-chunked" in run.stdout, describe(run)
        assert files_under(results_dir_of(run)) == expected_sample_results(sent)
    why = re.search(r"direct is not usable between these peers: .*gave up after ([\d.]+) s: (.*)", unmapped.stderr)
    assert why, describe(unmapped)
    # What direct cost before the job went on over rtc-chunked, as the client measured it.
    assert float(why.group(1)) <= 3.0, why.group(0)
    assert f"{bed.worker_router.address}:{PUBLIC_PORT}" in why.group(2), why.group(0)
    assert "direct is not usable" not in directless.stderr, describe(directless)
    print(f"end to end: {with_direct:.1f} s with direct given up, {without_direct:.1f} s without direct")
