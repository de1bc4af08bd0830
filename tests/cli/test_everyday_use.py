"""The ``rtcxfer`` command as a user meets it, through the real command: no tracebacks, refusals in
plain words, progress and logs that say what happens, resume after Ctrl-C, configuration and
token files, directories as packages, nothing left behind.

A signaling server and a worker run as subprocesses on 127.0.0.1 for the module (the worker at
the default log level, as a user starts it); tests that stop a worker start their own. Every
process is stopped by its own pid. Timeouts are hang guards, never assertions about speed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rtcxfer.client.sample import build_sample_package
from rtcxfer.files.receiving import hash_file, part_name, transfer_id_for
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.job_files import job_package, results_dir_of
from rtcxfer.testing.processes import WORKER_READY, CliProcess, cli_command, describe, run_cli, start_cli
from tests.support.cli import REPO, environment
from tests.support.packages import bad_packages

TOKEN = f"newuser-{secrets.token_hex(8)}"
ROOM = "newuser"
GUARD = 120.0
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONNECTION, EXIT_WORKER_STOPPED = 0, 1, 2, 3, 75

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

#: What must never reach a user's terminal.
STRAY = ("Traceback", "Task exception was never retrieved", "InvalidStateError", "never awaited")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A signaling server and the main worker, with shared storage; the worker logs at the
    default level, as a user starts it."""
    root = tmp_path_factory.mktemp("newuser")
    shared = root / "shared"
    shared.mkdir()
    with start_cluster(root, token=TOKEN, env=environment(), shared=shared) as cluster:
        cluster.worker = cluster.start_worker(
            ROOM, "--shared-root", str(shared), name="worker-main", work_dir=work_dir(cluster)
        )
        yield cluster


def work_dir(lab: Cluster) -> Path:
    """The main worker's work directory."""
    return lab.root / "work"


def rtcxfer(
    lab: Cluster | None,
    *args: str,
    cwd: Path,
    env: dict | None = None,
    connect: bool = True,
    token: str | None = None,
    room: str = ROOM,
) -> subprocess.CompletedProcess[str]:
    """``rtcxfer ARGS`` in ``cwd``, connected to ``room`` of ``lab`` unless told not to."""
    connection = lab.connection_options(room, token) if connect and lab is not None else []
    return run_cli(*args, *connection, env=env or environment(), cwd=cwd, timeout=GUARD)


def assert_clean(text: str) -> None:
    for stray in STRAY:
        assert stray not in text, text[-4000:]


def start_submit(args: list[str], stderr: Path, cwd: Path) -> subprocess.Popen[str]:
    """``rtcxfer ARGS`` in the background, its stderr in the file ``stderr`` to watch."""
    with open(stderr, "w") as err:
        return start_cli(*args, env=environment(), cwd=cwd, stderr=err)


def wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"  # noqa: PT018
        time.sleep(0.05)


# --- fifty jobs, good and bad, leave no traceback in either terminal ------------------------------


def corrupt_body(path: Path) -> Path:
    """A package whose directory and manifest are fine but whose data fails its CRC: the client's
    check passes it, the worker's extraction refuses it."""
    build_sample_package(path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("data.txt")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    path.write_bytes(bytes(raw))
    return path


def unsafe_member(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rtcxfer.json", json.dumps({"command": ["python", "job.py"]}))
        archive.writestr("job.py", "print('never')\n")
        archive.writestr("../escape.txt", "outside")
    return path


def test_fifty_jobs_good_and_bad_leave_no_traceback_in_either_terminal(lab, tmp_path):
    worker = lab.start_worker("fifty", "--shared-root", str(lab.shared), name="worker-fifty")
    good = build_sample_package(tmp_path / "good.zip")
    random_bytes = tmp_path / "corrupt.zip"
    random_bytes.write_bytes(os.urandom(3000))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:2000])
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    kinds = [
        (good, ["--transport", "rtc-chunked"], EXIT_OK),
        (good, ["--transport", "direct"], EXIT_OK),
        (good, ["--shared-root", str(lab.shared)], EXIT_OK),
        (corrupt_body(tmp_path / "crc.zip"), [], EXIT_JOB_FAILED),
        (corrupt_body(tmp_path / "crc-shared.zip"), ["--shared-root", str(lab.shared)], EXIT_JOB_FAILED),
        (unsafe_member(tmp_path / "unsafe.zip"), [], EXIT_JOB_FAILED),
        (job_package(tmp_path / "fails.zip", "import sys\nsys.exit(3)\n"), [], EXIT_JOB_FAILED),
        (random_bytes, [], EXIT_USAGE),
        (truncated, [], EXIT_USAGE),
        (text, [], EXIT_USAGE),
    ]
    runs = [kinds[n % len(kinds)] for n in range(50)]

    def one(n: int) -> tuple[int, subprocess.CompletedProcess[str]]:
        package, extra, _ = runs[n]
        cwd = tmp_path / f"run-{n}"
        cwd.mkdir()
        return n, rtcxfer(lab, "submit", str(package), "--quiet", *extra, cwd=cwd, room="fifty")

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        finished = list(pool.map(one, range(50)))
    elapsed = time.monotonic() - started
    for n, run in finished:
        assert run.returncode == runs[n][2], f"run {n} ({runs[n][0].name}): {describe(run)}"
        assert_clean(run.stdout + run.stderr)
    worker.process.send_signal(signal.SIGINT)  # the worker's Ctrl-C, in its terminal
    assert worker.process.wait(GUARD) == 0
    log = worker.text()
    assert_clean(log)
    assert log.count(" done\n") == 15, log[-3000:]
    print(f"50 submits in {elapsed:.1f} s")


# --- the worker's shutdown is reported as such ----------------------------------------------------


def test_worker_stopped_during_a_job_is_reported_as_a_shutdown_not_a_cancel(lab, tmp_path):
    worker = lab.start_worker("shutdown", name="worker-shutdown")
    package = job_package(tmp_path / "slow.zip", "import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    stderr = tmp_path / "submit.err"
    client = start_submit(
        ["submit", str(package), "--signal", lab.url, "--room", "shutdown", "--token", TOKEN], stderr, tmp_path
    )
    try:
        wait_until(lambda: "| started" in stderr.read_text(), "job output")
        worker.process.send_signal(signal.SIGTERM)  # stops now (docker stop); Ctrl-C would drain first
        assert client.wait(GUARD) == EXIT_WORKER_STOPPED, stderr.read_text()
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(GUARD)
    text = stderr.read_text()
    assert "the worker was shut down by its operator while running job" in text, text
    assert "nothing is wrong with the job. Submit it again" in text and "cancelled nothing" not in text
    assert "was cancelled" not in text
    assert worker.process.wait(GUARD) == 0
    log = worker.text()
    assert "stopped: the worker is shutting down" in log
    assert "the client left; stopping job" not in log
    assert_clean(text + log)


# --- submit says at once what it waits for --------------------------------------------------------


def test_submit_says_at_once_which_room_it_waits_on_and_why_it_gave_up(lab, tmp_path):
    package = build_sample_package(tmp_path / "pkg.zip")
    run = rtcxfer(lab, "submit", str(package), "--timeout", "2", cwd=tmp_path, room="nobody-here")
    assert run.returncode == EXIT_CONNECTION, describe(run)
    first = run.stderr.splitlines()[0]
    assert first == f"rtcxfer: waiting for a worker in room 'nobody-here' (signaling {lab.url})"
    assert "no worker joined room 'nobody-here'" in run.stderr and "--timeout" in run.stderr
    assert "SignalingTimeoutError" not in run.stderr
    assert "\r" not in run.stderr  # not a terminal: no spinner frames


# --- a re-run resumes the upload ------------------------------------------------------------------


def big_package(path: Path, megabytes: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("rtcxfer.json", json.dumps({"command": ["python", "job.py"]}))
        archive.writestr(
            "job.py",
            "import hashlib, os, pathlib\n"
            "data = pathlib.Path('blob.bin').read_bytes()\n"
            "pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'], 'sha.txt').write_text(hashlib.sha256(data).hexdigest())\n",
        )
        with archive.open("blob.bin", "w") as blob:
            for _ in range(megabytes):
                blob.write(os.urandom(1 << 20))
    return path


def interrupt_upload(lab: Cluster, args: list[str], name: str, cwd: Path) -> int:
    """Run ``rtcxfer ARGS``, Ctrl-C it as soon as the first bytes of the package ``name``
    reach the worker, and return the size of the partial upload the worker kept."""
    stderr = cwd / "first.err"
    first = start_submit(args, stderr, cwd)
    try:
        deadline = time.monotonic() + GUARD
        # Direct moves a GiB a second on loopback: watch closely, and freeze the client at once.
        while not any(
            part.stat().st_size > 0
            for part in work_dir(lab).glob(f"session-*/job-*/incoming/.{name}.*.part")
            if part.exists()
        ):
            assert first.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)
        first.send_signal(signal.SIGINT)  # the user's Ctrl-C, handled once it runs again
        first.send_signal(signal.SIGCONT)
        assert first.wait(GUARD) == 130, stderr.read_text()
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(GUARD)
    kept = work_dir(lab) / "partial-uploads"
    wait_until(lambda: kept.is_dir() and any(kept.iterdir()), "kept partial upload")
    partial_size = sum(p.stat().st_size for p in kept.iterdir())
    wait_until(lambda: not list(work_dir(lab).glob("session-*")), "session directory removal")
    return partial_size


def test_a_rerun_after_ctrl_c_resumes_the_upload_and_leaves_no_session_directory(lab, tmp_path):
    package = big_package(tmp_path / "big.zip", 192)
    args = ["submit", str(package), "--signal", lab.url, "--room", ROOM, "--token", TOKEN, "--transport", "rtc-chunked"]
    partial_size = interrupt_upload(lab, args, "big.zip", tmp_path)
    assert 0 < partial_size < package.stat().st_size, "the first run must have been interrupted mid-upload"
    kept = work_dir(lab) / "partial-uploads"

    second = rtcxfer(lab, "submit", str(package), "--transport", "rtc-chunked", cwd=tmp_path)
    assert second.returncode == EXIT_OK, describe(second)
    assert re.search(r"-> big\.zip via rtc-chunked: 192\.\d MiB, resuming at \d+\.\d [KM]iB", second.stderr), (
        second.stderr
    )
    with zipfile.ZipFile(package) as archive:
        expected = hashlib.sha256(archive.read("blob.bin")).hexdigest()
    assert (results_dir_of(second, tmp_path) / "sha.txt").read_text() == expected
    assert not any(kept.iterdir()), "the adopted partial is gone (its directory stays, held by the worker)"


def test_bytes_planted_under_a_packages_upload_id_are_not_resumed_from(lab, tmp_path):
    """Another token holder who knows a package's name, size and SHA-256 can predict its upload
    id and leave bytes of its own under it (an upload it breaks off). The next upload of that
    package hears the hash of what is kept, sees it is not its file's start, and sends the file
    whole: the job runs (hardening round two, finding 9)."""
    package = big_package(tmp_path / "victim.zip", 8)
    size, sha256 = hash_file(package)
    upload_id = transfer_id_for("client", package.name, size, sha256)
    kept = work_dir(lab) / "partial-uploads"
    # What the attacker's broken-off upload leaves in the worker's kept partials.
    (kept / part_name(package.name, upload_id)).write_bytes(os.urandom(3 << 20))

    run = rtcxfer(lab, "submit", str(package), "--transport", "rtc-chunked", cwd=tmp_path)

    assert run.returncode == EXIT_OK, describe(run)
    assert "resuming at" not in run.stderr, run.stderr
    with zipfile.ZipFile(package) as archive:
        expected = hashlib.sha256(archive.read("blob.bin")).hexdigest()
    assert (results_dir_of(run, tmp_path) / "sha.txt").read_text() == expected
    assert not any(kept.iterdir())


# --- progress in both directions, plain when not a terminal ---------------------------------------


def test_progress_is_plain_records_every_transfer_both_ways_in_binary_units(lab, tmp_path):
    package = build_sample_package(tmp_path / "pkg.zip")
    run = rtcxfer(lab, "submit", str(package), "--transport", "rtc-chunked", cwd=tmp_path)
    assert run.returncode == EXIT_OK, describe(run)
    assert "\r" not in run.stderr
    assert re.search(r"^sent pkg\.zip via rtc-chunked: \d+\.\d KiB in \d+\.\d\d s \(.+/s\)$", run.stderr, re.M)
    assert re.search(r"^received summary\.txt via rtc-chunked: \d+ B in ", run.stderr, re.M)
    assert re.search(r"^received copy/data\.txt via rtc-chunked: 110\.2 KiB in ", run.stderr, re.M)
    assert "step/s" not in run.stderr and "MB/s" not in run.stderr
    assert re.search(r"complete on worker \S+: 2 files, 110\.3 KiB \(input via rtc-chunked", run.stdout), run.stdout
    assert_clean(run.stderr)


# --- the worker says what it does with each job ---------------------------------------------------


def test_the_worker_logs_each_job_at_the_default_level(lab, tmp_path):
    good = rtcxfer(lab, "submit", str(build_sample_package(tmp_path / "ok.zip")), "--quiet", cwd=tmp_path)
    assert good.returncode == EXIT_OK, describe(good)
    job = re.search(r"job (job-[0-9a-f]+) complete", good.stdout).group(1)
    bad = rtcxfer(
        lab, "submit", str(job_package(tmp_path / "bad.zip", "raise SystemExit(4)\n")), "--quiet", cwd=tmp_path
    )
    assert bad.returncode == EXIT_JOB_FAILED, describe(bad)
    failed = re.search(r"job (job-[0-9a-f]+)", bad.stderr, re.IGNORECASE).group(1)
    lab.worker.wait_for(rf"job {failed} failed")
    log = lab.worker.text()
    for line in (
        f"job {job} accepted",
        rf"job {job} input ok\.zip \(\d+ bytes\) via \S+",
        rf"job {job} ran \d+\.\d s",
        rf"job {job} results: 2 files, \d+ bytes via \S+",
        f"job {job} done",
        f"job {failed} accepted",
        rf"job {failed} ran \d+\.\d s",
        f"job {failed} failed: .*4",
    ):
        assert re.search(line, log), f"{line!r} not in:\n{log[-3000:]}"


# --- a bad package is refused before anything is sent ---------------------------------------------


def test_a_bad_package_is_refused_at_once_with_exit_2_and_the_reason(tmp_path):
    for kind, (path, reason) in bad_packages(tmp_path).items():
        # Nothing listens on port 9: a submit that tried to connect would exit 3.
        run = rtcxfer(None, "submit", str(path), "--signal", "ws://127.0.0.1:9", "--token", "t", cwd=tmp_path)
        assert run.returncode == EXIT_USAGE, f"{kind}: {describe(run)}"
        assert reason in run.stderr and "waiting for a worker" not in run.stderr, f"{kind}: {run.stderr}"


# --- every refusal says why and what to do --------------------------------------------------------


def test_refusals_say_why_and_what_to_do(lab, tmp_path):
    package = build_sample_package(tmp_path / "pkg.zip")
    no_root = rtcxfer(lab, "submit", str(package), "--transport", "shared-fs", cwd=tmp_path)
    assert no_root.returncode == EXIT_USAGE and "--shared-root" in no_root.stderr, describe(no_root)

    elsewhere = tmp_path / "not-the-workers-storage"
    elsewhere.mkdir()
    unseen = rtcxfer(
        lab, "submit", str(package), "--transport", "shared-fs", "--shared-root", str(elsewhere), cwd=tmp_path
    )
    assert unseen.returncode == EXIT_USAGE, describe(unseen)
    assert "its verdict:" in unseen.stderr and "--shared-root" in unseen.stderr, unseen.stderr

    s3 = rtcxfer(lab, "submit", str(package), "--transport", "s3", cwd=tmp_path)
    if importlib.util.find_spec("rtcxfer_s3") is not None:  # the README's install: there, not configured
        assert s3.returncode == EXIT_USAGE and "RTCXFER_S3_URL" in s3.stderr, describe(s3)
    else:  # rtcxfer alone (tox's environments): the plugin is not there, and what is
        assert s3.returncode == EXIT_USAGE, describe(s3)
        assert "no transport named 's3' is installed (installed: direct, rtc-chunked, shared-fs)" in s3.stderr

    wrong = rtcxfer(lab, "submit", str(package), cwd=tmp_path, token="not-the-token")
    assert wrong.returncode == EXIT_CONNECTION, describe(wrong)
    assert "signaling server" in wrong.stderr and "refused the room token" in wrong.stderr
    assert "no worker was tried" in wrong.stderr
    assert "WARNING" not in wrong.stderr and "<SignalingClient" not in wrong.stderr

    # Past the signaling server (its token right), refused by the worker itself.
    by_worker = rtcxfer(lab, "submit", str(package), "--signal-token", TOKEN, cwd=tmp_path, token="not-the-token")
    assert by_worker.returncode == EXIT_CONNECTION, describe(by_worker)
    assert "the worker refused this client" in by_worker.stderr and "--token" in by_worker.stderr

    twin = CliProcess(
        "worker-twin", ["worker", "--signal", lab.url, "--room", ROOM, "--token", TOKEN], lab.root, env=environment()
    )
    try:
        twin.wait_for(r"another peer is registered as 'worker'.*--peer-id")
    finally:
        twin.stop()

    doctor = rtcxfer(None, "doctor", "--shared-root", "/nonexistent", cwd=tmp_path, connect=False)
    assert doctor.returncode != 0 and "not a directory" in doctor.stdout, describe(doctor)


# --- the README's Python and the example run as written -------------------------------------------


def test_the_readme_python_snippet_and_the_example_run_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"From Python.*?```python\n(.*?)```", readme, re.S).group(1)
    assert snippet.count("token=token") == 2, "the token is given once to each peer"
    (tmp_path / "snippet.py").write_text(snippet)
    env = environment(TMPDIR=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "snippet.py"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=GUARD
    )
    assert run.returncode == 0 and run.stdout.startswith("True results/job-"), describe(run)
    example = subprocess.run(
        [sys.executable, str(REPO / "examples" / "worker_and_client.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=GUARD,
    )
    assert example.returncode == 0, describe(example)
    assert "summary.txt (95 bytes)" in example.stdout
    assert_clean(run.stderr + example.stderr)
    assert not list(tmp_path.glob("rtcxfer-worker-*")), "the worker's temporary directory is removed"


# --- no empty directories left; the token from a file or a configuration --------------------------


def test_no_empty_directories_are_left_on_shared_storage_or_in_tmp(lab, tmp_path):
    package = build_sample_package(tmp_path / "pkg.zip")  # outside the shared root: staged there
    run = rtcxfer(lab, "submit", str(package), "--quiet", "--shared-root", str(lab.shared), cwd=tmp_path)
    assert run.returncode == EXIT_OK and "via shared-fs" in run.stdout, describe(run)
    # Only the storage's identity marker stays (the worker's shared-root fingerprint).
    left = sorted(p.relative_to(lab.shared).as_posix() for p in lab.shared.rglob("*"))
    assert left in ([], [".rtcxfer", ".rtcxfer/storage-id"]), "no probes, rtcxfer-results or rtcxfer-staging"
    wait_until(lambda: not list(work_dir(lab).glob("session-*")), "session directory removal")

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    worker = lab.start_worker("tmpdir", name="worker-tmpdir", env=environment(TMPDIR=str(scratch)))
    assert list(scratch.glob("rtcxfer-worker-*"))
    worker.process.send_signal(signal.SIGINT)
    assert worker.process.wait(GUARD) == 0
    assert not list(scratch.iterdir()), "a stopped worker leaves nothing in TMPDIR"


def test_the_token_from_a_file_and_settings_from_rtcxfer_toml_with_flags_over_env_over_file(lab, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    package = build_sample_package(tmp_path / "pkg.zip")
    (tmp_path / "rtcxfer.toml").write_text(
        f'signal = "{lab.url}"\nroom = "{ROOM}"\ntoken-file = "{token_file}"\n\n[submit]\nquiet = true\n'
    )
    from_file = rtcxfer(None, "submit", str(package), cwd=tmp_path, connect=False)
    assert from_file.returncode == EXIT_OK, describe(from_file)
    assert from_file.stderr == "", "quiet = true came from the file"
    from_env = rtcxfer(
        None,
        "submit",
        str(package),
        "--timeout",
        "1",
        cwd=tmp_path,
        connect=False,
        env=environment(RTCXFER_ROOM="from-env"),
    )
    assert from_env.returncode == EXIT_CONNECTION and "room 'from-env'" in from_env.stderr, describe(from_env)
    from_flag = rtcxfer(
        None,
        "submit",
        str(package),
        "--room",
        ROOM,
        cwd=tmp_path,
        connect=False,
        env=environment(RTCXFER_ROOM="from-env"),
    )
    assert from_flag.returncode == EXIT_OK, describe(from_flag)
    both = rtcxfer(
        None, "submit", str(package), "--token", TOKEN, "--token-file", str(token_file), cwd=tmp_path, connect=False
    )
    assert both.returncode == EXIT_USAGE and "not both" in both.stderr, describe(both)

    worker = lab.start_worker("tokenfile", name="worker-tokenfile")  # --token given, to compare below
    worker.stop()
    by_file = CliProcess(
        "worker-by-file",
        ["worker", "--signal", lab.url, "--room", "tokenfile", "--token-file", str(token_file)],
        lab.root,
        env=environment(),
    )
    try:
        by_file.wait_for(WORKER_READY)
        with open(f"/proc/{by_file.process.pid}/cmdline", "rb") as handle:
            assert TOKEN.encode() not in handle.read(), "the token is not on the command line"
        run = rtcxfer(None, "submit", str(package), "--room", "tokenfile", cwd=tmp_path, connect=False)
        assert run.returncode == EXIT_OK, describe(run)
    finally:
        by_file.stop()


# --- a directory is sent as a package -------------------------------------------------------------


def test_submit_a_directory_packs_it_and_brings_results_back(lab, tmp_path):
    job = tmp_path / "my-job"
    (job / "inputs").mkdir(parents=True)
    (job / "rtcxfer.json").write_text(json.dumps({"command": ["python", "main.py"]}))
    (job / "main.py").write_text(
        "import os, pathlib\n"
        "text = pathlib.Path('inputs/words.txt').read_text()\n"
        "pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'], 'count.txt').write_text(str(len(text.split())))\n"
    )
    (job / "inputs" / "words.txt").write_text("one two three four\n")
    cache = tmp_path / "packs"
    run = rtcxfer(lab, "submit", str(job), "--quiet", "--pack-cache", str(cache), cwd=tmp_path)
    assert run.returncode == EXIT_OK, describe(run)
    assert (results_dir_of(run, tmp_path) / "count.txt").read_text() == "4"
    assert "earlier pack" not in run.stderr
    (pack,) = cache.glob("*/my-job.zip")
    again = rtcxfer(lab, "submit", str(job), cwd=tmp_path, env=environment(RTCXFER_PACK_CACHE=str(cache)))
    assert again.returncode == EXIT_OK, describe(again)
    assert f"rtcxfer: my-job is unchanged: sending its earlier pack {pack}\n" in again.stderr
    quiet = rtcxfer(lab, "submit", str(job), "--quiet", "--pack-cache", str(cache), cwd=tmp_path)
    assert quiet.returncode == EXIT_OK and "earlier pack" not in quiet.stderr, describe(quiet)
    assert list(cache.glob("*/my-job.zip")) == [pack]
    plain = tmp_path / "plain"
    plain.mkdir()
    refused = rtcxfer(lab, "submit", str(plain), "--pack-cache", str(cache), cwd=tmp_path)
    assert refused.returncode == EXIT_USAGE and "without rtcxfer.json" in refused.stderr, describe(refused)


def test_the_pack_cache_comes_from_the_configuration_and_an_unsafe_one_is_refused_saying_why(tmp_path):
    job = tmp_path / "cfg-job"
    job.mkdir()
    (job / "rtcxfer.json").write_text(json.dumps({"command": ["python", "main.py"]}))
    configured = tmp_path / "configured-packs"
    (tmp_path / "rtcxfer.toml").write_text(f'signal = "ws://127.0.0.1:9"\n[submit]\npack-cache = "{configured}"\n')
    # Nothing listens on port 9: the submit packs, then cannot connect (exit 3).
    run = rtcxfer(None, "submit", str(job), "--timeout", "1", "--token", "t", cwd=tmp_path, connect=False)
    assert run.returncode == EXIT_CONNECTION, describe(run)
    assert len(list(configured.glob("*/cfg-job.zip"))) == 1
    assert stat.S_IMODE(configured.stat().st_mode) == 0o700

    open_to_all = tmp_path / "open-packs"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    args = ["submit", str(job), "--timeout", "1", "--token", "t", "--pack-cache", str(open_to_all)]
    refused = rtcxfer(None, *args, cwd=tmp_path, connect=False)
    assert refused.returncode == EXIT_CONNECTION, describe(refused)
    assert "may be written by other users" in refused.stderr and "packing for this run only" in refused.stderr
    assert not list(open_to_all.iterdir())
    no_cache = rtcxfer(None, *args[:-2], "--no-pack-cache", cwd=tmp_path, connect=False)
    assert no_cache.returncode == EXIT_CONNECTION and "pack cache" not in no_cache.stderr, describe(no_cache)
    assert len(list(configured.glob("*/cfg-job.zip"))) == 1
    assert_clean(run.stderr + refused.stderr + no_cache.stderr)


def test_an_interrupted_submit_of_a_directory_resumes_over_direct_on_the_next_run(lab, tmp_path):
    job = tmp_path / "bigdir"
    job.mkdir()
    (job / "rtcxfer.json").write_text(json.dumps({"command": ["python", "job.py"]}))
    (job / "job.py").write_text(
        "import hashlib, os, pathlib\n"
        "data = pathlib.Path('blob.bin').read_bytes()\n"
        "pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'], 'sha.txt').write_text(hashlib.sha256(data).hexdigest())\n"
    )
    blob = os.urandom(96 << 20)  # random: the pack is as large, so the upload takes a while
    (job / "blob.bin").write_bytes(blob)
    cache = tmp_path / "packs"
    args = ["submit", str(job), "--signal", lab.url, "--room", ROOM, "--token", TOKEN, "--transport", "direct"]
    args += ["--pack-cache", str(cache)]
    partial_size = interrupt_upload(lab, args, "bigdir.zip", tmp_path)
    (pack,) = cache.glob("*/bigdir.zip")
    packed = pack.stat()
    assert 0 < partial_size < packed.st_size, "the first run must have been interrupted mid-upload"
    kept = work_dir(lab) / "partial-uploads"

    second = rtcxfer(lab, "submit", str(job), "--transport", "direct", "--pack-cache", str(cache), cwd=tmp_path)
    assert second.returncode == EXIT_OK, describe(second)
    assert "bigdir is unchanged: sending its earlier pack" in second.stderr, second.stderr
    resumed = r"-> bigdir\.zip via direct: \d+\.\d MiB, resuming at \d+\.\d [KM]iB"
    assert re.search(resumed, second.stderr), second.stderr
    whole = rf"{packed.st_size / (1 << 20):.1f} MiB"
    sent = re.search(
        rf"^sent bigdir\.zip via direct: {whole} \(\d+\.\d [KM]iB resumed, (\d+\.\d) MiB sent\)", second.stderr, re.M
    )
    assert sent and float(sent.group(1)) * (1 << 20) < packed.st_size - partial_size + (1 << 20), second.stderr
    assert (results_dir_of(second, tmp_path) / "sha.txt").read_text() == hashlib.sha256(blob).hexdigest()
    again = pack.stat()
    assert (again.st_ino, again.st_mtime_ns) == (packed.st_ino, packed.st_mtime_ns), "the very same file was sent"
    assert not any(kept.iterdir()), "the adopted partial is gone (its directory stays, held by the worker)"
    print(f"interrupted at {partial_size} of {packed.st_size} bytes; the re-run sent {sent.group(1)} MiB")


# --- on a terminal: a spinner while waiting, bars that reach 100 % --------------------------------


def run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """``args`` with stdin, stdout and stderr on a pseudo-terminal; its exit code and output."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=environment(), cwd=cwd)
    os.close(follower)
    output = bytearray()
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            output += chunk
        return process.wait(GUARD), output.decode(errors="replace")
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait(GUARD)


def test_on_a_terminal_a_spinner_while_waiting_and_bars_that_end_at_100_percent(lab, tmp_path):
    package = build_sample_package(tmp_path / "pkg.zip")
    base = cli_command("submit", str(package), "--signal", lab.url, "--token", TOKEN)
    code, waiting = run_on_a_terminal([*base, "--room", "nobody-on-a-tty", "--timeout", "1.5"], tmp_path)
    assert code == EXIT_CONNECTION, waiting
    assert re.search(r"\r[|/\\-] waiting for a worker in room 'nobody-on-a-tty'", waiting), waiting

    code, output = run_on_a_terminal([*base, "--room", ROOM, "--transport", "rtc-chunked"], tmp_path)
    assert code == EXIT_OK, output
    assert re.search(r"-> pkg\.zip via rtc-chunked: 100%", output), output
    assert re.search(r"<- copy/data\.txt via rtc-chunked: 100%", output), output
    assert re.search(r"job job-[0-9a-f]+: 100%.*2000/2000", output), output
    assert "sent pkg.zip via rtc-chunked: " in output and "received copy/data.txt via rtc-chunked: " in output
    assert "step/s" not in output and "it/s" not in output
    assert_clean(output)
