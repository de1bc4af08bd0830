"""Benchmark: move one file with the rtc-chunked transport between two processes on 127.0.0.1.

The main process runs a signaling server on 127.0.0.1 (ephemeral port) and the sender (the
client); a subprocess runs the receiver (the worker). They connect through the server like the
real thing, with loopback-only peers, and the sender delivers one file of random bytes. Each side
reports its idle RSS (connected, before the transfer), its peak RSS during the transfer (VmHWM
after resetting it through /proc/self/clear_refs), and the growth between them.

    python benchmarks/bench_rtc_chunked.py               # 256 MiB
    python benchmarks/bench_rtc_chunked.py --size 1024   # 1 GiB, the memory target's size
    python benchmarks/bench_rtc_chunked.py --uvloop      # both processes on uvloop

Linux only (reads /proc). Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rtcxfer.engine import Session
from rtcxfer.link import Link
from rtcxfer.plugins import PluginHost
from rtcxfer.rtc import PeerOptions, connect_via, install_uvloop_if_available, signaling_adapter
from rtcxfer.signaling import SignalingClient, SignalingServer
from rtcxfer.transport import TransportContext
from rtcxfer.transports.rtc_chunked import RtcChunkedTransport

MiB = 1024 * 1024
STEP = 60.0


def memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> bool:
    """Make VmHWM start again from the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(4 * MiB, remaining))
            digest.update(block)
            handle.write(block)
            remaining -= len(block)
    return digest.hexdigest()


async def connect(url: str, room: str, role: str) -> tuple[object, Link]:
    peer_role = "client" if role == "worker" else "worker"
    async with SignalingClient(url, room, role, f"{role}-bench") as signaling:
        other = await signaling.wait_for_peer(peer_role, timeout=STEP)
        send, receive = signaling_adapter(signaling, other)
        peer, channel = await connect_via(
            send, receive, "answerer" if role == "worker" else "offerer", PeerOptions(), STEP
        )
    host = PluginHost(autoload=False)
    return peer, Link(channel, Session(host.claim, catalogue=host.catalogue), name=role)


# --- the receiver (subprocess) --------------------------------------------------------------


async def receiver(url: str, room: str, directory: Path) -> dict:
    peer, link = await connect(url, room, "worker")
    idle = memory()["VmRSS"]
    peak_reset = reset_peak()
    done = asyncio.get_running_loop().create_future()

    def on_file(received) -> None:
        if not done.done():
            done.set_result((received, time.perf_counter(), memory()["VmHWM"]))

    context = TransportContext(role="worker", incoming_dir=directory, on_file=on_file)
    link.add_handler("rtc-chunked", RtcChunkedTransport(link, context))
    runner = asyncio.create_task(link.run())
    try:
        received, finished, peak = await done
        # The sender closes once it has the acknowledgement.
        await asyncio.wait_for(link.wait_closed(), STEP)
    finally:
        await peer.close()
        await asyncio.gather(runner, return_exceptions=True)
    return {
        "idle_rss": idle,
        "peak_rss": peak,
        "peak_reset": peak_reset,
        "sha256": received.sha256,
        "size": received.size,
        "finished": finished,
    }


# --- the sender (main process) --------------------------------------------------------------


async def sender(args: argparse.Namespace, source: Path, sha256: str, workdir: Path) -> dict:
    room = f"bench-{secrets.token_hex(4)}"
    async with SignalingServer("127.0.0.1", 0) as server:
        command = [sys.executable, __file__, "--role", "receiver", "--url", server.url, "--room", room]
        command += ["--dir", str(workdir / "incoming")] + (["--uvloop"] if args.uvloop else [])
        child = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
        try:
            peer, link = await connect(server.url, room, "client")
            idle = memory()["VmRSS"]
            peak_reset = reset_peak()
            marks: dict[str, float] = {}

            def progress(name: str, done: int, total: int) -> None:
                marks.setdefault("first_chunk", time.perf_counter())
                marks.setdefault("offset", done)

            options = {"rtc-chunked": {"progress": progress}}
            context = TransportContext(role="client", incoming_dir=workdir / "unused", options=options)
            transport = RtcChunkedTransport(link, context)
            link.add_handler("rtc-chunked", transport)
            runner = asyncio.create_task(link.run())
            started = time.perf_counter()
            delivery = await transport.send_file(source, "bench.bin")
            ended = time.perf_counter()
            peak = memory()["VmHWM"]
            await peer.close()
            await asyncio.gather(runner, return_exceptions=True)
            output, _ = await asyncio.wait_for(child.communicate(), STEP)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    remote = json.loads(output.decode().strip().splitlines()[-1])
    if delivery.sha256 != sha256 or remote["sha256"] != sha256:
        raise SystemExit("SHA-256 mismatch: the benchmark moved the wrong bytes")
    return {
        "total_seconds": ended - started,
        "wire_seconds": ended - marks["first_chunk"],
        "sender": {"idle_rss": idle, "peak_rss": peak, "peak_reset": peak_reset},
        "receiver": remote,
    }


def report(size: int, result: dict, uvloop: bool) -> None:
    mb = size / 1e6
    print(f"file: {size / MiB:.0f} MiB ({size} bytes), event loop: {'uvloop' if uvloop else 'asyncio'}")
    print(f"throughput on the wire (first chunk -> FILE_ACK): {mb / result['wire_seconds']:.1f} MB/s")
    print(f"throughput end to end (incl. sender hashing):    {mb / result['total_seconds']:.1f} MB/s")
    for side in ("sender", "receiver"):
        figures = result[side]
        idle, peak = figures["idle_rss"] / MiB, figures["peak_rss"] / MiB
        note = "" if figures["peak_reset"] else " (VmHWM not reset: peak may predate the transfer)"
        print(
            f"{side:>8}: idle RSS {idle:6.1f} MiB, peak RSS {peak:6.1f} MiB, "
            f"growth {peak - idle:5.1f} MiB ({peak / idle:.2f}x idle){note}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--uvloop", action="store_true", help="run both processes on uvloop")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--role", choices=["sender", "receiver"], default="sender", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--room", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uvloop and not install_uvloop_if_available():
        raise SystemExit("uvloop is not installed")
    if args.role == "receiver":
        result = asyncio.run(receiver(args.url, args.room, args.dir))
        print(json.dumps(result), flush=True)
        return
    workdir = Path(tempfile.mkdtemp(prefix="rtcxfer-bench-")) if args.dir is None else args.dir
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        size = args.size * MiB
        source = workdir / "source.bin"
        print(f"writing {args.size} MiB of random bytes to {source} ...", flush=True)
        sha256 = make_file(source, size)
        result = asyncio.run(sender(args, source, sha256, workdir))
        report(size, result, args.uvloop)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
