"""A client written from docs/protocol.md alone (tests/docs/doc_client.py) against a real
``rtcxfer signal`` and ``rtcxfer worker``, each its own process, on loopback only."""

from __future__ import annotations

import asyncio
import re
import secrets

import aioice.ice
import pytest

from rtcxfer.client.sample import build_sample_package
from rtcxfer.testing import run_async
from rtcxfer.testing.cluster import start_cluster
from rtcxfer.testing.job_files import expected_sample_results
from tests.docs.doc_client import DocClient, WorkerRefused, room_token

ROOM = "lab"
ROOM_SECRET = "ROOMSECRET"
WORKER_TOKEN = "worker-token-3f9a"
# Random hex lines: the package (about 170 KB deflated) and copy/data.txt (325,000 bytes) each
# take several chunks (this client's 64 KiB ones up, the worker's 256 KiB ones back), so offsets
# past 0 cross the wire both ways.
DATA = "".join(f"{secrets.token_hex(32)}\n" for _ in range(5000)).encode()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A signaling server and a worker with shared storage, as real processes."""
    base = tmp_path_factory.mktemp("doc-client")
    shared_root = base / "shared"
    shared_root.mkdir()
    with start_cluster(base, token=WORKER_TOKEN, signal_token=ROOM_SECRET) as cluster:
        options = ["--signal-token", ROOM_SECRET, "--shared-root", str(shared_root)]
        cluster.start_worker(ROOM, *options, name="worker", work_dir=base / "work")
        yield cluster.url, shared_root, base


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch):
    """This process's ICE gathers a host candidate on 127.0.0.1 and nothing else."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def assert_loopback_only(sdp: str) -> None:
    candidates = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", sdp, re.M)
    assert candidates and set(candidates) == {"127.0.0.1"}, candidates


@pytest.mark.slow
def test_rtc_chunked_then_shared_fs_job_in_one_session(servers):
    url, shared_root, base = servers
    package = build_sample_package(base / "client" / "sample-package.zip", data=DATA)
    shared_package = build_sample_package(shared_root / "jobs" / "sample-package.zip", data=DATA)
    expected = expected_sample_results(DATA)

    async def scenario():
        client = DocClient(transports=("shared-fs", "rtc-chunked"))
        try:
            await client.connect(url, ROOM, ROOM_SECRET)
            assert_loopback_only(client._pc.localDescription.sdp)
            assert_loopback_only(client._pc.remoteDescription.sdp)
            welcome = await client.authenticate(WORKER_TOKEN)
            assert await client.probe_shared_storage(shared_root) == "verified"
            chunked = await client.run_job_rtc_chunked(package, base / "results")
            shared = await client.run_job_shared_fs(f"jobs/{shared_package.name}", "rtcxfer-results/doc-client")
            return client, welcome, chunked, shared
        finally:
            await client.close()

    client, welcome, chunked, shared = run_async(scenario())
    assert welcome.startswith("WELCOME::2::"), welcome
    assert client.usable_transports == ["shared-fs", "rtc-chunked"], client.log

    assert chunked.relative_path == chunked.job_id and chunked.file_count == 2, client.log
    assert {name: path.read_bytes() for name, path in chunked.files.items()} == expected
    assert f"JOB_STATUS::{chunked.job_id}::running" in chunked.reports
    sent_chunks = [line for line in client.log if line.startswith("C->W <binary")]
    received_chunks = [line for line in client.log if line.startswith("W->C <binary")]
    assert len(sent_chunks) >= 2 and len(received_chunks) >= 3, client.log
    assert not list((base / "results").rglob("*.part"))

    assert shared.relative_path == "rtcxfer-results/doc-client" and shared.file_count == 2, client.log
    output = shared_root / shared.relative_path
    assert {str(p.relative_to(output)): p.read_bytes() for p in output.rglob("*") if p.is_file()} == expected
    assert not list((shared_root / ".rtcxfer" / "probes").iterdir()), "the probe file was left behind"


def test_room_token_matches_the_documents_worked_example():
    # docs/protocol.md section 9.1: the room secret ROOMSECRET registers with this token.
    assert room_token("ROOMSECRET") == "5ae7d8ceb3c3002a7900432cacfd18ea21c479d3256785c248b06706381452a3"


@pytest.mark.slow
def test_wrong_worker_token_gets_auth_failed(servers):
    url, _, _ = servers

    async def scenario():
        client = DocClient(transports=("rtc-chunked",))
        try:
            await client.connect(url, ROOM, ROOM_SECRET)
            with pytest.raises(WorkerRefused) as refused:
                await client.authenticate("not-the-worker-token")
            # The worker closes the channel after AUTH_FAILED (section 3.1).
            closed = await asyncio.wait_for(client._inbox.get(), 30)
        finally:
            await client.close()
        # ... and goes on serving: the right token is welcome right after.
        again = DocClient(transports=("rtc-chunked",))
        try:
            await again.connect(url, ROOM, ROOM_SECRET)
            welcome = await again.authenticate(WORKER_TOKEN)
        finally:
            await again.close()
        return refused.value.frame, closed, welcome

    frame, closed, welcome = run_async(scenario())
    assert frame == "AUTH_FAILED::invalid token"
    assert closed is None
    assert welcome.startswith("WELCOME::2::")


@pytest.mark.slow
def test_spec_only_jobs_refused_paths_and_a_corrupted_package_as_the_document_says(servers):
    """Issue 24's stranger, again: an implicit job's results are read on the shared storage, a
    refused path ends its job so the next JOB_SUBMIT is accepted, and a package corrupted on the
    shared storage goes again as bytes (sections 3.2, 6.1, 6.3, 7)."""
    url, shared_root, base = servers
    package = build_sample_package(base / "client" / "again-package.zip", data=DATA)
    shared_package = build_sample_package(shared_root / "jobs" / "spec-only.zip", data=DATA)
    corrupted = shared_root / "jobs" / "corrupted.zip"
    corrupted.write_bytes(shared_package.read_bytes()[:1000])
    expected = expected_sample_results(DATA)

    async def scenario():
        client = DocClient(transports=("shared-fs", "rtc-chunked"))
        try:
            await client.connect(url, ROOM, ROOM_SECRET)
            await client.authenticate(WORKER_TOKEN)
            assert await client.probe_shared_storage(shared_root) == "verified"
            implicit = await client.run_spec_only_job("jobs/spec-only.zip")
            with pytest.raises(WorkerRefused) as refused:
                await client.run_job_shared_fs("jobs/absent.zip", "rtcxfer-results/absent")
            after_refusal = await client.run_job_rtc_chunked(package, base / "results-2")
            resent, corrupted_reply = await client.run_job_shared_fs_else_bytes(
                "jobs/corrupted.zip", package, "rtcxfer-results/corrupted", base / "results-3"
            )
            return client, implicit, refused.value.frame, after_refusal, resent, corrupted_reply
        finally:
            await client.close()

    client, implicit, refused, after_refusal, resent, corrupted_reply = run_async(scenario())
    assert implicit.relative_path == f"rtcxfer-results/{implicit.job_id}", client.log
    assert re.fullmatch(r"job-[0-9a-f]{8}", implicit.job_id)
    output = shared_root / implicit.relative_path
    assert {str(p.relative_to(output)): p.read_bytes() for p in output.rglob("*") if p.is_file()} == expected
    assert refused == "PATH_ERROR::Input path does not exist: jobs/absent.zip"
    assert {name: path.read_bytes() for name, path in after_refusal.files.items()} == expected
    assert corrupted_reply == "PATH_ERROR::File corrupted or invalid format: jobs/corrupted.zip", client.log
    assert {name: path.read_bytes() for name, path in resent.files.items()} == expected
