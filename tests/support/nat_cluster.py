"""``rtcxfer`` across a NAT bed (``nat_bed``): the signaling server on the public segment (with
the ICE servers a test gives it), a worker behind the worker's router, and ``rtcxfer submit
--json`` behind the client's."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.nat_bed import NatBed
from rtcxfer.testing.processes import describe
from tests.support.cli import environment

#: Hang guard for one ``submit``; below its ``--timeout`` of :data:`SUBMIT_TIMEOUT`, so a
#: ``submit`` that waited for its whole ``--timeout`` instead of diagnosing ICE fails the test.
SUBMIT_GUARD = 100.0
SUBMIT_TIMEOUT = "120"


@contextlib.contextmanager
def nat_cluster(
    bed: NatBed,
    root: Path,
    *,
    token: str,
    room: str,
    signal_options: Sequence[str] = (),
    worker_options: Sequence[str] = (),
) -> Iterator[Cluster]:
    """The bed's cluster: ``rtcxfer signal SIGNAL_OPTIONS`` on the public server address and
    ``rtcxfer worker WORKER_OPTIONS`` behind the worker's router (no shared storage)."""
    with start_cluster(
        root,
        token=token,
        env=environment(),
        service_env=environment("INFO"),
        signal_host=bed.public.address,
        signal_prefix=bed.public.prefix,
        signal_options=signal_options,
    ) as cluster:
        cluster.worker = cluster.start_worker(
            room, *worker_options, name="worker", work_dir=root / "worker", prefix=bed.worker.prefix
        )
        yield cluster


@attrs.frozen
class Submitted:
    """One ``rtcxfer submit --json`` behind the client's router: the run, its JSON line, and how
    long it took (for the report, never asserted)."""

    run: subprocess.CompletedProcess[str]
    report: dict
    seconds: float

    def describe(self) -> str:
        return f"{describe(self.run)}\n--- took {self.seconds:.1f} s"


def submit_from_client(cluster: Cluster, bed: NatBed, package: Path, *options: str, room: str) -> Submitted:
    """``rtcxfer submit PACKAGE --json --timeout 120 OPTIONS`` in the client's namespace."""
    started = time.monotonic()
    run = cluster.submit(
        package, "--json", "--timeout", SUBMIT_TIMEOUT, "--results", str(cluster.root / "results"), *options,
        room=room, prefix=bed.client.prefix, timeout=SUBMIT_GUARD,
    )
    seconds = time.monotonic() - started
    lines = run.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    return Submitted(run, report, seconds)
