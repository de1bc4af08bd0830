"""Many workers in one room, end to end with real processes on 127.0.0.1: three ``rtcxfer
worker`` processes (one with two job slots, one with a label, one drained mid-way), eight
``rtcxfer submit --json`` processes started at once, ``rtcxfer workers``, and the fast
refusals of ``--require`` and ``--worker``.

Each job sleeps a moment and records when it ran, so overlapping jobs on one worker are seen
from the jobs' own clocks, not from the worker's accounting. Timeouts are hang guards only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest

from rtcxfer.client.sample import build_sample_package
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.processes import WORKER_READY, CliProcess
from tests.support.cli import environment

TOKEN = "many-workers-test-token"
ROOM = "lab"
GUARD = 180.0
EXIT_CONNECTION = 3

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

#: A job that takes long enough to overlap with others and says when it ran.
TIMED_PROGRAM = """\
import json, os, pathlib, time
started = time.time()
time.sleep(1.5)
out = pathlib.Path(os.environ["RTCXFER_OUTPUT_DIR"])
(out / "times.json").write_text(json.dumps({"start": started, "end": time.time()}))
"""


@attrs.define
class Room:
    """The module's cluster, and its three workers by peer id."""

    cluster: Cluster
    workers: dict[str, CliProcess]

    @property
    def root(self) -> Path:
        return self.cluster.root

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.run(*args, timeout=GUARD)

    def submit_options(self, results: Path, *extra: str) -> list[str]:
        return ["--results", str(results), "--timeout", "60", *extra]


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    root = tmp_path_factory.mktemp("many-workers")
    # Eleven peers of one room come from 127.0.0.1 here; the default per-address cap is eight.
    with start_cluster(
        root,
        token=TOKEN,
        env=environment(),
        service_env=environment("INFO"),
        signal_options=["--max-room-peers-per-address", "16"],
    ) as cluster:
        workers = {
            peer_id: cluster.start_worker(
                ROOM, "--peer-id", peer_id, *extra, name=peer_id, work_dir=root / f"work-{peer_id}", wait=False
            )
            for peer_id, extra in (
                ("gpu-a", ["--slots", "2"]),
                ("gpu-b", ["--label", "site=hpc"]),
                ("gpu-c", ["--pid-file", str(root / "gpu-c.pid")]),
            )
        }
        for worker in workers.values():
            worker.wait_for(WORKER_READY)
        yield Room(cluster, workers)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def test_eight_jobs_spread_over_three_workers_within_their_slots_and_a_drain(room: Room) -> None:
    package = build_sample_package(room.root / "timed.zip", program=TIMED_PROGRAM)
    started = time.monotonic()
    submits = [
        room.cluster.start_submit(package, *room.submit_options(room.root / f"results-{n}", "--json"), room=ROOM)
        for n in range(8)
    ]
    drainer = room.workers["gpu-c"]
    try:
        # Mid-way: once gpu-c has taken a job, tell it to drain, as an operator would.
        drainer.wait_for(r"job \S+ accepted", timeout=GUARD)
        drained = room.cli("worker", "--drain", "--pid-file", str(room.root / "gpu-c.pid"))
        assert drained.returncode == 0, drained.stderr
        drainer.wait_for("draining: running jobs finish", timeout=GUARD)
        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(lambda p: p.communicate(timeout=GUARD), submits))
    finally:
        for process in submits:
            if process.poll() is None:
                process.kill()
                process.wait()
    print(f"eight jobs on three workers: {time.monotonic() - started:.1f} s")

    reports = []
    for process, (stdout, stderr) in zip(submits, outputs):
        assert process.returncode == 0, stderr
        lines = stdout.strip().splitlines()
        assert len(lines) == 1, stdout  # one JSON object, nothing else on stdout
        report = json.loads(lines[0])
        assert report["ok"] and report["exit_status"] == 0 and report["submit_exit_code"] == 0
        assert report["worker_id"] in room.workers
        assert report["bytes_sent"] == package.stat().st_size and report["bytes_received"] > 0
        assert set(report["seconds"]) == {"total", "packing", "waiting", "connect", "transfer", "run"}
        assert report["seconds"]["run"] >= 1.5 and report["seconds"]["packing"] is None
        # The whole run, the wait for a worker (the queue) included.
        assert report["seconds"]["total"] >= report["seconds"]["waiting"] + report["seconds"]["run"]
        assert report["seconds"]["connect"] > 0  # from the command's start to the package's first byte
        assert f"complete on worker {report['worker_id']}" in stderr
        reports.append((report, stderr))

    by_worker: dict[str, list[tuple[float, float]]] = {}
    for report, _ in reports:
        times = json.loads((Path(report["results_dir"]) / "times.json").read_text())
        by_worker.setdefault(report["worker_id"], []).append((times["start"], times["end"]))
    slots = {"gpu-a": 2, "gpu-b": 1, "gpu-c": 1}
    for worker_id, intervals in by_worker.items():
        assert max_overlap(intervals) <= slots[worker_id], (worker_id, intervals)
    assert set(by_worker) == set(slots), {w: len(i) for w, i in by_worker.items()}  # spread over all three
    # Eight jobs on four slots: some clients found every worker busy and said they would wait.
    assert any("waiting in the queue" in stderr for _, stderr in reports)

    # The drained worker authenticated no session and accepted no job after it began to drain.
    log = drainer.text()
    after = log[log.index("draining: running jobs finish"):]
    assert not re.search(r": authenticated$|job \S+ accepted", after, re.MULTILINE), after
    assert re.search(r"JOB_COMPLETE::", after), after  # its running job did finish

    listing = room.cli("workers", *room.cluster.connection_options(ROOM), "--json")
    assert listing.returncode == 0, listing.stderr
    described = {entry["id"]: entry for entry in json.loads(listing.stdout)}
    assert described["gpu-c"]["state"] == "draining"
    assert described["gpu-a"]["slots"] == 2 and described["gpu-b"]["labels"] == {"site": "hpc"}
    table = room.cli("workers", *room.cluster.connection_options(ROOM))
    assert table.stdout.splitlines()[0].split() == ["ID", "STATE", "SLOTS", "GPU", "LABELS", "TRANSPORTS", "UP"]
    assert any(line.startswith("gpu-b") and "site=hpc" in line for line in table.stdout.splitlines())


def test_a_requirement_nobody_meets_fails_at_once_listing_the_room(room: Room) -> None:
    package = build_sample_package(room.root / "plain.zip")
    options = room.submit_options(room.root / "unmet", "--require", "gpu_memory_mb>=16000", "--json")
    run = room.cluster.submit(package, *options, room=ROOM, timeout=GUARD)
    assert run.returncode == EXIT_CONNECTION, run.stderr
    assert "no worker in room 'lab' meets gpu_memory_mb>=16000" in run.stderr
    for worker_id in ("gpu-a", "gpu-b", "gpu-c"):
        assert worker_id in run.stderr
    report = json.loads(run.stdout)
    assert report["submit_exit_code"] == EXIT_CONNECTION and report["exit_status"] is None


def test_a_label_requirement_and_a_named_worker(room: Room) -> None:
    package = build_sample_package(room.root / "plain.zip")
    options = room.submit_options(room.root / "hpc", "--require", "label.site=hpc", "--json")
    run = room.cluster.submit(package, *options, room=ROOM, timeout=GUARD)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["worker_id"] == "gpu-b"
    options = room.submit_options(room.root / "absent", "--worker", "gpu-z")
    absent = room.cluster.submit(package, *options, room=ROOM, timeout=GUARD)
    assert absent.returncode == EXIT_CONNECTION
    assert "no worker 'gpu-z' in room 'lab'" in absent.stderr and "gpu-a" in absent.stderr


def test_a_second_worker_with_a_taken_id_is_told_to_use_peer_id(room: Room) -> None:
    second = room.cluster.start_worker(ROOM, "--peer-id", "gpu-a", name="gpu-a-again", env=environment(), wait=False)
    try:
        second.wait_for(
            r"another peer is registered as 'gpu-a' in room 'lab': another worker \(give each worker its own id "
            r"with --peer-id NAME\)",
            timeout=GUARD,
        )
    finally:
        second.stop()
