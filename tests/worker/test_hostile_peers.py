"""Issue 11, in process: each attack as the issue describes it (scaled down), refused or survived.

Real parts throughout: aiortc peers on loopback, the real signaling server on 127.0.0.1, the real
worker and client, real files (a size-limited tmpfs where a full disk is the point). The
attacks that are about real processes live in ``test_worker_process_security.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.files import kept_partials as resume
from rtcxfer.net import peer as rtc
from rtcxfer.net.signaling import SignalingClient, SignalingServer
from rtcxfer.protocol import auth
from rtcxfer.protocol.errors import AuthenticationError, ConnectionClosedError
from rtcxfer.protocol.frames import pack_chunk_header
from rtcxfer.worker.limits import WorkerLimits
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient
from tests.support.worker_harness import (
    TOKEN,
    WorkerPeer,
    hold_sockets,
    make_worker,
    raw_websocket,
    run,
    run_shared_job,
    worker_session,
)

LOOPBACK = "127.0.0.1"
#: A second loopback address: "another host" for the per-address limits, still only lo.
OTHER_HOST = "127.0.0.2"


@pytest.fixture
def logs():
    records: list[tuple[str, str]] = []
    handler = logger.add(lambda message: records.append((message.record["level"].name, message.record["message"])))
    yield records
    logger.remove(handler)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A size-limited tmpfs at ``path`` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def running_worker(server: SignalingServer, worker: RTCWorkerClient, room: str = "r") -> asyncio.Task:
    ready = asyncio.Event()
    task = asyncio.create_task(worker.serve(server.url, room, on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 30)
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def run_sample_job(url: str, room: str, tmp_path: Path, tag: str, **connect_options) -> None:
    data = sample_text(100) + tag.encode()
    package = build_sample_package(tmp_path / f"{tag}.zip", data=data)
    client = RTCClient(token=TOKEN, results_dir=tmp_path / f"results-{tag}", detect_shared_storage=False)
    async with client:
        await client.connect(url, room, timeout=30, **connect_options)
        result = await client.submit(package)
    assert result.ok, result.failure
    assert b"sha256=" + hashlib.sha256(data).hexdigest().encode() in (result.results_dir / "summary.txt").read_bytes()


# --- 1: the signaling loop survives every error the server sends ---------------------------


def test_1_worker_survives_rate_limits_unknown_peers_and_being_kicked(tmp_path, logs):
    """The issue's attack, with a server strict enough that the worker's own answers trip its
    rate limit and then its persistent-flooding rule: the worker is told ``rate-limited`` and
    ``unknown-peer`` (a peer that offered and left), and finally has its socket closed; it keeps
    serving and registers again."""

    async def scenario():
        async with SignalingServer(
            LOOPBACK, 0, rate_limit=2.0, rate_burst=3, max_rate_violations=3, max_peers_per_address_in_room=None
        ) as server:
            # Generous worker limits: here the point is what the server does to it.
            limits = WorkerLimits(max_unauthenticated=50, auth_timeout=3, offers_per_second=100, offer_burst=100)
            worker = RTCWorkerClient(token=TOKEN, work_dir=tmp_path / "work", limits=limits)
            serving = await running_worker(server, worker)
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
            await stop(serving)
            worker.close()

    run(scenario())
    messages = [message for _, message in logs]
    worker_heard = [m for m in messages if m.startswith("signaling server reports:")]
    assert any("rate-limited" in m for m in worker_heard), messages
    assert any("unknown-peer" in m for m in messages if "worker" in m or "reports" in m), messages
    assert any("registering again" in m for m in messages), messages


# --- 2: a relay between client and worker cannot splice the two sessions --------------------


def test_2_a_relay_in_the_middle_cannot_authenticate_either_way(tmp_path, logs):
    """The impostor of the issue, one step further: it holds a channel to the real worker and
    one to the real client and copies every message between them (it never needs the token).
    Both proofs are bound to the DTLS fingerprints each side saw, so the worker refuses the
    forwarded proof and the client learns nothing it could use."""

    async def scenario():
        worker = make_worker(None, tmp_path / "work")
        to_worker, worker_end, close_a = await rtc.connect_pair_in_process()
        client_end, from_client, close_b = await rtc.connect_pair_in_process()
        serving = asyncio.create_task(worker.serve_channel(worker_end, name="relayed"))
        seen: list[str | bytes] = []

        async def copy(source, sink):
            with contextlib.suppress(Exception):
                while True:
                    message = await source.recv()
                    seen.append(message)
                    await (sink.send_text(message) if isinstance(message, str) else sink.send_bytes(message))

        pumps = [asyncio.create_task(copy(from_client, to_worker)), asyncio.create_task(copy(to_worker, from_client))]
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        with pytest.raises(AuthenticationError, match="invalid token"):
            await client.attach(client_end)
        await client.close()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await close_a()
        await close_b()
        await asyncio.wait_for(serving, 30)
        return seen

    seen = run(scenario())
    assert not any(isinstance(m, str) and TOKEN in m for m in seen)
    assert [m.split("::")[0] for m in seen] == ["HELLO", "AUTH_CHALLENGE", "AUTH_PROOF", "AUTH_FAILED"]
    assert any("refused: invalid token" in message for _, message in logs)


def test_2_the_client_refuses_a_worker_that_cannot_prove_the_token(tmp_path):
    """An impostor worker (any peer that answers the client) gets a proof it cannot use and
    no token; it cannot make a WELCOME the client accepts, so the client sends no job."""

    async def scenario():
        client_end, impostor_end, close = await rtc.connect_pair_in_process()
        impostor = WorkerPeer(impostor_end)
        client = RTCClient(token=TOKEN, detect_shared_storage=False, results_dir=tmp_path / "results")
        attaching = asyncio.create_task(client.attach(client_end))
        hello = await impostor.next_text()
        await impostor.send(f"AUTH_CHALLENGE::{auth.new_nonce()}")
        proof = await impostor.next_text()
        await impostor.send(f"WELCOME::2::rtc-chunked::{'ab' * 32}")
        with pytest.raises(AuthenticationError, match="could not prove it knows the token"):
            await attaching
        await client.close()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosedError):
            while True:
                impostor.received.append(await asyncio.wait_for(impostor_end.recv(), 0.5))
        await close()
        return hello, proof, impostor.received[2:]

    hello, proof, afterwards = run(scenario())
    assert hello.startswith("HELLO::2::") and TOKEN not in hello
    assert proof.startswith("AUTH_PROOF::") and TOKEN not in proof
    assert afterwards == []  # no JOB_SUBMIT, no path, no file


@pytest.mark.parametrize(
    ("token", "weak"),
    [
        ("s3cret", True),
        ("correct-horse-batte", True),  # 19 characters
        ("ab" * 20, True),  # long, but two different characters
        ("correct-horse-battery", False),
        (secrets.token_urlsafe(16), False),  # what `rtcxfer demo` makes
    ],
)
def test_2_a_worker_warns_about_a_token_that_can_be_guessed_offline(tmp_path, logs, token, weak):
    RTCWorkerClient(token=token, work_dir=tmp_path / "w")
    warnings = [message for level, message in logs if level == "WARNING" and message.startswith("weak token")]
    assert bool(warnings) is weak, warnings
    if weak:
        assert "offline" in warnings[0] and "token_urlsafe(32)" in warnings[0] and token not in warnings[0]


# --- 3: a worker without a token --------------------------------------------------------------


def test_3_worker_without_token_needs_an_explicit_insecure_choice_and_clients_with_one_refuse_it(tmp_path):
    with pytest.raises(ValueError, match="needs a token"):
        RTCWorkerClient(work_dir=tmp_path / "w0")
    insecure = RTCWorkerClient(insecure_no_token=True, work_dir=tmp_path / "w1")

    async def attach(token: str | None):
        client_end, worker_end, close = await rtc.connect_pair_in_process()
        serving = asyncio.create_task(insecure.serve_channel(worker_end))
        client = RTCClient(token=token, detect_shared_storage=False, results_dir=tmp_path / "results")
        try:
            await client.attach(client_end)
            return client.session_transports
        finally:
            await client.close()
            await close()
            await asyncio.wait_for(serving, 30)

    with pytest.raises(AuthenticationError, match="without a token"):
        run(attach(TOKEN))
    assert "rtc-chunked" in run(attach(None))  # served: the session negotiated its transports


# --- 5 and 11: results never written or removed outside the shared root --------------------


def test_5_disk_full_cleanup_does_not_follow_an_output_directory_swapped_for_a_symlink(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.bin").write_bytes(b"not the worker's to delete")
    with small_tmpfs(tmp_path / "small", "512k") as small:
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

        assert run(scenario()) == "JOB_FAILED::Disk space exhausted on shared storage"
        assert len(copies) == 2
        assert (outside / "a.bin").read_bytes() == b"not the worker's to delete"
        assert list((small / "jobs" / "out-moved").iterdir()) == []  # the real partial results went


def test_11_results_are_not_written_through_a_hard_link_planted_in_the_output_directory(tmp_path):
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

    assert run(scenario()).startswith("JOB_COMPLETE::")
    assert victim.read_bytes() == b"precious"
    written = shared / "jobs" / "out" / "summary.txt"
    assert written.read_text().endswith(f"sha256={hashlib.sha256(data).hexdigest()}\n")
    assert written.stat().st_ino != victim.stat().st_ino and victim.stat().st_nlink == 1


# --- 7 and 9: session directories never leak ----------------------------------------------


def test_7_session_directories_are_removed_when_clients_vanish_mid_upload(tmp_path, logs):
    """Clients that close their peer connection and their signaling connection together while
    uploading (the issue's 30, scaled to 6): every session directory goes; a partial upload is
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
            serving = await running_worker(server, worker)
            await asyncio.gather(*(vanishing_client(server.url, n) for n in range(6)))
            for _ in range(600):
                if not worker.sessions and not list(work.iterdir()):
                    break
                await asyncio.sleep(0.05)
            left = sorted(p.name for p in work.iterdir())
            await stop(serving)
            return left

    left = run(scenario())
    # Partial uploads are kept, bounded, for the clients' re-runs to resume (issue 15); no
    # session directory remains.
    assert [name for name in left if name != resume.DIRECTORY_NAME] == []
    kept = list((tmp_path / "work" / resume.DIRECTORY_NAME).glob("*"))
    assert len(kept) <= 6 and all(part.name.endswith(".part") for part in kept)
    mid_upload = [m for _, m in logs if "session closed with" in m and "received" in m]
    assert len(mid_upload) >= 3, "the clients should have vanished while uploading"


def test_7_a_temporary_work_directory_is_removed_with_the_worker(tmp_path):
    worker = RTCWorkerClient(token=TOKEN)
    assert worker.work_dir.is_dir()
    worker.close()
    assert not worker.work_dir.exists()


def test_9_two_thousand_nested_directories_in_a_file_name_are_cleaned_up(tmp_path):
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

    run(scenario())
    assert list((tmp_path / "work").iterdir()) == []


# --- 10: disk space promised to announced transfers ------------------------------------------


def test_10_announced_sizes_are_reserved_against_free_space(tmp_path):
    """The issue's 48 transfers of 63 MiB on 64 MiB free, scaled to 8 of 300 KiB on 1 MiB."""
    size = 300 * 1024
    with small_tmpfs(tmp_path / "work", "1m") as work:
        worker = make_worker(None, work)

        async def scenario():
            async with worker_session(worker) as peer:
                free = os.statvfs(work).f_bavail * os.statvfs(work).f_frsize
                replies = []
                for n in range(8):
                    await peer.send(f"FILE_META::{n:032x}::file{n}.bin::{size}::{'0' * 64}::65536")
                    replies.append(await peer.next_text())
                return free, replies

        free, replies = run(scenario())
    accepted = [r for r in replies if r.startswith("FILE_ACCEPT::")]
    refused = [r for r in replies if r.endswith("::not enough free space for the file")]
    assert len(accepted) == free // size and len(accepted) < 8
    assert len(accepted) + len(refused) == 8


def test_10_an_idle_partial_transfer_is_abandoned_and_its_space_freed(tmp_path):
    worker = make_worker(None, tmp_path / "work", transport_options={"rtc-chunked": {"idle_timeout": 0.5}})
    tid = "cd" * 16

    async def scenario():
        async with worker_session(worker) as peer:
            await peer.send(f"FILE_META::{tid}::idle.bin::{10 * 1024 * 1024}::{'0' * 64}::65536")
            assert await peer.next_text() == f"FILE_ACCEPT::{tid}::0"
            reply = await peer.next_text(timeout=10)
            parts = list((tmp_path / "work").rglob("*.part"))
            return reply, parts

    reply, parts = run(scenario())
    assert reply == f"FILE_ERROR::{tid}::no data for 0.5 s; transfer abandoned"
    assert parts == []


# --- 14: a manifest nested too deeply ------------------------------------------------------


def test_14_deeply_nested_manifest_fails_the_job_and_the_client_hears_it(tmp_path):
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

    failed, accepted = run(scenario())
    assert failed.startswith("JOB_FAILED::") and "nested too deeply" in failed
    assert accepted == "JOB_ACCEPTED::next"


# --- 15: deadline and bad-message caps before authentication -------------------------------


def test_15_an_unauthenticated_session_is_closed_at_its_deadline(tmp_path):
    worker = make_worker(None, tmp_path / "work", limits=WorkerLimits(auth_timeout=0.5))

    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            return await peer.next_text(timeout=10), await wait_closed(peer)

    refusal, closed = run(scenario())
    assert refusal == "AUTH_FAILED::no authentication within 0.5 s"
    assert closed


async def wait_closed(peer: WorkerPeer, timeout: float = 10) -> bool:
    with contextlib.suppress(Exception):
        while True:
            peer.received.append(await asyncio.wait_for(peer.channel.recv(), timeout))
    return peer.channel.closed


@pytest.mark.parametrize("authenticated, budget", [(False, 2), (True, 100)])
def test_15_garbage_gets_a_few_replies_and_log_lines_then_the_session_is_closed(tmp_path, logs, authenticated, budget):
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

    received = run(scenario())
    replies = [m for m in received if isinstance(m, str) and m.startswith("PROTOCOL_ERROR::")]
    assert len(replies) <= budget
    garbage_lines = [m for level, m in logs if level == "WARNING" and "unusable input" in m]
    assert len(garbage_lines) <= 6


# --- 16: peer text in log lines ----------------------------------------------------------------


def test_16_peer_text_cannot_forge_log_lines_or_send_terminal_escapes(tmp_path, logs):
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

    run(scenario())
    mentioning = [message for _, message in logs if "forged line" in message]
    assert len(mentioning) >= 2
    for message in mentioning:
        assert "\n" not in message and "\x1b" not in message and "\u2028" not in message
        assert "\\x0a" in message and "\\x1b" in message


# --- JOB_CANCEL of a job whose input never arrived --------------------------------------------


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

    assert run(scenario()) == ("JOB_FAILED::Job first was cancelled", "JOB_ACCEPTED::second")


# --- 6 and 8: one address cannot take the server's sockets or a room's places ----------------


LINUX_LOOPBACK_NET = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="binds 127.0.0.2, which only Linux routes to lo by default"
)


@LINUX_LOOPBACK_NET
def test_6_one_address_cannot_hold_the_servers_unregistered_sockets():
    async def scenario():
        async with SignalingServer(LOOPBACK, 0, max_connections=20, max_unregistered_per_address=4) as server:
            refused, held = await hold_sockets(server.url, OTHER_HOST, 12)
            async with SignalingClient(server.url, "r", "worker", "w") as legit:
                registered = legit.connected
            for ws in held:
                await ws.close()
            return refused, registered

    refused, registered = run(scenario())
    assert refused == 8 and registered


@LINUX_LOOPBACK_NET
def test_8_squatters_are_capped_per_address_and_timed_out_when_idle():
    async def scenario():
        async with SignalingServer(
            LOOPBACK, 0, max_peers_per_room=16, max_peers_per_address_in_room=4, idle_timeout=1.0
        ) as server:
            squatters = []
            refused = 0
            for n in range(15):
                ws = await raw_websocket(server.url, OTHER_HOST)
                await ws.send(f'{{"type":"register","room":"r","role":"client","peer_id":"s{n}"}}')
                reply = await ws.recv()
                refused += '"room-full"' in reply or '"server-full"' in reply
                squatters.append(ws)
            in_room_before = len(server.rooms["r"])
            for _ in range(200):  # idle since registering: closed after the 1 s idle timeout
                if not server.rooms.get("r"):
                    break
                await asyncio.sleep(0.05)
            in_room_after = len(server.rooms.get("r", []))
            async with SignalingClient(server.url, "r", "worker", "w"):
                async with SignalingClient(server.url, "r", "client", "real") as client:
                    await client.send_to("w", {"kind": "offer", "sdp": "x"})
                    await asyncio.sleep(1.5)  # past the idle timeout, but it has relayed
                    stayed = "real" in server.rooms["r"]
            for ws in squatters:
                await ws.close()
            return refused, in_room_before, in_room_after, stayed

    refused, before, after, stayed = run(scenario())
    assert (refused, before, after) == (11, 4, 0)
    assert stayed


# --- authentication properties (sans-IO) ------------------------------------------------------


TRANSCRIPT_FIELDS = st.tuples(*(st.text(max_size=80) for _ in range(5)))


@given(TRANSCRIPT_FIELDS, st.integers(0, 4), st.text(min_size=1, max_size=20))
def test_auth_proofs_depend_on_every_field_and_roles_never_mix(fields, index, change):
    transcript = auth.Transcript(*fields)
    altered = list(fields)
    altered[index] = altered[index] + change
    other = auth.Transcript(*altered)
    proof = auth.client_proof("token", transcript)
    assert proof != auth.client_proof("token", other)
    assert proof != auth.client_proof("token2", transcript)
    assert proof != auth.worker_proof("token", transcript, "")
    assert auth.proofs_match(proof, auth.client_proof("token", transcript))



def test_an_old_client_hears_which_protocol_version_the_worker_speaks(tmp_path):
    worker = make_worker(None, tmp_path / "work")

    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            await peer.send(f"HELLO::1::{TOKEN}::rtc-chunked")
            return await peer.next_text()

    assert run(scenario()) == "AUTH_FAILED::unsupported protocol version 1 (this worker speaks 2)"


# --- 17: a peer leaving while this side closes -------------------------------------------------


def test_17_cancelling_a_close_while_aiortc_closes_by_itself_leaves_no_failed_task(caplog):
    """The client leaves: aiortc starts closing the worker's connection in a task of its own,
    the worker's close() joins it, and the worker's session task is then cancelled (peer-left).
    The cancel must not reach aiortc's internal future, or aiortc's task fails with
    ``InvalidStateError`` and asyncio prints "Task exception was never retrieved"."""
    import gc
    import logging

    async def scenario():
        for _ in range(3):
            _, _, close = await rtc.connect_pair_in_process()
            await close.offerer.close()  # the client is gone
            aiortc_peer = close.answerer._pc
            for _ in range(1000):  # until aiortc's own close task has begun (its private flag)
                if aiortc_peer._RTCPeerConnection__isClosed:
                    break
                await asyncio.sleep(0.001)
            closing = asyncio.create_task(close.answerer.close())
            await asyncio.sleep(0)
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
            await asyncio.sleep(0.3)
            gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(scenario())
        gc.collect()
    assert not [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
PRE_AUTH_MESSAGES = st.one_of(
    st.builds(lambda v, n, t: f"HELLO::{v}::{n}::{t}", st.integers(0, 3), HEX64 | st.text(max_size=70),
              st.sampled_from(["rtc-chunked", "shared-fs,rtc-chunked", "x"])),
    st.builds(lambda p: f"AUTH_PROOF::{p}", HEX64 | st.text(max_size=70)),
    st.sampled_from(["JOB_SUBMIT::j::rtc-chunked", "SHARED_INPUT_PATH::jobs/x.zip", "WELCOME::2::x::none",
                     f"FILE_META::{'ab' * 16}::f::1::{'0' * 64}::1"]),
    st.text(max_size=100),
    st.binary(max_size=64),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PRE_AUTH_MESSAGES, min_size=1, max_size=6))
def test_no_sequence_of_messages_without_the_token_authenticates(tmp_path_factory, messages):
    """Whatever a peer without the token sends before authenticating, it never gets WELCOME,
    gets only authentication replies or protocol errors, and nothing is made on disk."""
    work = tmp_path_factory.mktemp("preauth")
    worker = make_worker(None, work)

    async def scenario():
        async with worker_session(worker, authenticate=False) as peer:
            for message in messages:
                if peer.channel.closed:
                    break
                with contextlib.suppress(Exception):
                    await peer.send(message)
            with contextlib.suppress(Exception):
                while True:
                    peer.received.append(await asyncio.wait_for(peer.channel.recv(), 0.3))
            return peer.received

    replies = run(scenario())
    kinds = {r.split("::")[0] for r in replies if isinstance(r, str)}
    assert kinds <= {"AUTH_CHALLENGE", "AUTH_FAILED", "PROTOCOL_ERROR", "FILE_ERROR"}, replies
    assert list(work.iterdir()) == []
