"""RTCClient against a real worker over real aiortc peers: verified sharing, automatic choice,
fallback to rtc-chunked, results placed whole."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.client.sample import build_sample_package
from rtcxfer.protocol.errors import AuthenticationError, PluginError
from rtcxfer.testing import run_async
from tests.support.worker_harness import TOKEN, assert_sample_results, attached_client, make_worker


def run_job(worker, client: RTCClient, package: Path, **submit_options):
    async def scenario():
        async with attached_client(worker, client):
            return await client.submit(package, **submit_options)

    return run_async(scenario(), 120)


@pytest.fixture
def shared(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    return root


def test_verified_shared_storage_is_chosen_automatically(shared, tmp_path):
    package = build_sample_package(shared / "jobs" / "p.zip")
    events = []
    client = RTCClient(
        token=TOKEN, shared_storage_root=shared, results_dir=tmp_path / "results", on_event=events.append
    )
    result = run_job(make_worker(shared, tmp_path / "work"), client, package)
    assert (result.input_transport, result.results_transport) == ("shared-fs", "shared-fs")
    assert client.session_transports[:3] == ["shared-fs", "direct", "rtc-chunked"]
    assert_sample_results(result)
    assert [e.data["state"] for e in events if e.kind == "status"][-3:] == ["extracting", "running", "sending-results"]
    assert [(e.data["done"], e.data["total"]) for e in events if e.kind == "progress"][-1] == (2000, 2000)


def test_package_outside_the_root_is_staged_on_shared_storage(shared, tmp_path):
    package = build_sample_package(tmp_path / "elsewhere" / "p.zip")
    client = RTCClient(token=TOKEN, shared_storage_root=shared, results_dir=tmp_path / "results")
    result = run_job(make_worker(shared, tmp_path / "work"), client, package)
    assert result.input_transport == "shared-fs"
    assert_sample_results(result)
    assert not (shared / "rtcxfer-staging").exists()  # the staged copy was removed, and its empty directory


def test_different_storage_under_the_same_name_is_not_trusted(tmp_path):
    client_root, worker_root = tmp_path / "client-mount", tmp_path / "worker-mount"
    client_root.mkdir()
    worker_root.mkdir()
    package = build_sample_package(client_root / "jobs" / "p.zip")
    build_sample_package(worker_root / "jobs" / "p.zip")  # same relative path, other storage
    events = []
    client = RTCClient(
        token=TOKEN, shared_storage_root=client_root, results_dir=tmp_path / "results", on_event=events.append
    )
    result = run_job(make_worker(worker_root, tmp_path / "work"), client, package)
    assert "shared-fs" not in client.session_transports
    # The next best transport both peers offer: bytes over a direct TLS connection.
    assert (result.input_transport, result.results_transport) == ("direct", "direct")
    assert_sample_results(result)
    assert any("shared-fs is not usable" in e.data.get("message", "") for e in events if e.kind == "notice")


def test_corrupted_package_on_shared_storage_is_retried_over_rtc(tmp_path):
    """Both sides verify the same probe directory (a bind mount), but the package the worker
    reads in place is corrupted: the worker says so and the client resends the bytes."""
    client_root, worker_root = tmp_path / "client-mount", tmp_path / "worker-mount"
    for root in (client_root, worker_root):
        (root / ".rtcxfer").mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "--bind", str(client_root / ".rtcxfer"), str(worker_root / ".rtcxfer")], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"bind mounts are not available here: {mounted.stderr.decode().strip()}")
    try:
        package = build_sample_package(client_root / "jobs" / "p.zip")
        (worker_root / "jobs").mkdir()
        (worker_root / "jobs" / "p.zip").write_bytes(package.read_bytes()[:1000])  # out of sync
        events = []
        client = RTCClient(
            token=TOKEN, shared_storage_root=client_root, results_dir=tmp_path / "results", on_event=events.append
        )
        result = run_job(make_worker(worker_root, tmp_path / "work"), client, package)
    finally:
        subprocess.run(["umount", str(worker_root / ".rtcxfer")], check=False)
    assert client.session_transports[0] == "shared-fs"
    notices = [e.data["message"] for e in events if e.kind == "notice"]
    assert any(
        "File corrupted or invalid format: jobs/p.zip" in n and "retrying over rtc-chunked" in n for n in notices
    )
    assert (result.input_transport, result.results_transport) == ("rtc-chunked", "rtc-chunked")
    assert_sample_results(result)


def test_forced_transport_is_used_and_an_unusable_one_refused(shared, tmp_path):
    package = build_sample_package(shared / "jobs" / "p.zip")
    client = RTCClient(
        token=TOKEN, shared_storage_root=shared, results_dir=tmp_path / "results", transport="rtc-chunked"
    )
    result = run_job(make_worker(shared, tmp_path / "work"), client, package)
    assert (result.input_transport, result.results_transport) == ("rtc-chunked", "rtc-chunked")
    assert_sample_results(result)
    # The others were not even negotiated: nothing connected (direct's TLS) that will not be used.
    # (A forced transport that is not usable still lets the others be tried, so that the refusal
    # says what is usable: plugins/rtcxfer-s3's round-trip tests.)
    assert client.session_transports == ["rtc-chunked"]
    assert client.unusable_transports["shared-fs"] == "not negotiated: this client forces rtc-chunked"
    with pytest.raises(PluginError, match="no transport named 'carrier-pigeon'"):
        RTCClient(transport="carrier-pigeon")
    lonely = RTCClient(token=TOKEN, shared_storage_root=None, detect_shared_storage=False, results_dir=tmp_path / "r2")
    with pytest.raises(PluginError, match="not usable in this session"):
        run_job(make_worker(shared, tmp_path / "work2"), lonely, package, transport="shared-fs")


def test_failing_job_reports_exit_code_and_last_lines(shared, tmp_path):
    failing = "print('step one'); print('about to fail'); raise SystemExit(3)\n"
    package = build_sample_package(shared / "jobs" / "f.zip", program=failing)
    client = RTCClient(token=TOKEN, shared_storage_root=shared, results_dir=tmp_path / "results")
    result = run_job(make_worker(shared, tmp_path / "work"), client, package)
    assert not result.ok and result.results_dir is None
    assert "exited with code 3" in result.failure and "about to fail" in result.failure
    assert result.log_tail == ("step one", "about to fail")
    assert list((tmp_path / "results").iterdir()) == []


def test_wrong_token_is_refused_with_a_clear_error(shared, tmp_path):
    client = RTCClient(token="wrong", shared_storage_root=shared, results_dir=tmp_path / "results")

    async def scenario():
        with pytest.raises(AuthenticationError, match="invalid token"):
            async with attached_client(make_worker(shared, tmp_path / "work"), client):
                pass

    run_async(scenario(), 60)


def test_cancelling_submit_stops_the_job_on_the_worker(shared, tmp_path):
    pid_file = shared / "job.pid"
    sleeper = (
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('sleeping', flush=True)\ntime.sleep(120)\n"
    )
    package = build_sample_package(shared / "jobs" / "s.zip", program=sleeper)
    worker = make_worker(shared, tmp_path / "work", kill_grace_seconds=2)
    client = RTCClient(token=TOKEN, shared_storage_root=shared, results_dir=tmp_path / "results")

    async def scenario():
        async with attached_client(worker, client):
            job = asyncio.create_task(client.submit(package))
            while not pid_file.exists() or not pid_file.read_text():
                await asyncio.sleep(0.05)
            pid = int(pid_file.read_text())
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            for _ in range(200):
                if not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid):
                    break
                await asyncio.sleep(0.05)
            assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)
            # The same session runs the next job.
            again = await client.submit(build_sample_package(shared / "jobs" / "ok.zip"))
            assert again.ok
        assert worker.stats == {"completed": 1, "failed": 1}

    run_async(scenario(), 120)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return "zombie"
