"""``rtcxfer`` across the two hosts of a two-host bed (``two_host_bed``): a signaling server in
host A, a worker in host B (``--any-interface``, sharing no storage with the client), and
``rtcxfer submit --any-interface`` from host A."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.two_hosts import TwoHosts
from tests.support.cli import environment


@contextlib.contextmanager
def cluster_across(bed: TwoHosts, root: Path, *, token: str, room: str, signal_port: int = 0) -> Iterator[Cluster]:
    """The bed's cluster; ``signal_port`` fixed where a firewall rule must name it."""
    with start_cluster(
        root,
        token=token,
        env=environment(),
        service_env=environment("INFO"),
        signal_host=bed.a.address,
        signal_port=signal_port,
        signal_prefix=bed.a.prefix,
    ) as cluster:
        (root / "worker-storage").mkdir()
        cluster.worker = cluster.start_worker(
            room,
            "--any-interface",
            "--shared-root",
            str(root / "worker-storage"),
            name="worker",
            work_dir=root / "worker",
            prefix=bed.b.prefix,
        )
        yield cluster


def submit_from_a(
    cluster: Cluster, bed: TwoHosts, package: Path, *options: str, room: str
) -> subprocess.CompletedProcess[str]:
    """``rtcxfer submit PACKAGE --any-interface OPTIONS`` in host A, run to its end."""
    return cluster.submit(package, "--any-interface", *options, room=room, prefix=bed.a.prefix)
