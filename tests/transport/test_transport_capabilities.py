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

import pytest

from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.processes import CliProcess
from rtcxfer.transport.host import PluginHost
from tests.support.cli import environment
from tests.support.distributions import install, make_distribution

THIRD_PARTY = Path(__file__).resolve().parent / "third_party"
TOKEN = f"capabilities-{secrets.token_hex(8)}"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A signaling server, and an environment in which the test transports are installed."""
    root = tmp_path_factory.mktemp("capabilities")
    source = (THIRD_PARTY / "rtcxfer_test_transports.py").read_text()
    project = make_distribution(
        root, "rtcxfer-test-transports", "0.0.1", "rtcxfer_test_transports", "test-transports", source
    )
    site = install(root / "site", project)
    env = environment()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    with start_cluster(root, token=TOKEN, env=env, service_env={**env, "RTCXFER_LOG_LEVEL": "INFO"}) as cluster:
        yield cluster


def start_worker(lab: Cluster, room: str, **extra_env: str) -> CliProcess:
    return lab.start_worker(room, work_dir=lab.root / room, env={**lab.service_env, **extra_env})


def submit(lab: Cluster, room: str, package: Path, *options: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    results = lab.root / f"results-{room}"
    return lab.submit(package, "--json", "--results", str(results), *options, room=room, env={**lab.env, **extra_env})


def outcome_of(run: subprocess.CompletedProcess[str]) -> dict:
    assert run.stdout.strip(), f"exit {run.returncode}\n{run.stderr[-3000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_third_party_transport_declared_the_fallback_is_the_one_fallen_back_on(lab, tmp_path):
    package = build_sample_package(tmp_path / "job.zip", data=sample_text(300))
    worker = start_worker(lab, "fallback")
    run = submit(lab, "fallback", package)
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
    worker = start_worker(lab, "in-place", DROPBOX_DIR=str(dropbox))
    run = submit(lab, "in-place", package, "--transport", "dropbox", DROPBOX_DIR=str(dropbox))
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
