"""A worker as a real process under attack: a real ``rtcxfer signal`` (run without a token, so that
the worker's own token carries the weight) and a real ``rtcxfer worker``, attacked by peers in
this test process; what its jobs inherit and what outlives them.

Every process is stopped by its own pid; everything listens on 127.0.0.1 only. Timeouts are
hang guards, never assertions about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.client.sample import build_sample_package, sample_text
from rtcxfer.net import peer as rtc
from rtcxfer.net.signaling import Relay, SignalingClient
from rtcxfer.net.signaling.handshake import SdpAnswer, SdpOffer, decode_handshake
from rtcxfer.protocol import auth
from rtcxfer.protocol.errors import SignalingError
from rtcxfer.testing import run_async
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.job_files import job_package
from rtcxfer.testing.processes import WORKER_READY, CliProcess, cli_command
from tests.support import cli
from tests.support.worker_harness import hold_sockets

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl and POSIX signals"),
]

TOKEN = f"hardening-{os.urandom(6).hex()}"
ROOM = "hardening"
#: Secrets in the worker's environment that no job may see.
SECRETS = {"RTCXFER_TOKEN": TOKEN, "AWS_SECRET_ACCESS_KEY": "aws-secret-0", "RTCXFER_S3_SECRET_KEY": "s3-secret-0"}
GUARD = 60.0


def environment(**extra: str) -> dict[str, str]:
    """The command's environment at INFO, without the developer's AWS settings: the secrets that
    reach the worker are the ones this module gives it."""
    env = {k: v for k, v in cli.environment("INFO").items() if not k.startswith("AWS_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("hardening")
    # No --token: rooms are open; the worker's own token must carry the weight.
    with start_cluster(
        root, token=None, env=environment(), signal_options=["--max-room-peers-per-address", "16"]
    ) as cluster:
        # The token comes from the environment, like the other secrets there.
        cluster.worker = cluster.start_worker(
            ROOM,
            "--auth-timeout",
            "4",
            "--max-unauthenticated",
            "4",
            name="worker",
            work_dir=root / "work",
            env=environment(**SECRETS),
        )
        yield cluster


async def job(cluster: Cluster, package: Path, room: str = ROOM) -> Path:
    client = RTCClient(token=TOKEN, results_dir=cluster.root / "results", detect_shared_storage=False)
    async with client:
        await client.connect(cluster.url, room, timeout=30)
        result = await client.submit(package)
    assert result.ok, f"{result.failure}: {result.log_tail}"
    return result.results_dir


def sample_job(cluster: Cluster, tag: str) -> None:
    data = sample_text(50) + tag.encode()
    results = run_async(job(cluster, build_sample_package(cluster.root / f"{tag}.zip", data=data)))
    assert (results / "summary.txt").read_text().endswith(f"sha256={hashlib.sha256(data).hexdigest()}\n")


def program_package(cluster: Cluster, name: str, program: str) -> Path:
    return job_package(cluster.root / f"{name}.zip", program, timeout_seconds=60)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def flood_offers(url: str, peers: int, offers_each: int, room: str = ROOM, linger: float = 1.0) -> None:
    """``peers`` peers without the worker's token each send ``offers_each`` copies of a valid
    offer, then stay ``linger`` seconds in the room (leaving would end their sessions)."""
    offerer = rtc.PeerConnection()
    offer = {"kind": "offer", "sdp": await offerer.create_offer()}
    attackers = [SignalingClient(url, room, "client", f"attacker-{n}") for n in range(peers)]
    try:
        for attacker in attackers:
            await attacker.connect()
        for _ in range(offers_each):
            for attacker in attackers:
                with contextlib.suppress(SignalingError):  # the server may close a flooder
                    await attacker.send_to("worker", offer)
        await asyncio.sleep(linger)
    finally:
        for attacker in attackers:
            await attacker.close()
        await offerer.close()


# --- offers flooded at a running worker -----------------------------------------------------------


def test_flooded_offers_neither_stop_the_worker_nor_exhaust_its_descriptors(cluster):
    """Two peers without the worker's token relay a couple of hundred copies of a valid offer,
    then ten more peers five each (many attackers, scaled down); one offers and leaves at once
    (unknown-peer). The worker never exits, creates at most its few startup
    sessions (its open descriptors stay bounded far below one per offer), and serves a real
    client afterwards."""
    pid = cluster.worker.process.pid
    before = open_fds(pid)
    peak = before

    async def attack():
        nonlocal peak
        watcher = asyncio.create_task(watch())
        await flood_offers(cluster.url, peers=2, offers_each=100)
        async with SignalingClient(cluster.url, ROOM, "client", "hit-and-run") as leaver:
            offerer = rtc.PeerConnection()
            await leaver.send_to("worker", {"kind": "offer", "sdp": await offerer.create_offer()})
            await offerer.close()
        await flood_offers(cluster.url, peers=10, offers_each=5)
        await asyncio.sleep(1.0)
        watcher.cancel()

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, open_fds(pid))
            await asyncio.sleep(0.02)

    run_async(attack())
    assert cluster.worker.process.poll() is None, cluster.worker.text()
    log = cluster.worker.text()
    assert "dropped an offer" in log
    # 215 offers from 13 peers; at most 4 sessions start at a time (--max-unauthenticated 4),
    # each a UDP socket or so: the old worker made one peer connection per offer.
    assert peak - before <= 12, f"{before} -> {peak} descriptors"
    time.sleep(4.5)  # the attackers' sessions reach their authentication deadline
    sample_job(cluster, "after-flood")
    assert cluster.worker.process.poll() is None


async def squat(url: str, room: str, squatters: int, stop: asyncio.Event) -> int:
    """``squatters`` peers holding only the signaling token, each re-sending one canned offer a
    second until ``stop``; how many offers went."""
    offerers = [rtc.PeerConnection() for _ in range(squatters)]
    offers = [{"kind": "offer", "sdp": await offerer.create_offer()} for offerer in offerers]
    clients = [SignalingClient(url, room, "client", f"squatter-{n}") for n in range(squatters)]
    sent = 0
    try:
        for client in clients:
            await client.connect()
        while not stop.is_set():
            for client, offer in zip(clients, offers):
                with contextlib.suppress(SignalingError):
                    await client.send_to("worker", offer)
                    sent += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        for client in clients:
            await client.close()
        for offerer in offerers:
            await offerer.close()
    return sent


def test_squatters_re_sending_canned_offers_do_not_keep_a_real_client_out(cluster):
    """Eight peers without the worker's token keep all eight pre-authentication places of a
    worker with the default limits by re-sending canned offers; a real submit still gets in
    (random early drop, the oldest handshake evicted, its offer re-sent) and its job runs
    (hardening round two, finding 6)."""
    room = "squatted"
    worker = cluster.start_worker(
        room, name="worker-squatted", work_dir=cluster.root / "w-squatted", env=environment(RTCXFER_TOKEN=TOKEN)
    )
    package = build_sample_package(cluster.root / "squatted.zip", data=sample_text(30) + b"squatted\n")

    async def scenario():
        stop = asyncio.Event()
        squatting = asyncio.create_task(squat(cluster.url, room, 8, stop))
        await asyncio.sleep(3)  # every place taken, and kept by the re-sent offers
        command = cli_command("submit", str(package), "--signal", cluster.url, "--room", room, "--token", TOKEN)
        command += ["--timeout", "90", "--results", str(cluster.root / "r-squatted")]
        try:
            submit = await asyncio.create_subprocess_exec(
                *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(), cwd=cluster.root
            )
            out, err = await asyncio.wait_for(submit.communicate(), 120)
        finally:
            stop.set()
            sent = await squatting
        return submit.returncode, out.decode(), err.decode(), sent

    try:
        code, out, err, sent = run_async(scenario(), 180)
    finally:
        worker.stop()
    assert code == 0, err
    assert "complete on worker worker" in out, out
    assert sent >= 24, "the squatters kept offering the whole time"
    log = worker.text()
    assert "unauthenticated places taken" in log or "makes way for" in log, log[-3000:]


# --- an impostor worker ---------------------------------------------------------------------------


async def impostor(
    url: str, room: str, seen: list[str], stop: asyncio.Event, peer_id: str = "worker", description=None
) -> None:
    """Registers as a worker (describing itself as ``description`` says) and plays one:
    challenges, then claims a WELCOME it cannot prove."""
    async with SignalingClient(url, room, "worker", peer_id, description=description) as signaling:
        while not stop.is_set():
            try:
                event = await signaling.receive(timeout=0.2)
            except SignalingError:
                continue
            offer = decode_handshake(event.payload) if isinstance(event, Relay) else None
            if not isinstance(offer, SdpOffer):
                continue
            peer = rtc.PeerConnection()
            await signaling.send_to(event.sender, SdpAnswer(await peer.accept_offer(offer.sdp)).to_payload())
            channel = await peer.wait_channel_open(30)
            with contextlib.suppress(Exception):
                while True:
                    message = await asyncio.wait_for(channel.recv(), 5)
                    seen.append(message)
                    if message.startswith("HELLO::"):
                        await channel.send_text(f"AUTH_CHALLENGE::{auth.new_nonce()}")
                    elif message.startswith("AUTH_PROOF::"):
                        await channel.send_text(f"WELCOME::2::rtc-chunked,shared-fs::{'0' * 64}")
            await peer.close()


def test_an_impostor_worker_gets_no_token_and_no_job_and_the_real_worker_waits_it_out(cluster):
    room = "impostor"
    package = build_sample_package(cluster.root / "impostor.zip", data=b"secret data\n")
    seen: list[str] = []

    async def scenario():
        stop = asyncio.Event()
        squatting = asyncio.create_task(impostor(cluster.url, room, seen, stop))
        await asyncio.sleep(0.5)
        real = cluster.start_worker(
            room, name="worker-impostor-room", work_dir=cluster.root / "w2", env=environment(RTCXFER_TOKEN=TOKEN),
            wait=False,
        )  # fmt: skip
        command = cli_command("submit", str(package), "--signal", cluster.url, "--room", room, "--token", TOKEN)
        command += ["--quiet", "--timeout", "20", "--results", str(cluster.root / "r-impostor")]
        submit = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(), cwd=cluster.root
        )
        out, err = await asyncio.wait_for(submit.communicate(), GUARD)
        stop.set()
        await squatting
        return real, submit.returncode, err.decode()

    real, code, err = run_async(scenario())
    assert code == 3, err
    assert "could not prove it knows the token" in err and "Your --token is not in question" in err, err
    assert seen and not any(TOKEN in message for message in seen)
    assert [m.split("::")[0] for m in seen] == ["HELLO", "AUTH_PROOF"]  # nothing after: no job, no path
    # The real worker found its id taken, said so, and did not exit; now it registers.
    real.wait_for(WORKER_READY, GUARD)
    assert "another peer is registered as 'worker'" in real.text()
    sample_job_in(cluster, room)
    real.stop()


#: What an impostor claims to be: more than any real worker of the room.
EIGHT_H100 = {
    "state": "idle",
    "slots": 8,
    "running": 0,
    "gpus": [{"model": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}] * 8,
    "transports": ["rtc-chunked", "shared-fs"],
}


def test_an_impostor_advertising_the_best_hardware_is_skipped_for_the_real_worker(cluster):
    """Picked first for its eight H100s, the impostor fails to prove the token; submit says the
    worker failed (not the user's token), tries the real worker, and the job runs there
    (hardening round two, finding 4)."""
    room = "impostor-h100"
    package = build_sample_package(cluster.root / "h100.zip", data=sample_text(20) + b"h100\n")
    seen: list[str] = []

    async def scenario():
        stop = asyncio.Event()
        squatting = asyncio.create_task(impostor(cluster.url, room, seen, stop, "gpu-h100", EIGHT_H100))
        real = cluster.start_worker(
            room, "--peer-id", "gpu-real", name="worker-real-h100", work_dir=cluster.root / "w-h100",
            env=environment(RTCXFER_TOKEN=TOKEN),
        )  # fmt: skip
        try:
            command = cli_command("submit", str(package), "--signal", cluster.url, "--room", room, "--token", TOKEN)
            command += ["--timeout", "30", "--results", str(cluster.root / "r-h100")]
            submit = await asyncio.create_subprocess_exec(
                *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(), cwd=cluster.root
            )
            out, err = await asyncio.wait_for(submit.communicate(), GUARD)
        finally:
            stop.set()
            await squatting
            real.stop()
        return submit.returncode, out.decode(), err.decode()

    code, out, err = run_async(scenario())
    assert code == 0, err
    assert "worker gpu-h100: the peer posing as the worker could not prove it knows the token" in err, err
    assert "trying the next worker" in err and "Check that --token" not in err
    assert "complete on worker gpu-real" in out, out
    assert [m.split("::")[0] for m in seen] == ["HELLO", "AUTH_PROOF"]  # the impostor got no job


def sample_job_in(cluster: Cluster, room: str) -> None:
    data = sample_text(20) + room.encode()
    run_async(job(cluster, build_sample_package(cluster.root / f"{room}-ok.zip", data=data), room))


# --- starting and stopping a worker ---------------------------------------------------------------


def test_worker_refuses_to_start_without_a_token_and_warns_loudly_when_told_to(cluster):
    refused = cluster.run("worker", "--signal", cluster.url, "--room", "no-token", timeout=GUARD)
    assert refused.returncode == 2
    assert "a worker needs a token" in refused.stderr and "--insecure-no-token" in refused.stderr
    insecure = cluster.start_worker("insecure", "--insecure-no-token", name="worker-insecure", wait=False)
    insecure.wait_for(WORKER_READY)
    assert "WARNING: --insecure-no-token" in insecure.text()
    insecure.stop()


def test_a_workers_temporary_directory_goes_with_it(cluster):
    worker = cluster.start_worker("tempdir", name="worker-tempdir", env=environment(RTCXFER_TOKEN=TOKEN), wait=False)
    worker.wait_for(WORKER_READY)
    work_dir = Path(re.search(r"work directory (\S+)", worker.text()).group(1))
    assert work_dir.is_dir()
    worker.stop()
    assert worker.process.returncode is not None
    assert not work_dir.exists()


# --- what a job inherits and what outlives it -----------------------------------------------------


def test_jobs_do_not_see_the_workers_secrets(cluster):
    program = (
        "import os, pathlib\n"
        "out = pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'])\n"
        "(out / 'env.txt').write_text('\\n'.join(f'{k}={v}' for k, v in sorted(os.environ.items())))\n"
    )
    results = run_async(job(cluster, program_package(cluster, "show-env", program)))
    seen = (results / "env.txt").read_text()
    for name, value in SECRETS.items():
        assert name not in seen and value not in seen
    assert re.search(r"^PATH=", seen, re.MULTILINE) and "RTCXFER_OUTPUT_DIR=" in seen


def test_a_grandchild_that_calls_setsid_does_not_outlive_its_job(cluster):
    program = (
        "import os, pathlib, sys, time\n"
        "out = pathlib.Path(os.environ['RTCXFER_OUTPUT_DIR'])\n"
        "read, write = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"  # a classic daemon: a new session, then orphaned
        "        os.write(write, str(os.getpid()).encode())\n"
        "        for fd in (0, 1, 2):\n"
        "            os.close(fd)\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "(out / 'escapee.txt').write_bytes(os.read(read, 32))\n"
    )
    results = run_async(job(cluster, program_package(cluster, "setsid", program)))
    escapee = int((results / "escapee.txt").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(escapee):
        time.sleep(0.05)
    assert not alive(escapee), f"pid {escapee} outlived its job"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


ESCAPING_PROGRAM = (
    "import os, time\n"
    "print(open('/proc/self/cgroup').read().splitlines()[-1], flush=True)\n"
    "read, write = os.pipe()\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        os.write(write, str(os.getpid()).encode())\n"
    "        time.sleep(300)\n"
    "    os._exit(0)\n"
    "print('escapee', os.read(read, 32).decode(), flush=True)\n"
)


@pytest.mark.parametrize("mode", ["cgroup-if-writable", "--no-cgroup"])
def test_the_job_supervisor_tracks_setsid_escapees_by_cgroup_or_as_subreaper(tmp_path, mode):
    from rtcxfer.worker import jobrunner

    program = tmp_path / "escape.py"
    program.write_text(ESCAPING_PROGRAM)
    options = ["--no-cgroup"] if mode == "--no-cgroup" else []
    probe = jobrunner.JobCgroup.create() if not options else None
    if probe is not None:
        probe.remove()
    done = subprocess.run(
        [sys.executable, "-I", jobrunner.__file__, *options, "--grace", "1", "--", sys.executable, str(program)],
        capture_output=True, text=True, timeout=GUARD,
    )
    assert done.returncode == 0, done.stderr
    cgroup_line, escapee_line = done.stdout.splitlines()[:2]
    assert ("rtcxfer-job-" in cgroup_line) == (probe is not None)
    escapee = int(escapee_line.split()[1])
    assert not alive(escapee), f"pid {escapee} outlived its job ({mode})"


# --- one address against the real server ----------------------------------------------------------


def test_one_address_cannot_take_the_real_servers_sockets_from_the_others(cluster):
    """A client that holds the server's unregistered sockets, from 127.0.0.2 (another
    loopback address: "another host"): beyond its share (8 of --max-per-address 64) it is
    refused at once, while a peer from 127.0.0.1 still registers."""
    async def scenario():
        refused, held = await hold_sockets(cluster.url, "127.0.0.2", 20)
        async with SignalingClient(cluster.url, "elsewhere", "client") as legit:
            registered = legit.connected
        for ws in held:
            await ws.close()
        return refused, registered

    refused, registered = run_async(scenario())
    assert refused == 12 and registered


# --- the token does not go to the signaling server either -----------------------------------------


def test_the_rtcxfer_command_never_sends_the_token_to_the_signaling_server(tmp_path, monkeypatch):
    """``rtcxfer worker --token T`` and ``rtcxfer signal --token T``: the server admits the
    worker, and what it received was an HMAC of T, never T (a server or a network observer
    learns nothing that authenticates to the worker)."""
    from rtcxfer.net.signaling import SignalingServer
    from rtcxfer.net.signaling import server as signaling_server

    received: list[str] = []
    decode_request = signaling_server.decode_request

    def recording(data, *args):
        received.append(data if isinstance(data, str) else repr(data))
        return decode_request(data, *args)

    # Every message the server reads goes through the decoder.
    monkeypatch.setattr(signaling_server, "decode_request", recording)

    async def scenario():
        async with SignalingServer("127.0.0.1", 0, default_token=auth.signaling_token(TOKEN)) as server:
            worker = CliProcess(
                "worker-recorded", ["worker", "--signal", server.url, "--room", "rec", "--token", TOKEN],
                tmp_path, env=environment(),
            )
            try:
                for _ in range(int(GUARD / 0.05)):
                    if "worker" in server.rooms.get("rec", []):
                        break
                    assert worker.process.poll() is None, worker.text()
                    await asyncio.sleep(0.05)
                registered = "worker" in server.rooms.get("rec", [])
            finally:
                worker.stop()
            return registered

    assert run_async(scenario())
    assert received and not any(TOKEN in message for message in received)
    assert any(auth.signaling_token(TOKEN) in message for message in received)


def test_a_job_of_the_same_user_cannot_read_the_workers_environment(tmp_path):
    """Beyond the allow-list: a job could read the token from /proc/<worker>/environ, since it
    runs as the same user. ``rtcxfer worker`` makes itself non-dumpable, which only root can
    look past. Here a process playing the worker drops to ``nobody`` (as a worker run as a
    dedicated user is) and calls the same function; its child, also ``nobody``, is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    from rtcxfer.worker import jobrunner

    script = (
        "import os, subprocess, sys\n"
        f"sys.path.insert(0, {str(Path(jobrunner.__file__).parent)!r})\n"
        "import jobrunner\n"
        "import ctypes\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        # Changing uid made this process non-dumpable; one started as nobody would not be.
        "ctypes.CDLL(None).prctl(jobrunner.PR_SET_DUMPABLE, 1, 0, 0, 0)\n"
        "protect = sys.argv[1] == 'protect'\n"
        "assert not protect or jobrunner.forbid_inspection()\n"
        # cat(1): an executable nobody may run (a private virtualenv's python may not be).
        "child = subprocess.run(['cat', f'/proc/{os.getpid()}/environ'], capture_output=True)\n"
        "print('read' if b'the-secret' in child.stdout else 'refused', child.returncode)\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "RTCXFER_TOKEN": "the-secret"}
    outcomes = {
        mode: subprocess.run([sys.executable, "-I", "-c", script, mode], capture_output=True, text=True, env=env,
                             cwd="/", timeout=GUARD)
        for mode in ("protect", "plain")
    }
    assert outcomes["plain"].stdout.split()[0] == "read", outcomes["plain"]  # the attack works unprotected
    assert outcomes["protect"].stdout.split()[0] == "refused", outcomes["protect"]
