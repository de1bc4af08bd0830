"""What ``rtcxfer submit`` and its neighbours show and say, through the real command (issue 24,
points 6 to 10): packing shown, a manifest typo named against the user's own file, a resumed
upload shown as one on a terminal, ``--json``'s time, exit status and transports, token
messages that tell a missing token from a wrong one, a client that left logged as such, the web
page's address as ``--signal``, the default worker's name, ``workers`` sorted.

A signaling server and a worker (the default peer id, logging at INFO) run as subprocesses on
127.0.0.1 for the module; every process is stopped by its own pid. Timeouts are hang guards;
the only time compared with a figure is a wait the test itself imposed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtcxfer.cli.progress import format_size
from rtcxfer.client.sample import build_sample_package
from rtcxfer.protocol.manifest import MANIFEST_KEYS
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.job_files import job_package
from rtcxfer.testing.processes import cli_command, describe, run_cli, start_cli
from tests.cli.test_everyday_use import big_package, interrupt_upload, run_on_a_terminal, wait_until
from tests.support.cli import environment

TOKEN = f"output-{secrets.token_hex(8)}"
ROOM = "output"
GUARD = 120.0
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONNECTION, EXIT_CANCELLED = 0, 1, 2, 3, 130

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A signaling server and a worker with the default peer id, logging at INFO, its work
    directory ``root/work`` (where :func:`interrupt_upload` watches an upload arrive)."""
    root = tmp_path_factory.mktemp("output")
    with start_cluster(root, token=TOKEN, env=environment(), service_env=environment("INFO")) as cluster:
        cluster.worker = cluster.start_worker(ROOM, name="worker-default-id", work_dir=root / "work")
        yield cluster


def rtcxfer(lab: Cluster, *args: str, cwd: Path, connect: bool = True) -> subprocess.CompletedProcess[str]:
    """``rtcxfer ARGS`` in ``cwd``, connected to the lab's room unless told not to."""
    connection = lab.connection_options(ROOM) if connect else []
    return run_cli(*args, *connection, env=environment(), cwd=cwd, timeout=GUARD)


def gated_job(path: Path, gate: Path, running: Path, *, ignore_sigterm: bool = False) -> Path:
    """A job that says it runs (the file ``running``) and then waits until ``gate`` exists."""
    program = "import pathlib, signal, time\n"
    if ignore_sigterm:  # a cancelled job that takes the worker's whole kill grace to stop
        program += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    program += (
        f"pathlib.Path({str(running)!r}).write_text('running')\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n"
        "    time.sleep(0.05)\n"
    )
    return job_package(path, program, timeout_seconds=GUARD)


# --- point 6: packing is shown; a manifest typo is the user's file's -----------------------------


def test_packing_a_directory_is_shown_and_a_manifest_typo_is_named_against_the_directorys_file(lab, tmp_path):
    job = tmp_path / "my-job"
    job.mkdir()
    (job / "rtcxfer.json").write_text(json.dumps({"command": ["python", "main.py"]}))
    (job / "main.py").write_text("print('packed and run')\n")
    (job / "blob.bin").write_bytes(os.urandom(24 << 20))
    size = format_size(sum(path.stat().st_size for path in job.iterdir()))
    cache = tmp_path / "packs"

    run = rtcxfer(lab, "submit", str(job), "--pack-cache", str(cache), cwd=tmp_path)
    assert run.returncode == EXIT_OK, describe(run)
    lines = run.stderr.splitlines()
    assert lines[0] == f"rtcxfer: packing my-job ({size})", run.stderr
    assert re.fullmatch(rf"packed my-job: {re.escape(size)} in \d+(\.\d\d)? s \(.+/s\)", lines[1]), run.stderr
    assert lines[2].startswith("rtcxfer: waiting for a worker"), run.stderr

    again = rtcxfer(lab, "submit", str(job), "--pack-cache", str(cache), cwd=tmp_path)
    assert again.returncode == EXIT_OK, describe(again)
    assert "rtcxfer: packing" not in again.stderr and "my-job is unchanged" in again.stderr, again.stderr

    base = cli_command("submit", str(job), "--no-pack-cache", *lab.connection_options(ROOM))
    code, output = run_on_a_terminal(base, tmp_path)
    assert code == EXIT_OK, output
    assert re.search(r"\rpacking my-job: +\d+%\|", output), output
    assert f"packed my-job: {size} in " in output, output

    (job / "rtcxfer.json").write_text(json.dumps({"comand": ["python", "main.py"]}))
    typo = rtcxfer(lab, "submit", str(job), "--pack-cache", str(cache), cwd=tmp_path)
    assert typo.returncode == EXIT_USAGE, describe(typo)
    expected = (
        f"error: {job / 'rtcxfer.json'} has unknown keys: comand (did you mean command?); "
        f"known keys: {', '.join(MANIFEST_KEYS)}"
    )
    assert expected in typo.stderr, typo.stderr
    assert ".tmp" not in typo.stderr and str(cache) not in typo.stderr and "rtcxfer: packing" not in typo.stderr


# --- point 7: a resumed upload on a terminal, and its bar ----------------------------------------


def test_on_a_terminal_a_resumed_upload_shows_as_one_and_its_bar_has_an_eta_and_no_stray_comma(lab, tmp_path):
    package = big_package(tmp_path / "big.zip", 160)
    args = ["submit", str(package), *lab.connection_options(ROOM), "--transport", "rtc-chunked"]
    partial_size = interrupt_upload(lab, args, "big.zip", tmp_path)
    assert 0 < partial_size < package.stat().st_size

    code, output = run_on_a_terminal(cli_command(*args), tmp_path)
    assert code == EXIT_OK, output[-4000:]
    assert re.search(r"\r-> big\.zip via rtc-chunked, resuming at \d+\.\d [KM]iB: +\d+%\|", output), output[-4000:]
    whole = re.escape(format_size(package.stat().st_size))
    summary = rf"sent big\.zip via rtc-chunked: {whole} \((\d+\.\d [KM]iB) resumed, (\d+\.\d [KM]iB) sent\) in "
    assert re.search(summary, output), output[-4000:]
    assert re.search(r"\| [\d.]+ [KM]iB/[\d.]+ MiB [\d.]+ [KM]iB/s ETA \d+:\d\d", output), output[-4000:]
    assert "| ," not in output and "|, " not in output


# --- point 8: --json ----------------------------------------------------------------------------


def test_json_of_a_failed_job_gives_its_exit_status_and_names_no_results_transport(lab, tmp_path):
    package = job_package(tmp_path / "fails.zip", "print('about to fail')\nraise SystemExit(4)\n")
    run = rtcxfer(lab, "submit", str(package), "--json", "--transport", "rtc-chunked", cwd=tmp_path)
    assert run.returncode == EXIT_JOB_FAILED, describe(run)
    report = json.loads(run.stdout)
    assert report["ok"] is False and report["exit_status"] == 4 and report["submit_exit_code"] == EXIT_JOB_FAILED
    assert report["input_transport"] == "rtc-chunked", "the package was delivered over it"
    assert report["results_transport"] is None and report["results_dir"] is None, "no results came back"
    assert "job exited with code 4" in report["failure"]
    assert set(report["seconds"]) == {"total", "connect", "packing", "waiting", "transfer", "run"}
    assert report["seconds"]["packing"] is None and report["seconds"]["waiting"] > 0

    ok = rtcxfer(lab, "submit", str(build_sample_package(tmp_path / "ok.zip")), "--json", cwd=tmp_path)
    assert ok.returncode == EXIT_OK, describe(ok)
    report = json.loads(ok.stdout)
    assert (report["exit_status"], report["submit_exit_code"]) == (0, EXIT_OK)
    assert report["input_transport"] and report["results_transport"] and report["failure"] is None

    nobody = rtcxfer(lab, "submit", str(tmp_path / "ok.zip"), "--json", "--worker", "absent", cwd=tmp_path)
    assert nobody.returncode == EXIT_CONNECTION, describe(nobody)
    report = json.loads(nobody.stdout)
    assert (report["exit_status"], report["submit_exit_code"]) == (None, EXIT_CONNECTION)
    assert report["input_transport"] is None and report["results_transport"] is None and report["failure"]


def test_json_total_seconds_include_the_time_queued_for_a_busy_worker(lab, tmp_path):
    gate, running = tmp_path / "gate", tmp_path / "running"
    busy = start_cli(
        "submit", str(gated_job(tmp_path / "busy.zip", gate, running)), *lab.connection_options(ROOM), "--quiet",
        env=environment(), cwd=tmp_path,
    )
    queued = None
    try:
        wait_until(running.exists, "busy job running", GUARD)
        stderr = tmp_path / "queued.err"
        with open(stderr, "w") as err:
            queued = start_cli(
                "submit", str(build_sample_package(tmp_path / "queued.zip")), *lab.connection_options(ROOM), "--json",
                env=environment(), cwd=tmp_path, stderr=err,
            )
        wait_until(lambda: "waiting in the queue" in stderr.read_text(), "the queue notice", GUARD)
        held = 1.0  # the worker stays busy this long at least, with the second submit queued
        time.sleep(held)
        gate.touch()
        stdout, _ = queued.communicate(timeout=GUARD)
        assert busy.wait(GUARD) == EXIT_OK
    finally:
        gate.touch()
        for process in (busy, queued):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate(timeout=GUARD)
    assert queued.returncode == EXIT_OK, stderr.read_text()
    seconds = json.loads(stdout)["seconds"]
    assert seconds["waiting"] >= held, seconds
    assert seconds["total"] >= seconds["waiting"] + seconds["transfer"] + seconds["run"], seconds


# --- point 9: token wording; a client that left -------------------------------------------------


def test_token_messages_tell_a_missing_token_from_a_wrong_one_and_say_who_was_refused(lab, tmp_path):
    package = build_sample_package(tmp_path / "pkg.zip")
    wrong_worker = run_cli(
        "worker", "--signal", lab.url, "--room", "tokens", "--token", "not-the-token",
        env=environment(), cwd=tmp_path, timeout=GUARD,
    )
    assert wrong_worker.returncode == 1, describe(wrong_worker)
    assert "refused the room token (bad-token), so this worker did not join the room" in wrong_worker.stderr
    assert "no worker was tried" not in wrong_worker.stderr

    missing = run_cli(
        "submit", str(package), "--signal", lab.url, "--room", ROOM, env=environment(), cwd=tmp_path, timeout=GUARD
    )
    assert missing.returncode == EXIT_CONNECTION, describe(missing)
    assert "needs a room token and none was given, so no worker was tried" in missing.stderr, missing.stderr
    assert "refused" not in missing.stderr and "--token-file" in missing.stderr

    no_worker_token = run_cli(
        "submit", str(package), "--signal", lab.url, "--room", ROOM, "--signal-token", TOKEN,
        env=environment(), cwd=tmp_path, timeout=GUARD,
    )
    assert no_worker_token.returncode == EXIT_CONNECTION, describe(no_worker_token)
    assert "no token was given, and the worker needs its token: --token, --token-file or RTCXFER_TOKEN" in (
        no_worker_token.stderr
    ), no_worker_token.stderr

    tokenless_worker = run_cli(
        "worker", "--signal", lab.url, "--room", "tokens", env=environment(), cwd=tmp_path, timeout=GUARD
    )
    assert tokenless_worker.returncode == EXIT_USAGE, describe(tokenless_worker)
    assert "--token, --token-file or RTCXFER_TOKEN" in " ".join(tokenless_worker.stderr.split())


def test_a_client_that_left_during_its_job_is_an_info_line_on_the_worker(lab, tmp_path):
    gate, running = tmp_path / "gate", tmp_path / "running"
    package = gated_job(tmp_path / "left.zip", gate, running, ignore_sigterm=True)
    client = start_cli("submit", str(package), *lab.connection_options(ROOM), env=environment(), cwd=tmp_path)
    try:
        wait_until(running.exists, "job running", GUARD)
        client.send_signal(signal.SIGINT)  # the user's Ctrl-C
        _, stderr = client.communicate(timeout=GUARD)
        assert client.returncode == EXIT_CANCELLED, stderr
        # The client closes the session right after its JOB_CANCEL; the job shrugs off SIGTERM, so
        # the worker's JOB_FAILED comes later still and finds the client gone.
        left = r"(?m)^\S+ (\w+) +\S+: session \S+: the client left before hearing JOB_FAILED"
        said = lab.worker.wait_for(left, GUARD)
    finally:
        gate.touch()
        if client.poll() is None:
            client.kill()
            client.communicate(timeout=GUARD)
    assert said.group(1) == "INFO", said.group(0)
    log = lab.worker.text()
    assert "could not report" not in log
    assert re.search(r"(?m)^\S+ INFO +\S+: session \S+: the client left; stopping job ", log), log
    assert not re.search(r"(?m)^\S+ WARNING .*(client disconnected|the client left)", log), log


# --- point 10: the web page's address, the default worker's name, workers in order --------------


def test_the_web_pages_address_given_as_signal_is_converted_and_said_at_info(lab, tmp_path):
    page = lab.url.replace("ws://", "http://") + "/"
    listed = run_cli(
        "--log-level", "INFO", "workers", "--signal", page, "--room", ROOM, "--token", TOKEN,
        env=environment(), cwd=tmp_path, timeout=GUARD,
    )
    assert listed.returncode == 0, describe(listed)
    assert listed.stdout.splitlines()[1].split()[0] == "worker", listed.stdout
    said = f"--signal {page}: that is the web page's address; connecting to the server at {lab.url}/"
    assert re.search(rf"INFO .*{re.escape(said)}", listed.stderr), listed.stderr
    package = build_sample_package(tmp_path / "pkg.zip")
    run = run_cli(
        "submit", str(package), "--room", ROOM, "--token", TOKEN, "--quiet",
        env=environment(RTCXFER_SIGNAL_URL=page), cwd=tmp_path, timeout=GUARD,
    )
    assert run.returncode == EXIT_OK, describe(run)


def test_the_default_worker_is_not_called_worker_worker(lab):
    log = lab.worker.text()
    assert re.search(r"^worker waiting for jobs in room 'output'", log, re.M), log
    assert re.search(r"^worker: shared storage ", log, re.M), log
    assert "worker worker" not in log


def test_workers_are_listed_by_name(lab, tmp_path):
    names = ["zeta", "alpha", "Mike", "bravo"]
    for name in names:
        lab.start_worker("sorted", "--peer-id", name, name=f"worker-{name}")
    listed = run_cli("workers", *lab.connection_options("sorted"), env=environment(), cwd=tmp_path, timeout=GUARD)
    assert listed.returncode == 0, describe(listed)
    expected = sorted(names, key=str.casefold)
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == expected, listed.stdout
    as_json = run_cli(
        "workers", *lab.connection_options("sorted"), "--json", env=environment(), cwd=tmp_path, timeout=GUARD
    )
    assert [entry["id"] for entry in json.loads(as_json.stdout)] == expected, as_json.stdout
