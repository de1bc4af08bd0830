"""How a worker stops and how a client waits for one, through the real ``rtcxfer`` command (issue 24,
points 3 and 5): a first Ctrl-C drains (running jobs finish, no new ones are taken) and a second
stops now; a drained worker says once that stopping it is safe; ``submit`` waits for a busy or
draining worker no longer than ``--timeout`` says, and without one as long as it takes, keeping
its place in the room past the signaling server's idle limit.

The signaling server runs with ``--idle-timeout 2`` so that a wait outlives its idle limit in
seconds. Jobs wait for a gate file that the test creates, never for a time. Every process is
stopped by its own pid; timeouts are hang guards, never assertions about speed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.job_files import job_package
from rtcxfer.testing.processes import CliProcess, describe, run_cli
from tests.support.cli import environment

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

TOKEN = "lifecycle-token-0123456789abcdef"
GUARD = 120.0
EXIT_OK, EXIT_CONNECTION, EXIT_WORKER_STOPPED = 0, 3, 75
IDLE_LIMIT = 2
DRAIN_NOTICE = "draining: running jobs finish, no new ones are taken"
#: What must never reach a user's terminal.
STRAY = ("Traceback", "Task exception was never retrieved", "never awaited")

GATED = """\
import pathlib
import time
print('started', flush=True)
gate = pathlib.Path({gate!r})
while not gate.exists():
    time.sleep(0.05)
print('released', flush=True)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("lifecycle")
    with start_cluster(
        root, token=TOKEN, env=environment(), signal_options=["--idle-timeout", str(IDLE_LIMIT)]
    ) as cluster:
        yield cluster


def gated_package(directory: Path, name: str) -> tuple[Path, Path]:
    """A package whose job prints ``started`` and runs until the returned gate file exists."""
    gate = directory / f"{name}.go"
    return job_package(directory / f"{name}.zip", GATED.format(gate=str(gate)), timeout_seconds=600), gate


class Submit:
    """``rtcxfer submit`` in the background, its stderr in a file to watch."""

    def __init__(self, cluster: Cluster, package: Path, room: str, cwd: Path, *options: str, **env: str) -> None:
        self.stderr_path = cwd / f"submit-{package.stem}-{time.monotonic_ns()}.err"
        self.stdout = ""
        with open(self.stderr_path, "w") as stderr:
            self.process = cluster.start_submit(
                package, "--results", str(cwd / "results"), *options, room=room, cwd=cwd, stderr=stderr,
                env=environment(**env),
            )

    def text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, words: str, count: int = 1) -> None:
        deadline = time.monotonic() + GUARD
        while self.text().count(words) < count:
            assert self.process.poll() is None, f"submit ended ({self.process.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"no {words!r} x{count} within {GUARD} s:\n{self.text()}"
            time.sleep(0.05)

    def finish(self) -> int:
        """Its exit code, once it has ended; its stdout in :attr:`stdout`."""
        try:
            self.stdout, _ = self.process.communicate(timeout=GUARD)
            return self.process.returncode
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(GUARD)


def assert_clean(text: str) -> None:
    for stray in STRAY:
        assert stray not in text, text[-4000:]


def wait_exit(worker: CliProcess) -> int:
    try:
        return worker.process.wait(GUARD)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{worker.name} did not stop:\n{worker.text()}") from None


# --- point 5: Ctrl-C drains, a second Ctrl-C stops ------------------------------------------------


def test_a_first_ctrl_c_drains_the_running_job_finishes_and_then_the_worker_stops(cluster, tmp_path):
    worker = cluster.start_worker("ctrl-c", "--peer-id", "gpu1", name="worker-ctrl-c")
    package, gate = gated_package(tmp_path, "first")
    running = Submit(cluster, package, "ctrl-c", tmp_path)
    try:
        running.wait_for("| started")
        worker.process.send_signal(signal.SIGINT)  # the operator's Ctrl-C, in the worker's terminal
        worker.wait_for("Ctrl-C: draining", timeout=GUARD)

        # No new job: a second client finds gpu1 draining and gives up after its --timeout, saying why.
        refused = cluster.submit(package, "--worker", "gpu1", "--timeout", "4", room="ctrl-c", timeout=GUARD)
        assert refused.returncode == EXIT_CONNECTION, describe(refused)
        assert "worker gpu1 is draining" in refused.stderr, describe(refused)
        assert "no worker took the job within 4 s: worker gpu1 stayed draining" in refused.stderr
        assert "--timeout 0 without limit" in refused.stderr
        assert "signaling connection closed" not in refused.stderr  # its wait outlived the idle limit
        assert worker.process.poll() is None, "the worker waits for its running job"

        gate.touch()
        assert running.finish() == EXIT_OK, running.text()
        assert wait_exit(worker) == 0, worker.text()
    finally:
        running.stop()
        worker.stop()
    log = worker.text()
    assert log.count(DRAIN_NOTICE) == 1, log
    assert "(1 job running); the worker stops when they are done. Ctrl-C again stops now" in log
    assert "drained: no job is running; stopping" in log
    assert log.rstrip().endswith("worker stopped"), log
    assert "stopped: the worker is shutting down" not in log  # the job was not cut short
    assert_clean(log + running.text())


def test_a_second_ctrl_c_stops_at_once_and_the_client_reads_that_the_worker_was_shut_down(cluster, tmp_path):
    worker = cluster.start_worker("twice", "--peer-id", "gpu2", name="worker-twice")
    package, _ = gated_package(tmp_path, "never-released")
    running = Submit(cluster, package, "twice", tmp_path)
    try:
        running.wait_for("| started")
        worker.process.send_signal(signal.SIGINT)
        worker.wait_for("Ctrl-C: draining", timeout=GUARD)
        worker.process.send_signal(signal.SIGINT)
        assert running.finish() == EXIT_WORKER_STOPPED, running.text()
        assert wait_exit(worker) == 0, worker.text()
    finally:
        running.stop()
        worker.stop()
    text = running.text()
    assert "the worker gpu2 was shut down by its operator while running job" in text, text
    assert "so the job did not finish; nothing is wrong with the job. Submit it again" in text
    assert "cancelled nothing" not in text and "was cancelled" not in text
    log = worker.text()
    assert "stopped: the worker is shutting down" in log
    assert log.count(DRAIN_NOTICE) == 1, log
    assert_clean(text + log)


def test_a_ctrl_c_with_no_job_running_stops_at_once(cluster):
    worker = cluster.start_worker("idle", "--peer-id", "gpu3", name="worker-idle")
    try:
        worker.process.send_signal(signal.SIGINT)
        assert wait_exit(worker) == 0
    finally:
        worker.stop()
    log = worker.text()
    assert "draining" not in log and log.rstrip().endswith("worker stopped"), log


def test_drain_through_the_pid_file_says_once_that_stopping_is_safe_and_keeps_the_worker_running(cluster, tmp_path):
    pid_file = tmp_path / "gpu4.pid"
    worker = cluster.start_worker("drain", "--peer-id", "gpu4", "--pid-file", str(pid_file), name="worker-drain")
    package, gate = gated_package(tmp_path, "drained")
    running = Submit(cluster, package, "drain", tmp_path)
    try:
        running.wait_for("| started")
        drained = run_cli("worker", "--drain", "--pid-file", str(pid_file), env=environment(), cwd=tmp_path)
        assert drained.returncode == 0, describe(drained)
        worker.wait_for(DRAIN_NOTICE, timeout=GUARD)
        assert "safe to stop now" not in worker.text()  # its job still runs
        gate.touch()
        assert running.finish() == EXIT_OK, running.text()
        worker.wait_for("drained: no job is running; safe to stop now", timeout=GUARD)
        assert worker.process.poll() is None, "a drained worker keeps running until it is stopped"
        again = run_cli("worker", "--drain", "--pid-file", str(pid_file), env=environment(), cwd=tmp_path)
        assert again.returncode == 0, describe(again)
        worker.wait_for("already draining", timeout=GUARD)
        worker.process.send_signal(signal.SIGINT)  # nothing runs: stops at once
        assert wait_exit(worker) == 0, worker.text()
    finally:
        running.stop()
        worker.stop()
    log = worker.text()
    assert log.count(DRAIN_NOTICE) == 1, log
    assert log.count("safe to stop now") == 1, log
    assert_clean(log)


def test_worker_help_says_how_ctrl_c_sigterm_and_drain_stop_it():
    shown = run_cli("worker", "--help", env=environment(), cwd=Path.cwd().anchor)
    assert shown.returncode == 0, describe(shown)
    text = " ".join(shown.stdout.split())
    assert "Ctrl-C drains (running jobs finish, no new ones are taken)" in text
    assert "a second Ctrl-C stops now" in text and "SIGTERM" in text and "stops now" in text
    assert "says when it is safe to stop" in text


# --- point 3: submit waits as long as --timeout says, and keeps its place ---------------------------


def test_a_wait_without_limit_for_a_draining_worker_outlives_the_idle_limit_and_runs_on_its_successor(
    cluster, tmp_path
):
    pid_file = tmp_path / "gpu5.pid"
    draining = cluster.start_worker("wait", "--peer-id", "gpu5", "--pid-file", str(pid_file), name="worker-gpu5")
    successor = None
    package, gate = gated_package(tmp_path, "waited")
    gate.touch()
    try:
        drained = run_cli("worker", "--drain", "--pid-file", str(pid_file), env=environment(), cwd=tmp_path)
        assert drained.returncode == 0, describe(drained)
        draining.wait_for("safe to stop now", timeout=GUARD)
        waiting = Submit(cluster, package, "wait", tmp_path, "--worker", "gpu5", "--timeout", "0",
                         RTCXFER_LOG_LEVEL="INFO")
        try:
            waiting.wait_for("worker gpu5 is draining")
            # Three times the server's idle limit and more: it registers again each time it must.
            waiting.wait_for("registering again in room wait", count=3)
            draining.process.send_signal(signal.SIGINT)
            assert wait_exit(draining) == 0
            successor = cluster.start_worker("wait", "--peer-id", "gpu5", name="worker-gpu5-again")
            assert waiting.finish() == EXIT_OK, waiting.text()
        finally:
            waiting.stop()
    finally:
        draining.stop()
        if successor is not None:
            successor.stop()
    text = waiting.text()
    assert "complete on worker gpu5" in waiting.stdout, text
    shown = "\n".join(line for line in text.splitlines() if " INFO " not in line)  # what a user sees
    assert "signaling connection closed" not in shown and "error" not in shown, shown
    # The server closed this client for idling once at most (before it learned the limit).
    assert text.count("the signaling connection ended") <= 1, text
    assert_clean(text)
