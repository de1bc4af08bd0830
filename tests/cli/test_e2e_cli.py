"""End to end: ``rtcxfer signal`` and ``rtcxfer worker`` as real subprocesses, ``rtcxfer submit``
run against them, results compared byte for byte.

Everything listens on 127.0.0.1 only (the CLI's default peer options are loopback-only). Every
process a test starts is stopped by its own pid at teardown; nothing is killed by name.
Timeouts here are hang guards, never assertions about speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.job_files import expected_sample_results, files_under, job_package, results_dir_of
from rtcxfer.testing.processes import COMMAND_GUARD, DEATH_GUARD, SIGNALING_READY, CliProcess, describe
from tests.support.cli import environment
from tests.support.small_disk import bind_mount

TOKEN = f"e2e-{secrets.token_hex(8)}"
MAIN_ROOM = "e2e-main"

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONNECTION, EXIT_CANCELLED = 0, 1, 2, 3, 130
#: The jobs' own timeout: a hang guard for jobs meant to end by themselves or be stopped.
JOB_GUARD = 120

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")]


# --- processes ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["rtcxfer-only", "legacy-on"])
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The module's signaling server and main worker, with shared storage; with ``legacy-on`` the
    workers also serve sleap-rtc's legacy protocol (an rtcxfer client must see no difference)."""
    root = tmp_path_factory.mktemp("e2e")
    shared = root / "shared"
    shared.mkdir()
    options = ["--shared-root", str(shared), *(["--legacy"] if request.param else [])]
    with start_cluster(
        root, token=TOKEN, env=environment(), service_env=environment("INFO"), worker_options=options, shared=shared
    ) as cluster:
        cluster.worker = start_worker(cluster, MAIN_ROOM, name="worker-main")
        yield cluster


def start_worker(cluster: Cluster, room: str, name: str | None = None) -> CliProcess:
    return cluster.start_worker(room, name=name, work_dir=cluster.root / f"work-{room}")


# --- submitting -----------------------------------------------------------------------


def submit_options(
    cluster: Cluster,
    results: Path,
    *,
    shared_root: Path | None = None,
    transport: str | None = None,
    quiet: bool = True,
) -> list[str]:
    options = ["--results", str(results), "--shared-root", str(shared_root or cluster.shared), "--timeout", "30"]
    if transport is not None:
        options += ["--transport", transport]
    if quiet:
        options.append("--quiet")
    return options


def submit(
    cluster: Cluster, package: Path, results: Path, *, room: str = MAIN_ROOM, token: str | None = None, **options
) -> subprocess.CompletedProcess[str]:
    return cluster.submit(package, *submit_options(cluster, results, **options), room=room, token=token)


def start_submit(
    cluster: Cluster, package: Path, results: Path, *, room: str = MAIN_ROOM, **options
) -> subprocess.Popen[str]:
    return cluster.start_submit(package, *submit_options(cluster, results, **options), room=room)


def assert_no_leftovers(results: Path) -> None:
    """Nothing half-written: no staging directory, and nothing else unless it is complete."""
    if results.exists():
        partial = [p.name for p in results.iterdir() if p.name.endswith(".partial")]
        assert not partial, f"half-written results left in {results}: {partial}"


def assert_sample_ok(run: subprocess.CompletedProcess[str], data: bytes, results: Path) -> Path:
    assert run.returncode == EXIT_OK, describe(run)
    final = results_dir_of(run)
    assert final.parent == results.resolve() or final.parent == results, describe(run)
    assert files_under(final) == expected_sample_results(data)
    assert_no_leftovers(results)
    return final


def unique_data(tag: str, lines: int = 500) -> bytes:
    return f"# {tag} {secrets.token_hex(8)}\n".encode() + sample_text(lines)


def sample_package(path: Path, data: bytes) -> Path:
    return build_sample_package(path, data=data)


def assert_worker_serves(cluster: Cluster, tag: str, room: str = MAIN_ROOM) -> None:
    """The worker is ready for the next job: a fresh sample job round-trips."""
    data = unique_data(tag, 50)
    package = sample_package(cluster.root / "packages" / f"{tag}-next.zip", data)
    results = cluster.root / "results" / f"{tag}-next"
    assert_sample_ok(submit(cluster, package, results, room=room), data, results)


def is_dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (it runs no more code either way)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_dead(pids: list[int], timeout: float = DEATH_GUARD) -> list[int]:
    """The pids still alive after ``timeout`` seconds (empty once all are gone)."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if not is_dead(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if not is_dead(pid)]
    return alive


def wait_for_file(path: Path, process: subprocess.Popen[str] | None = None, timeout: float = COMMAND_GUARD) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if text.endswith("\n"):
                return text
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"submit ended ({process.returncode}) before {path.name} appeared:\n{out}\n{err}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout} s")


#: A job that records the pids of itself and of a child in its process group, then sleeps.
SLEEPER = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open({pid_file!r} + ".tmp", "w") as handle:
    handle.write(f"{{os.getpid()}} {{child.pid}}\\n")
os.replace({pid_file!r} + ".tmp", {pid_file!r})
print("sleeper: running", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def sleeper_job(cluster: Cluster, tag: str) -> Iterator[tuple[Path, Path]]:
    """A package whose job sleeps; yields (package, pid file). Its processes never outlive the test."""
    pid_file = cluster.shared / "pids" / f"{tag}.pids"
    pid_file.parent.mkdir(exist_ok=True)
    package = job_package(
        cluster.root / "packages" / f"{tag}.zip", SLEEPER.format(pid_file=str(pid_file)), timeout_seconds=JOB_GUARD
    )
    try:
        yield package, pid_file
    finally:
        if pid_file.exists():
            for pid in map(int, pid_file.read_text().split()):
                # The job's own process group, started by our worker: only if a test failed.
                if not is_dead(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def stop_submit(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=DEATH_GUARD)


# --- transports -----------------------------------------------------------------------


def test_shared_fs_forced(cluster: Cluster) -> None:
    data = unique_data("shared-fs")
    package = sample_package(cluster.shared / "jobs" / "shared-fs.zip", data)
    results = cluster.root / "results" / "shared-fs"
    run = submit(cluster, package, results, transport="shared-fs")
    final = assert_sample_ok(run, data, results)
    assert "input via shared-fs, results via shared-fs" in run.stdout
    # The worker's copy of the results on shared storage was collected, then removed.
    assert not (cluster.shared / "rtcxfer-results" / final.name).exists()


def test_rtc_chunked_forced(cluster: Cluster) -> None:
    data = unique_data("rtc-chunked", 5000)
    package = sample_package(cluster.root / "packages" / "rtc-chunked.zip", data)
    results = cluster.root / "results" / "rtc-chunked"
    run = submit(cluster, package, results, transport="rtc-chunked")
    assert_sample_ok(run, data, results)
    assert "input via rtc-chunked, results via rtc-chunked" in run.stdout


def test_automatic_prefers_shared_fs(cluster: Cluster) -> None:
    # Outside the shared root: the client stages a copy there and removes it afterwards.
    data = unique_data("automatic")
    package = sample_package(cluster.root / "packages" / "automatic.zip", data)
    results = cluster.root / "results" / "automatic"
    run = submit(cluster, package, results)
    assert_sample_ok(run, data, results)
    assert "input via shared-fs, results via shared-fs" in run.stdout
    staging = cluster.shared / "rtcxfer-staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.rglob("*"))


def test_fallback_when_worker_sees_other_storage(cluster: Cluster) -> None:
    # The client's "shared" root is not the worker's: the probe fails, shared-fs is not used.
    elsewhere = cluster.root / "not-shared"
    elsewhere.mkdir()
    data = unique_data("probe-mismatch")
    package = sample_package(elsewhere / "jobs" / "probe-mismatch.zip", data)
    results = cluster.root / "results" / "probe-mismatch"
    run = submit(cluster, package, results, shared_root=elsewhere, quiet=False)
    assert_sample_ok(run, data, results)
    assert "input via direct, results via direct" in run.stdout
    assert "shared-fs is not usable between these peers" in run.stderr


def test_fallback_when_package_corrupted_in_place(cluster: Cluster) -> None:
    """The worker's view of the package on shared storage is corrupted (think of a stale NFS
    cache) while the client's is intact: the worker answers PATH_ERROR::File corrupted..., and
    the client retries over rtc-chunked with its own good bytes.

    The client's root is a directory of its own whose ``.rtcxfer`` is the worker's (bind-mounted:
    a link there is refused, as one planted by another user would be), so the session probe
    verifies, while ``jobs/<name>.zip`` differs between the two views.
    """
    view = cluster.root / "client-view"
    (cluster.shared / ".rtcxfer" / "probes").mkdir(parents=True, exist_ok=True)
    (view / ".rtcxfer").mkdir(parents=True)
    with bind_mount(cluster.shared / ".rtcxfer", view / ".rtcxfer"):
        corrupted_in_place(cluster, view)


def corrupted_in_place(cluster: Cluster, view: Path) -> None:
    data = unique_data("corrupted", 3000)
    good = sample_package(view / "jobs" / "corrupted.zip", data)
    corrupted = bytearray(good.read_bytes())
    middle = len(corrupted) // 2
    corrupted[middle : middle + 64] = bytes(b ^ 0xFF for b in corrupted[middle : middle + 64])
    (cluster.shared / "jobs").mkdir(exist_ok=True)
    (cluster.shared / "jobs" / "corrupted.zip").write_bytes(corrupted)
    results = cluster.root / "results" / "corrupted"
    run = submit(cluster, good, results, shared_root=view, quiet=False)
    assert_sample_ok(run, data, results)
    assert "input via rtc-chunked, results via rtc-chunked" in run.stdout
    assert "File corrupted or invalid format: jobs/corrupted.zip" in run.stderr
    assert "retrying over rtc-chunked" in run.stderr


# --- jobs that go wrong -----------------------------------------------------------------

FAILING = """\
import sys
for n in range(30):
    print(f"step {n}", flush=True)
print("about to fail: the answer is not 42", flush=True)
sys.exit(3)
"""


def test_failing_job(cluster: Cluster) -> None:
    package = job_package(cluster.root / "packages" / "failing.zip", FAILING, timeout_seconds=JOB_GUARD)
    results = cluster.root / "results" / "failing"
    run = submit(cluster, package, results)
    assert run.returncode == EXIT_JOB_FAILED, describe(run)
    assert "exited with code 3" in run.stderr
    assert "about to fail: the answer is not 42" in run.stderr
    assert "step 29" in run.stderr
    assert not results.exists() or not any(results.iterdir())
    assert_worker_serves(cluster, "after-failing")


HANGING = """\
import time
print("hanging: going to sleep", flush=True)
time.sleep(600)
"""


def test_hanging_job_times_out(cluster: Cluster) -> None:
    package = job_package(cluster.root / "packages" / "hanging.zip", HANGING, timeout_seconds=2)
    results = cluster.root / "results" / "hanging"
    run = submit(cluster, package, results)
    assert run.returncode == EXIT_JOB_FAILED, describe(run)
    assert "timed out after 2 s" in run.stderr
    assert "hanging: going to sleep" in run.stderr
    assert not results.exists() or not any(results.iterdir())
    assert_worker_serves(cluster, "after-hanging")


FLOODING = """\
import os, pathlib, sys
write = sys.stdout.write
for n in range(200_000):
    write(f"flood line {n} with some padding to make it longer\\n")
sys.stdout.flush()
pathlib.Path(os.environ["RTCXFER_OUTPUT_DIR"], "flood.txt").write_text("survived the flood\\n")
"""


def test_flooding_job(cluster: Cluster) -> None:
    package = job_package(cluster.root / "packages" / "flooding.zip", FLOODING, timeout_seconds=JOB_GUARD)
    results = cluster.root / "results" / "flooding"
    # Not quiet: the client draws every line it gets and must still keep up.
    run = submit(cluster, package, results, quiet=False)
    assert run.returncode == EXIT_OK, describe(run)
    assert files_under(results_dir_of(run)) == {"flood.txt": b"survived the flood\n"}
    assert "flood line 0 " in run.stderr
    # Not every line crosses the wire, but the user is told, and sees how the output ended.
    assert re.search(r"\[rtcxfer\] \d+ lines of output were not forwarded", run.stderr), describe(run)
    assert "flood line 199999 " in run.stderr
    assert_no_leftovers(results)
    assert_worker_serves(cluster, "after-flooding")


def _zip(path: Path, members: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


@pytest.mark.parametrize(
    ("kind", "members", "message"),
    [
        ("no-manifest", {"job.py": "print('hi')\n"}, "has no rtcxfer.json"),
        ("broken-manifest", {"rtcxfer.json": '{"command": ["python", "job.py"', "job.py": ""}, "not valid JSON"),
        ("bad-command", {"rtcxfer.json": json.dumps({"command": []})}, "command must be a non-empty list"),
        ("not-a-zip", {}, "is not a ZIP file"),
    ],
)
def test_unusable_package(cluster: Cluster, kind: str, members: dict[str, str], message: str) -> None:
    """Refused by the client before anything is sent: exit 2, with the reason."""
    path = cluster.root / "packages" / f"{kind}.zip"
    if members:
        _zip(path, members)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"this is not a zip file\n" * 100)
    results = cluster.root / "results" / kind
    run = submit(cluster, path, results)
    assert run.returncode == EXIT_USAGE, describe(run)
    assert message in run.stderr, describe(run)
    assert "Traceback" not in run.stderr, describe(run)
    assert not results.exists() or not any(results.iterdir())


def test_wrong_token(cluster: Cluster) -> None:
    data = unique_data("wrong-token", 20)
    package = sample_package(cluster.root / "packages" / "wrong-token.zip", data)
    results = cluster.root / "results" / "wrong-token"
    run = submit(cluster, package, results, token="not-the-token")
    assert run.returncode == EXIT_CONNECTION, describe(run)
    assert "token" in run.stderr.lower(), describe(run)
    assert "Traceback" not in run.stderr, describe(run)
    assert not results.exists() or not any(results.iterdir())
    assert_worker_serves(cluster, "after-wrong-token")


def test_wrong_token_refused_by_the_worker(cluster: Cluster) -> None:
    # A signaling server that admits anyone, so the token reaches the worker's own check.
    open_signal = cluster.start("signal-open", "signal", "--port", "0")
    url = open_signal.wait_for(SIGNALING_READY).group(1)
    room = "e2e-open"
    # Its worker is the same but for the legacy protocol; it shares the module's processes.
    guarded = attrs.evolve(cluster, url=url, worker_options=["--shared-root", str(cluster.shared)])
    start_worker(guarded, room)
    data = unique_data("worker-token", 20)
    package = sample_package(cluster.root / "packages" / "worker-token.zip", data)
    results = cluster.root / "results" / "worker-token"
    run = submit(guarded, package, results, room=room, token="not-the-token")
    assert run.returncode == EXIT_CONNECTION, describe(run)
    assert "refused this client: invalid token" in run.stderr, describe(run)
    assert not results.exists() or not any(results.iterdir())
    assert_worker_serves(guarded, "after-worker-token", room=room)


# --- interruptions ----------------------------------------------------------------------


def test_cancelled_job(cluster: Cluster) -> None:
    results = cluster.root / "results" / "cancelled"
    with sleeper_job(cluster, "cancelled") as (package, pid_file):
        process = start_submit(cluster, package, results)
        try:
            pids = [int(p) for p in wait_for_file(pid_file, process).split()]
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=COMMAND_GUARD)
        finally:
            stop_submit(process)
        assert process.returncode == EXIT_CANCELLED, f"{process.returncode}\n{out}\n{err}"
        assert "cancelled" in err
        assert wait_dead(pids) == [], "the job's process group outlived the cancel"
    assert_no_leftovers(results)
    assert not results.exists() or not any(results.iterdir())
    assert_worker_serves(cluster, "after-cancel")


def test_client_killed_mid_job(cluster: Cluster) -> None:
    results = cluster.root / "results" / "client-killed"
    with sleeper_job(cluster, "client-killed") as (package, pid_file):
        process = start_submit(cluster, package, results)
        try:
            pids = [int(p) for p in wait_for_file(pid_file, process).split()]
            process.kill()
            process.communicate(timeout=DEATH_GUARD)
        finally:
            stop_submit(process)
        # The worker only learns of it from the network: allow for its detection.
        assert wait_dead(pids, timeout=COMMAND_GUARD / 2) == [], "the job outlived its client"
    # Killed while its job ran: it had not started receiving results, so it left nothing.
    assert not results.exists() or not any(results.iterdir()), list(results.iterdir())
    assert_worker_serves(cluster, "after-client-killed")


def test_worker_killed_mid_job(cluster: Cluster) -> None:
    room = "e2e-doomed"
    doomed = start_worker(cluster, room)
    results = cluster.root / "results" / "worker-killed"
    with sleeper_job(cluster, "worker-killed") as (package, pid_file):
        process = start_submit(cluster, package, results, room=room, transport="rtc-chunked")
        try:
            wait_for_file(pid_file, process)
            doomed.kill()
            out, err = process.communicate(timeout=COMMAND_GUARD)
        finally:
            stop_submit(process)
    assert process.returncode not in (EXIT_OK, None), f"{process.returncode}\n{out}\n{err}"
    assert "worker" in err.lower() and "Traceback" not in err, err
    assert not results.exists() or not any(results.iterdir()), list(results.iterdir())


# --- concurrency ------------------------------------------------------------------------


def test_four_clients_at_once(cluster: Cluster) -> None:
    cases = []
    for n, transport in enumerate(["shared-fs", "rtc-chunked", None, "rtc-chunked"]):
        data = unique_data(f"parallel-{n}", 1000 + 500 * n)
        package = sample_package(cluster.root / "packages" / f"parallel-{n}.zip", data)
        cases.append((data, package, cluster.root / "results" / f"parallel-{n}", transport))
    with ThreadPoolExecutor(len(cases)) as pool:
        runs = list(pool.map(lambda c: submit(cluster, c[1], c[2], transport=c[3]), cases))
    for run, (data, _, results, _) in zip(runs, cases):
        assert_sample_ok(run, data, results)
