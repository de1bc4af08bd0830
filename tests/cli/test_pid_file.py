"""``rtcxfer worker --drain --pid-file FILE`` signals only the worker that wrote FILE, never
whatever process holds that number now (hardening round two, from use: a stale file's pid was a
``sleep``, and ``--drain`` killed it)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.cli.pid_file import PidFileError, ProcessIdentity, identity_of, read_pid_file
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.processes import run_cli
from tests.support.cli import environment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and pidfds")

GUARD = 60.0


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """Someone else's process, which a stale pid file may name now."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def drain(pid_file: Path) -> subprocess.CompletedProcess[str]:
    command = ("worker", "--drain", "--pid-file", str(pid_file))
    return run_cli(*command, env=environment(), cwd=pid_file.parent, timeout=GUARD)


def still_running(process: subprocess.Popen) -> bool:
    time.sleep(0.2)  # a signal, had one been sent, has arrived by now
    return process.poll() is None


def test_a_bare_pid_of_another_process_is_not_signalled(tmp_path, bystander):
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text(f"{bystander.pid}\n")  # as an older version wrote it, or anyone

    refused = drain(pid_file)

    assert refused.returncode == 1, refused.stderr
    assert "was not written by `rtcxfer worker --pid-file`" in refused.stderr
    assert "nothing signalled" in refused.stderr
    assert still_running(bystander)


def test_a_pid_now_held_by_another_process_is_not_signalled(tmp_path, bystander):
    worker_that_was = identity_of(bystander.pid)
    pid_file = tmp_path / "worker.pid"
    # The worker that wrote it had this number; the process holding it now started later.
    earlier = ProcessIdentity(bystander.pid, worker_that_was.start_ticks - 100, worker_that_was.boot_id)
    pid_file.write_text(f"{earlier.pid}\n{earlier.line()}\n")

    refused = drain(pid_file)

    assert refused.returncode == 1, refused.stderr
    assert f"pid {bystander.pid} is another process now" in refused.stderr and "Remove the stale file" in refused.stderr
    assert still_running(bystander)


def test_the_exact_identity_of_a_process_that_is_not_a_worker_is_not_enough(tmp_path, bystander):
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text(f"{bystander.pid}\n{identity_of(bystander.pid).line()}\n")

    refused = drain(pid_file)

    assert refused.returncode == 1 and "is not an rtcxfer worker" in refused.stderr, refused.stderr
    assert still_running(bystander)


def test_a_pid_no_process_holds_says_the_worker_is_gone(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text(f"{finished.pid}\nrtcxfer-worker start=1 boot=0123-abcd\n")

    refused = drain(pid_file)

    assert refused.returncode == 1 and "is no longer running" in refused.stderr, refused.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(tmp_path_factory.mktemp("pid-file"), token="pid-file-token", env=environment("INFO")) as cluster:
        yield cluster


def test_the_worker_that_wrote_the_file_is_drained_and_removes_the_file_when_it_stops(cluster):
    pid_file = cluster.root / "gpu.pid"
    worker = cluster.start_worker("pids", "--pid-file", str(pid_file), name="worker-pid-file")
    try:
        written = read_pid_file(pid_file)
        assert written == identity_of(worker.process.pid)
        drained = drain(pid_file)
        assert drained.returncode == 0, drained.stderr
        assert f"asked worker {written.pid} to drain" in drained.stderr
        worker.wait_for("draining: running jobs finish", timeout=GUARD)
    finally:
        worker.stop()
    assert not pid_file.exists()


@pytest.mark.slow
def test_the_pid_file_of_a_killed_worker_whose_pid_is_now_a_sleep_is_refused_and_the_sleep_lives(cluster, tmp_path):
    """The issue's case: a worker that could not remove its file (killed), and its pid taken by a
    ``sleep`` started since: ``--drain`` refuses, says why, and signals nothing."""
    pid_file = tmp_path / "gpu.pid"
    worker = cluster.start_worker("killed", "--pid-file", str(pid_file), name="worker-killed")
    worker.kill()  # SIGKILL: no chance to remove the file
    left = pid_file.read_text()
    assert left.startswith(f"{worker.process.pid}\n"), left

    gone = drain(pid_file)
    assert gone.returncode == 1, gone.stderr
    assert f"the worker that wrote {pid_file} is no longer running (pid {worker.process.pid} is unused)" in gone.stderr

    sleep = subprocess.Popen(["sleep", "300"])  # started after the worker, as a process reusing its pid is
    try:
        # The kernel hands the number on: the file is as the worker left it, but its pid is the sleep's now.
        pid_file.write_text(left.replace(str(worker.process.pid), str(sleep.pid), 1))
        refused = drain(pid_file)

        assert refused.returncode == 1, refused.stderr
        assert f"(pid {sleep.pid} is another process now: sleep 300); nothing signalled" in refused.stderr
        assert "Remove the stale file" in refused.stderr and "asked worker" not in refused.stderr
        assert still_running(sleep)
    finally:
        sleep.kill()
        sleep.wait()


@given(st.text(max_size=200))
def test_any_pid_file_text_is_read_or_refused_with_a_pid_file_error(tmp_path_factory, text):
    pid_file = tmp_path_factory.mktemp("garbage") / "worker.pid"
    pid_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        identity = read_pid_file(pid_file)
    except PidFileError:
        return
    assert identity.line() in text and str(identity.start_ticks) in text
