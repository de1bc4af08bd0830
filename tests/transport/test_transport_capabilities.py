"""What a transport can do is declared by the transport and found through the plugin host, so a
third party's transport takes any role a built-in has: through the real ``rtcxfer submit`` and
``rtcxfer worker``, with third-party transports installed by pip (``tests/third_party``)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.processes import WORKER_READY, CliProcess, cli_environment, start_signaling
from rtcxfer.transport.host import PluginHost

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = Path(__file__).resolve().parent / "third_party"
TOKEN = f"capabilities-{secrets.token_hex(8)}"
GUARD = 120.0

SETUP_CFG = """
[metadata]
name = rtcxfer-test-transports
version = 0.0.1

[options]
py_modules = rtcxfer_test_transports

[options.entry_points]
rtcxfer.transports =
    test-transports = rtcxfer_test_transports
"""

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")]


@attrs.define
class Lab:
    root: Path
    url: str
    env: dict[str, str]
    services: list[CliProcess]

    def start_worker(self, room: str, **extra_env: str) -> CliProcess:
        args = ["worker", "--signal", self.url, "--room", room, "--token", TOKEN, "--work-dir", str(self.root / room)]
        env = {**self.env, "RTCXFER_LOG_LEVEL": "INFO", **extra_env}
        worker = CliProcess(f"worker-{room}", args, self.root, env=env)
        self.services.append(worker)
        worker.wait_for(WORKER_READY)
        return worker

    def submit(self, room: str, package: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "rtcxfer.cli", "submit", str(package), "--signal", self.url, "--room", room]
        command += ["--token", TOKEN, "--json", "--results", str(self.root / f"results-{room}"), *args]
        return subprocess.run(
            command, capture_output=True, text=True, env={**self.env, **extra_env}, cwd=self.root, timeout=GUARD
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A signaling server, and an environment in which the test transports are installed."""
    root = tmp_path_factory.mktemp("capabilities")
    project = root / "dist"
    project.mkdir()
    (project / "setup.cfg").write_text(SETUP_CFG)
    (project / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    (project / "rtcxfer_test_transports.py").write_text((THIRD_PARTY / "rtcxfer_test_transports.py").read_text())
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(project)],
        check=True,
        capture_output=True,
    )
    env = cli_environment("WARNING", import_path=REPO)
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    services: list[CliProcess] = []
    try:
        signaling, url = start_signaling(root, token=TOKEN, env=env)
        services.append(signaling)
        yield Lab(root, url, env, services)
    finally:
        for service in reversed(services):
            service.stop()


def outcome_of(run: subprocess.CompletedProcess[str]) -> dict:
    assert run.stdout.strip(), f"exit {run.returncode}\n{run.stderr[-3000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_third_party_transport_declared_the_fallback_is_the_one_fallen_back_on(lab, tmp_path):
    package = build_sample_package(tmp_path / "job.zip", data=sample_text(300))
    worker = lab.start_worker("fallback")
    run = lab.submit("fallback", package)
    outcome = outcome_of(run)
    assert run.returncode == 0, run.stderr[-3000:]
    # flaky (rank 200) is tried first and refuses; the client falls back on the transport that
    # declares itself the fallback and was installed last: stash, not the built-in rtc-chunked.
    assert "flaky failed" in run.stderr and "retrying over stash" in run.stderr, run.stderr[-3000:]
    assert (outcome["input_transport"], outcome["results_transport"]) == ("stash", "stash")
    summary = Path(outcome["results_dir"], "summary.txt").read_text()
    assert summary.startswith("lines=300 words=")
    worker.wait_for(r"results: \d+ files, \d+ bytes via stash")


def test_a_third_party_transport_delivers_results_in_place(lab, tmp_path):
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    package = build_sample_package(tmp_path / "job.zip", data=sample_text(300))
    worker = lab.start_worker("in-place", DROPBOX_DIR=str(dropbox))
    run = lab.submit("in-place", package, "--transport", "dropbox", DROPBOX_DIR=str(dropbox))
    outcome = outcome_of(run)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (outcome["input_transport"], outcome["results_transport"]) == ("dropbox", "dropbox")
    results = Path(outcome["results_dir"])
    assert sorted(path.relative_to(results).as_posix() for path in results.rglob("*") if path.is_file()) == [
        "copy/data.txt",
        "summary.txt",
    ]
    job_id = outcome["job_id"]
    # The worker wrote the results into the dropbox, the client copied them out of it and then
    # removed the worker's copy; no result crossed the data channel.
    assert (dropbox / "collected" / job_id).read_text() == f"results/{job_id}"
    assert not (dropbox / "results" / job_id).exists()
    worker.wait_for(rf"job {job_id} results: 2 files, \d+ bytes via dropbox")
    assert "FILE_META" not in worker.text()


def test_the_host_finds_the_fallback_by_declaration():
    host = PluginHost(autoload=False)
    assert host.fallback_transport(["shared-fs", "direct", "rtc-chunked"]) == "rtc-chunked"
    assert host.fallback_transport(["shared-fs", "direct"]) is None
