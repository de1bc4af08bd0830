"""Hostile peers against a worker, in process: each attack (scaled down) refused or survived, and
the worker's disk, directories and logs kept safe from what a peer sends.

Real parts throughout: aiortc peers on loopback, the real signaling server on 127.0.0.1, the real
worker and client, real files (a size-limited tmpfs where a full disk is the point). Attacks on
authentication are in ``test_authentication.py``; those that are about real processes in
``test_worker_process_security.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.files import kept_partials as resume
from rtcxfer.net import peer as rtc
from rtcxfer.net.signaling import SignalingClient, SignalingServer
from rtcxfer.protocol.frames import pack_chunk_header
from rtcxfer.testing import run_async
from rtcxfer.worker.limits import WorkerLimits
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support.small_disk import small_tmpfs
from tests.support.worker_harness import (
    TOKEN,
    WorkerPeer,
    make_worker,
    run_shared_job,
    start_serving,
    stop_serving,
    worker_session,
)

LOOPBACK = "127.0.0.1"


async def run_sample_job(url: str, room: str, tmp_path: Path, tag: str, **connect_options) -> None:
    data = sample_text(100) + tag.encode()
    package = build_sample_package(tmp_path / f"{tag}.zip", data=data)
    client = RTCClient(token=TOKEN, results_dir=tmp_path / f"results-{tag}", detect_shared_storage=False)
    async with client:
        await client.connect(url, room, timeout=30, **connect_options)
        result = await client.submit(package)
    assert result.ok, result.failure
    assert b"sha256=" + hashlib.sha256(data).hexdigest().encode() in (result.results_dir / "summary.txt").read_bytes()


# --- the worker's signaling loop survives every error the server sends ----------------------------


# Slow: it waits out the attackers' authentication deadline.
@pytest.mark.slow
def test_worker_survives_rate_limits_peers_that_leave_and_being_kicked(tmp_path, logs):
    """Offers flooded at the worker, with a server strict enough that the worker's own answers trip its
    rate limit and then its persistent-flooding rule: the worker is told ``rate-limited`` and finally
    has its socket closed; it keeps serving and registers again. (A peer that offered and left is
    forgotten by its ``peer-left``; whether an answer still reaches the server after it, and comes
    back as ``unknown-peer``, is a race this test does not rely on.)"""

    async def scenario():
        async with SignalingServer(
            LOOPBACK, 0, rate_limit=2.0, rate_burst=3, max_rate_violations=3, max_peers_per_address_in_room=None
        ) as server:
            # Generous worker limits: here the point is what the server does to it.
            limits = WorkerLimits(max_unauthenticated=50, auth_timeout=3, offers_per_second=100, offer_burst=100)
            worker = RTCWorkerClient(token=TOKEN, work_dir=tmp_path / "work", limits=limits)
            serving = await start_serving(worker, server.url)
            offerer = rtc.PeerConnection()
            offer = {"kind": "offer", "sdp": await offerer.create_offer()}
            async with SignalingClient(server.url, "r", "client", "hit-and-run") as leaver:
                await leaver.send_to("worker", offer)
            attackers = [SignalingClient(server.url, "r", "client", f"attacker-{n}") for n in range(9)]
            for attacker in attackers:
                await attacker.connect()
                await attacker.send_to("worker", offer)
            for _ in range(200):
                if any("registering again" in message for _, message in logs) and "worker" in server.rooms.get("r", []):
                    break
                await asyncio.sleep(0.05)
            for attacker in attackers:
                await attacker.close()
            await offerer.close()
            assert not serving.done()
            await asyncio.sleep(3.5)  # the attackers' handshakes run out of time
            await run_sample_job(server.url, "r", tmp_path, "after-attack")
            assert not serving.done()
            await stop_serving(serving)
            worker.close()

    run_async(scenario())
    messages = [message for _, message in logs]
    worker_heard = [m for m in messages if m.startswith("signaling server reports:")]
    assert any("rate-limited" in m for m in worker_heard), messages
    assert any("client hit-and-run left the room; ending its session" in m for m in messages), messages
    assert any("registering again" in m for m in messages), messages


# --- results never written or removed outside the shared root -------------------------------------


def test_disk_full_cleanup_does_not_follow_an_output_directory_swapped_for_a_symlink(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.bin").write_bytes(b"not the worker's to delete")
    with small_tmpfs(tmp_path / "small", "512k", busy_ok=True) as small:
        (small / "jobs").mkdir()
        program = (
            "import os, pathlib\n"
            "out = pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'])\n"
            "(out / 'a.bin').write_bytes(os.urandom(100 * 1024))\n"
            "(out / 'b.bin').write_bytes(os.urandom(600 * 1024))\n"
        )
        build_sample_package(small / "jobs" / "big.zip", data=b"x", program=program)
        worker = make_worker(small, tmp_path / "work")
        copies = []
        real_copy = __import__("shutil").copyfileobj

        def copy_then_swap(source, sink, length=0):
            copies.append(getattr(sink, "name", None))
            if len(copies) == 2:  # a.bin is written; b.bin is about to fill the disk
                os.rename(small / "jobs" / "out", small / "jobs" / "out-moved")
                os.symlink(outside, small / "jobs" / "out")
            return real_copy(source, sink, length)

        monkeypatch.setattr("rtcxfer.files.results.shutil.copyfileobj", copy_then_swap)

        async def scenario():
            async with worker_session(worker) as peer:
                return await run_shared_job(peer, "jobs/big.zip", "jobs/out")

        assert run_async(scenario()) == "JOB_FAILED::Disk space exhausted on shared storage"
        assert len(copies) == 2
        assert (outside / "a.bin").read_bytes() == b"not the worker's to delete"
        assert list((small / "jobs" / "out-moved").iterdir()) == []  # the real partial results went


def test_results_are_not_written_through_a_hard_link_planted_in_the_output_directory(tmp_path):
    shared = tmp_path / "shared"
    (shared / "jobs" / "out").mkdir(parents=True)
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    os.link(victim, shared / "jobs" / "out" / "summary.txt")
    data = sample_text(50)
    build_sample_package(shared / "jobs" / "p.zip", data=data)
    worker = make_worker(shared, tmp_path / "work")

    async def scenario():
        async with worker_session(worker) as peer:
            return await run_shared_job(peer, "jobs/p.zip", "jobs/out")

    assert run_async(scenario()).startswith("JOB_COMPLETE::")
    assert victim.read_bytes() == b"precious"
    written = shared / "jobs" / "out" / "summary.txt"
    assert written.read_text().endswith(f"sha256={hashlib.sha256(data).hexdigest()}\n")
    assert written.stat().st_ino != victim.stat().st_ino and victim.stat().st_nlink == 1


# --- session and work directories never leak ------------------------------------------------------


def test_session_directories_are_removed_when_clients_vanish_mid_upload(tmp_path, logs):
    """Clients that close their peer connection and their signaling connection together while
    uploading (six of them): every session directory goes; a partial upload is
    kept only in the worker's bounded partial-uploads directory."""
    big = build_sample_package(tmp_path / "big.zip", data=os.urandom(24 * 1024 * 1024))
    work = tmp_path / "work"

    async def vanishing_client(url: str, n: int) -> None:
        client = RTCClient(
            token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / f"r{n}", transport="rtc-chunked"
        )
        await client.connect(url, "r", timeout=30)
        submitting = asyncio.create_task(client.submit(big))
        transfer = client.transports["rtc-chunked"]
        for _ in range(1000):
            if transfer._outgoing and any(o.sent for o in transfer._outgoing.values()):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02 * n)
        await asyncio.gather(client._peer.close(), client._signaling.close())
        submitting.cancel()
        await asyncio.gather(submitting, return_exceptions=True)
        await client.close()

    async def scenario():
        async with SignalingServer(LOOPBACK, 0) as server:
            worker = RTCWorkerClient(token=TOKEN, work_dir=work)
            serving = await start_serving(worker, server.url)
            await asyncio.gather(*(vanishing_client(server.url, n) for n in range(6)))
            for _ in range(600):  # until what is asserted below holds (kept partial uploads stay)
                if not worker.sessions and all(p.name == resume.DIRECTORY_NAME for p in work.iterdir()):
                    break
                await asyncio.sleep(0.05)
            left = sorted(p.name for p in work.iterdir())
            await stop_serving(serving)
            return left

    left = run_async(scenario())
    # Partial uploads are kept, bounded, for the clients' re-runs to resume; no
    # session directory remains.
    assert [name for name in left if name != resume.DIRECTORY_NAME] == []
    kept = list((tmp_path / "work" / resume.DIRECTORY_NAME).glob("*"))
    assert len(kept) <= 6 and all(part.name.endswith(".part") for part in kept)
    mid_upload = [m for _, m in logs if "session closed with" in m and "received" in m]
    assert len(mid_upload) >= 3, "the clients should have vanished while uploading"


def test_a_temporary_work_directory_is_removed_with_the_worker(tmp_path):
    worker = RTCWorkerClient(token=TOKEN)
    assert worker.work_dir.is_dir()
    worker.close()
    assert not worker.work_dir.exists()


def test_two_thousand_nested_directories_in_a_file_name_are_cleaned_up(tmp_path):
    worker = make_worker(None, tmp_path / "work")
    name = "d/" * 2000 + "f"
    tid = "ab" * 16

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send(f"FILE_META::{tid}::{name}::1000::{'0' * 64}::100")
            assert await peer.next_text() == f"FILE_ACCEPT::{tid}::0"
            await peer.send(pack_chunk_header(tid, 0) + b"x" * 100)
            await asyncio.sleep(0.2)
            # find(1): Python's own tree walks recurse and would fail right here.
            found = subprocess.run(["find", str(tmp_path / "work"), "-name", "*.part"], capture_output=True, text=True)
            assert found.stdout.count(".part") == 1

    run_async(scenario())
    assert [p.name for p in (tmp_path / "work").iterdir()] == [resume.DIRECTORY_NAME]
    assert list((tmp_path / "work" / resume.DIRECTORY_NAME).iterdir()) == []


# --- disk space promised to announced transfers ---------------------------------------------------


def test_announced_sizes_are_reserved_against_free_space(tmp_path):
    """Many transfers that each fit the free space but together do not (48 of 63 MiB on 64 MiB free,
    scaled to 8 of 300 KiB on 1 MiB): only as many as fit are accepted."""
    size = 300 * 1024
    with small_tmpfs(tmp_path / "work", "1m", busy_ok=True) as work:
        worker = make_worker(None, work)

        async def scenario():
            async with worker_session(worker) as peer:
                free = os.statvfs(work).f_bavail * os.statvfs(work).f_frsize
                replies = []
                for n in range(8):
                    await peer.send(f"FILE_META::{n:032x}::file{n}.bin::{size}::{'0' * 64}::65536")
                    replies.append(await peer.next_text())
                return free, replies

        free, replies = run_async(scenario())
    accepted = [r for r in replies if r.startswith("FILE_ACCEPT::")]
    refused = [r for r in replies if r.endswith("::not enough free space for the file")]
    assert len(accepted) == free // size and len(accepted) < 8
    assert len(accepted) + len(refused) == 8


def test_an_idle_partial_transfer_is_abandoned_and_its_space_freed(tmp_path):
    worker = make_worker(None, tmp_path / "work", transport_options={"rtc-chunked": {"idle_timeout": 0.5}})
    tid = "cd" * 16

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send(f"FILE_META::{tid}::idle.bin::{10 * 1024 * 1024}::{'0' * 64}::65536")
            assert await peer.next_text() == f"FILE_ACCEPT::{tid}::0"
            reply = await peer.next_text(timeout=10)
            parts = list((tmp_path / "work").rglob("*.part"))
            return reply, parts

    reply, parts = run_async(scenario())
    assert reply == f"FILE_ERROR::{tid}::no data for 0.5 s; transfer abandoned"
    assert parts == []


# --- a manifest nested too deeply -----------------------------------------------------------------


def test_deeply_nested_manifest_fails_the_job_and_the_client_hears_it(tmp_path):
    shared = tmp_path / "shared"
    (shared / "jobs").mkdir(parents=True)
    import zipfile

    with zipfile.ZipFile(shared / "jobs" / "nested.zip", "w") as archive:
        archive.writestr("rtcxfer.json", "[" * 30_000 + "]" * 30_000)
    worker = make_worker(shared, tmp_path / "work")

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("SHARED_INPUT_PATH::jobs/nested.zip")
            assert await peer.next_text() == "PATH_VALIDATED::input"
            failed = await peer.expect("JOB_FAILED::", "JOB_COMPLETE::")
            await peer.send("JOB_SUBMIT::next::rtc-chunked")  # and the session goes on
            return failed, await peer.expect("JOB_ACCEPTED::", "PROTOCOL_ERROR::")

    failed, accepted = run_async(scenario())
    assert failed.startswith("JOB_FAILED::") and "nested too deeply" in failed
    assert accepted == "JOB_ACCEPTED::next"


# --- deadline and bad-message caps ----------------------------------------------------------------


def test_an_unauthenticated_session_is_closed_at_its_deadline(tmp_path):
    worker = make_worker(None, tmp_path / "work", limits=WorkerLimits(auth_timeout=0.5))

    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            return await peer.next_text(timeout=10), await wait_closed(peer)

    refusal, closed = run_async(scenario())
    assert refusal == "AUTH_FAILED::no authentication within 0.5 s"
    assert closed


async def wait_closed(peer: WorkerPeer, timeout: float = 10) -> bool:
    with contextlib.suppress(Exception):
        while True:
            peer.received.append(await asyncio.wait_for(peer.channel.recv(), timeout))
    return peer.channel.closed


@pytest.mark.parametrize("authenticated, budget", [(False, 2), (True, 100)])
def test_garbage_gets_a_few_replies_and_log_lines_then_the_session_is_closed(tmp_path, logs, authenticated, budget):
    worker = make_worker(None, tmp_path / "work")

    async def scenario():
        async with worker_session(worker, authenticate=authenticated) as peer:
            for n in range(1000 if not authenticated else 400):
                if peer.channel.closed:
                    break
                with contextlib.suppress(Exception):
                    await peer.send(f"GARBAGE {n}")
            assert await wait_closed(peer)
            return peer.received

    received = run_async(scenario())
    replies = [m for m in received if isinstance(m, str) and m.startswith("PROTOCOL_ERROR::")]
    assert len(replies) <= budget
    garbage_lines = [m for level, m in logs if level == "WARNING" and "unusable input" in m]
    assert len(garbage_lines) <= 6


# --- peer text in log lines -----------------------------------------------------------------------


def test_peer_text_cannot_forge_log_lines_or_send_terminal_escapes(tmp_path, logs):
    forged = "oops\n2026-11-30 05:00:00 | ERROR | rtcxfer.worker: forged line\x1b[31m red\x1b[0m\u2028"
    worker = make_worker(None, tmp_path / "work")
    tid = "ef" * 16

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send(f"PROTOCOL_ERROR::{forged}")
            await peer.send(f"FILE_META::{tid}::x.bin::100::{'0' * 64}::100")
            assert await peer.next_text() == f"FILE_ACCEPT::{tid}::0"
            await peer.send(f"FILE_ERROR::{tid}::{forged}")
            await peer.send(f"FILE_ERROR::{'01' * 16}::{forged}")
            await peer.send("JOB_SUBMIT::j::rtc-chunked")
            await peer.expect("JOB_ACCEPTED::")  # every frame above has been handled

    run_async(scenario())
    mentioning = [message for _, message in logs if "forged line" in message]
    assert len(mentioning) >= 2
    for message in mentioning:
        assert "\n" not in message and "\x1b" not in message and "\u2028" not in message
        assert "\\x0a" in message and "\\x1b" in message


# --- JOB_CANCEL of a job whose input never arrived ------------------------------------------------


def test_job_cancel_clears_an_accepted_job_without_input(tmp_path):
    worker = make_worker(None, tmp_path / "work")

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send("JOB_SUBMIT::first::rtc-chunked")
            assert await peer.next_text() == "JOB_ACCEPTED::first"
            await peer.send("JOB_CANCEL::first")
            cancelled = await peer.next_text()
            await peer.send("JOB_SUBMIT::second::rtc-chunked")
            return cancelled, await peer.next_text()

    assert run_async(scenario()) == ("JOB_FAILED::Job first was cancelled", "JOB_ACCEPTED::second")
