"""The child processes of ``benchmarks/run.py``: one side of one benchmark case each.

Every child is started as ``python benchmarks/run.py --child ROLE ...``, connects through the
orchestrator's signaling server (or a TCP port), does its part, and prints one JSON line with
its figures as the last line of its stdout. Nothing here is imported by rtcxfer itself.

Memory: each child records its *idle* RSS once connected (before any file moves), resets the
kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) and reports ``VmHWM`` when done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

import attrs

MiB = 1024 * 1024
STEP = 120.0
STOCK_READ = 16384


def memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes (Linux)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def cpu_times() -> tuple[float, float]:
    """User and system CPU time this process (all its threads) used so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def cpu_seconds() -> float:
    """User and system CPU time this process (all its threads) used so far."""
    return sum(cpu_times())


def reset_peak() -> bool:
    """Make VmHWM start again from the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class Memory:
    def __init__(self) -> None:
        self.idle = 0
        self.idle_cpu = 0.0
        self.idle_times = (0.0, 0.0)
        self.reset = False

    def mark_idle(self) -> None:
        self.idle = memory()["VmRSS"]
        self.idle_times = cpu_times()
        self.idle_cpu = sum(self.idle_times)
        self.reset = reset_peak()

    def report(self) -> dict:
        user, system = cpu_times()
        return {
            "idle_rss": self.idle,
            "peak_rss": memory()["VmHWM"],
            "peak_reset": self.reset,
            "cpu_seconds": user + system - self.idle_cpu,
            # Apart: system time holds the kernel's share, which on the two-host bed includes the
            # emulated link's (tc tbf's timers fire on the CPU of the process that sent).
            "cpu_user_seconds": user - self.idle_times[0],
            "cpu_system_seconds": system - self.idle_times[1],
        }


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


# --- rtc: rtc-chunked and the stock aiortc pattern ------------------------------------------


async def _connect(args: argparse.Namespace, role: str):
    from rtcxfer.net.peer import PeerOptions, connect_via, signaling_adapter
    from rtcxfer.net.signaling import SignalingClient

    peer_role = "client" if role == "worker" else "worker"
    # --any-interface: across the two-host bed, whose only interface besides lo is the veth.
    options = PeerOptions(loopback_only=not args.any_interface, large_packets=not args.no_fast)
    if args.high_watermark:
        options = attrs.evolve(options, high_watermark=args.high_watermark)
    async with SignalingClient(args.url, args.room, role, f"{role}-{secrets.token_hex(3)}") as signaling:
        other = await signaling.wait_for_peer(peer_role, timeout=STEP)
        send, receive = signaling_adapter(signaling, other)
        return await connect_via(send, receive, "answerer" if role == "worker" else "offerer", options, STEP)


def _packet_report(peer) -> dict:
    size = peer.packet_size
    return {
        "sctp_packet": size.size,
        "sctp_datagram": size.datagram,
        "sctp_reason": size.reason,
        "sctp_timeouts": peer._sizer.retransmission_timeouts,
    }


async def byte_receiver(args: argparse.Namespace, name: str = "rtc-chunked") -> dict:
    """The worker side of a byte-moving transport (rtc-chunked, direct): receives until the
    sender closes the session."""
    from rtcxfer.net.link import Link
    from rtcxfer.protocol.engine import Engine
    from rtcxfer.transport.base import TransportContext
    from rtcxfer.transport.host import PluginHost

    peer, channel = await _connect(args, "worker")
    host = PluginHost(autoload=False)
    link = Link(channel, Engine(host.claim, catalogue=host.catalogue), name="worker")
    mem = Memory()
    mem.mark_idle()
    received: list[dict] = []

    def on_file(item) -> None:
        received.append({"size": item.size, "sha256": item.sha256})

    directory = Path(args.dir)
    context = TransportContext(role="worker", incoming_dir=directory, on_file=on_file)
    link.add_handler(name, host.transport(name).transport(link, context))
    try:
        await link.run()  # until the sender closes
    finally:
        await peer.close()
    for item in directory.glob("*.bin"):
        item.unlink()
    return {"files": received, **mem.report(), **_packet_report(peer)}


async def byte_sender(args: argparse.Namespace, name: str = "rtc-chunked") -> dict:
    """The client side of a byte-moving transport: negotiates, then sends each file, timed."""
    from rtcxfer.net.link import Link
    from rtcxfer.protocol.engine import Engine
    from rtcxfer.transport.base import TransportContext
    from rtcxfer.transport.host import PluginHost

    peer, channel = await _connect(args, "client")
    host = PluginHost(autoload=False)
    link = Link(channel, Engine(host.claim, catalogue=host.catalogue), name="client")
    mem = Memory()
    mem.mark_idle()
    options = {"rtc-chunked": {"chunk_size": args.chunk_size}} if args.chunk_size else {}
    context = TransportContext(role="client", incoming_dir=Path(args.dir), options=options)
    transport = host.transport(name).transport(link, context)
    link.add_handler(name, transport)
    runner = asyncio.create_task(link.run())
    if not await transport.negotiate():
        raise RuntimeError(f"{name} is not usable between these peers")
    results = []
    try:
        for index, source in enumerate(args.files):
            started = time.perf_counter()
            delivery = await transport.send_file(Path(source), f"file-{index}.bin")
            results.append({"size": delivery.size, "seconds": time.perf_counter() - started, "sha256": delivery.sha256})
    finally:
        link.close()
        await asyncio.gather(runner, return_exceptions=True)
        await peer.close()
    return {"files": results, **mem.report(), **_packet_report(peer)}


async def stock_receiver(args: argparse.Namespace) -> dict:
    """aiortc's file-transfer example, receiving side: write each message as it arrives; an
    empty message ends the file, answered with ``done``."""
    peer, channel = await _connect(args, "worker")
    raw = channel._channel  # the plain RTCDataChannel: the stock pattern uses aiortc directly
    raw.remove_listener("message", channel._on_message)
    mem = Memory()
    mem.mark_idle()
    finished = asyncio.Event()
    target = Path(args.dir) / "stock.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = open(target, "wb")
    octets = 0

    def on_message(message) -> None:
        nonlocal octets
        if message:
            octets += len(message)
            handle.write(message)
        else:
            raw.send("done")
            finished.set()

    closed = asyncio.Event()
    raw.on("message", on_message)
    raw.on("close", closed.set)
    try:
        await asyncio.wait_for(finished.wait(), 3600)
        # The sender closes once "done" reached it; closing first could drop "done" on the
        # way (stock SCTP resends it only while the association lives), leaving the sender
        # waiting for it.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closed.wait(), STEP)
    finally:
        handle.close()
        target.unlink(missing_ok=True)
        await peer.close()
    return {"octets": octets, **mem.report()}


async def stock_sender(args: argparse.Namespace) -> dict:
    """aiortc's file-transfer example, sending side: read 16 KiB, ``send``, and whenever
    ``bufferedAmount`` is above ``bufferedAmountLowThreshold`` (aiortc's default, 0) wait for
    ``bufferedamountlow``. No hashing: the stock example verifies nothing."""
    peer, channel = await _connect(args, "client")
    raw = channel._channel
    raw.remove_listener("message", channel._on_message)
    mem = Memory()
    mem.mark_idle()
    done = asyncio.Event()
    low = asyncio.Event()
    raw.on("message", lambda message: done.set() if message == "done" else None)
    raw.on("bufferedamountlow", low.set)
    results = []
    try:
        for source in args.files:
            done.clear()
            started = time.perf_counter()
            size = 0
            with open(source, "rb") as handle:
                while True:
                    data = handle.read(STOCK_READ)
                    raw.send(data)
                    size += len(data)
                    if not data:
                        break
                    while raw.bufferedAmount > raw.bufferedAmountLowThreshold:
                        low.clear()
                        await low.wait()
            await asyncio.wait_for(done.wait(), STEP)
            results.append({"size": size, "seconds": time.perf_counter() - started})
    finally:
        await peer.close()
    return {"files": results, **mem.report()}


# --- raw asyncio TCP ------------------------------------------------------------------------


async def tcp_receiver(args: argparse.Namespace) -> dict:
    target = Path(args.dir) / "tcp.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    finished = asyncio.Event()
    octets = 0
    mem = Memory()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal octets
        expected = int.from_bytes(await reader.readexactly(8), "big")
        with open(target, "wb") as handle:
            while octets < expected:
                block = await reader.read(1 << 20)
                if not block:
                    break
                handle.write(block)
                octets += len(block)
        writer.write(b"k")
        await writer.drain()
        writer.close()
        finished.set()

    server = await asyncio.start_server(serve, args.host, 0)
    port = server.sockets[0].getsockname()[1]
    mem.mark_idle()
    print(json.dumps({"port": port}), flush=True)
    async with server:
        await asyncio.wait_for(finished.wait(), STEP * 10)
    target.unlink(missing_ok=True)
    return {"octets": octets, **mem.report()}


async def tcp_sender(args: argparse.Namespace) -> dict:
    mem = Memory()
    mem.mark_idle()
    results = []
    for source in args.files:
        size = os.path.getsize(source)
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(args.host, args.port)
        writer.write(size.to_bytes(8, "big"))
        with open(source, "rb") as handle:
            while block := handle.read(1 << 20):
                writer.write(block)
                await writer.drain()
        await reader.readexactly(1)
        writer.close()
        results.append({"size": size, "seconds": time.perf_counter() - started})
    return {"files": results, **mem.report()}


# --- TLS over several connections at once (does more than one connection pay?) ---------------


def _tls_receive_range(tls, target: str) -> int:
    """One connection's range: a 16-byte header (offset, length), then the bytes, written at
    their offset; answered with one byte. Blocking."""
    import struct

    offset, length = struct.unpack(">QQ", tls.recv_exactly(16))
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    fd = os.open(target, os.O_WRONLY)
    try:
        done = 0
        while done < length:
            wanted, filled = min(MiB, length - done), 0
            while filled < wanted:  # a whole MiB per write, as direct does
                count = tls.recv_into(view[filled:wanted], wanted - filled)
                if not count:
                    raise ConnectionError("closed early")
                filled += count
            os.pwrite(fd, view[:filled], offset + done)
            done += filled
    finally:
        os.close(fd)
    tls.sendall(b"k")
    return done


async def tls_receiver(args: argparse.Namespace) -> dict:
    """``--streams`` TLS 1.3 connections (direct's certificate, settings and TLS engine), each
    one range."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from rtcxfer.transports.direct_tls import TlsStream, identity

    server = identity().server_context
    target = Path(args.dir) / "streams.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"")
    listener = socket.create_server((args.host, 0))
    mem = Memory()
    mem.mark_idle()
    emit({"port": listener.getsockname()[1], "fingerprint": identity().fingerprint})

    def serve_one() -> int:
        raw, _ = listener.accept()
        with raw:
            tls = TlsStream(raw, server, server_side=True)
            tls.handshake()
            return _tls_receive_range(tls, str(target))

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(args.streams) as pool:
        octets = sum(await asyncio.gather(*(loop.run_in_executor(pool, serve_one) for _ in range(args.streams))))
    listener.close()
    target.unlink()
    return {"octets": octets, **mem.report()}


async def tls_sender(args: argparse.Namespace) -> dict:
    import socket
    import struct
    from concurrent.futures import ThreadPoolExecutor

    from rtcxfer.transports.direct_tls import TlsStream, _client_context

    source = args.files[0]
    size = os.path.getsize(source)
    share = -(-size // args.streams)
    ranges = [(start, min(share, size - start)) for start in range(0, size, share)]
    mem = Memory()
    mem.mark_idle()

    def send_range(offset: int, length: int) -> None:
        raw = socket.create_connection((args.host, args.port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with raw, open(source, "rb", buffering=0) as handle:
            tls = TlsStream(raw, _client_context(), server_side=False)
            tls.handshake()
            handle.seek(offset)
            tls.sendall(struct.pack(">QQ", offset, length))
            buffer = bytearray(MiB)
            view = memoryview(buffer)
            left = length
            while left:
                count = handle.readinto(view[: min(MiB, left)])
                tls.sendall(view[:count])
                left -= count
            assert tls.recv_exactly(1) == b"k"

    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    with ThreadPoolExecutor(len(ranges)) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, send_range, *each) for each in ranges))
    return {"files": [{"size": size, "seconds": time.perf_counter() - started}], **mem.report()}


# --- shared-fs job submission ---------------------------------------------------------------


async def sfs_worker(args: argparse.Namespace) -> dict:
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

    async def executor(context) -> None:  # the job run is not what is measured
        return None

    worker = RTCWorkerClient(token=args.token, shared_storage_root=args.root, work_dir=args.dir, executor=executor)
    mem = Memory()
    serving = asyncio.create_task(worker.serve(args.url, args.room, on_ready=mem.mark_idle))
    # The orchestrator closes our stdin once the client is done.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    return mem.report()


async def sfs_client(args: argparse.Namespace) -> dict:
    """Times, per package, what a submission over shared-fs costs on the wire: the probe
    (SHARED_PROBE -> result), SHARED_OUTPUT_PATH -> PATH_VALIDATED::output and
    SHARED_INPUT_PATH -> the worker's validation -> PATH_VALIDATED::input.

    One session per package, as one submission each: the worker takes a session's first input
    as its job's package and answers about it (here PATH_ERROR, the bytes are no ZIP) after
    PATH_VALIDATED, which must not be read as the answer to the next package's request.
    """
    from rtcxfer.client.rtc_client import RTCClient
    from rtcxfer.net.peer import PeerOptions
    from rtcxfer.transport.host import PluginHost

    mem = Memory()
    results = []
    for index, source in enumerate(args.files):
        client = RTCClient(
            token=args.token,
            shared_storage_root=args.root,
            results_dir=Path(args.dir) / "results",
            plugins=PluginHost(autoload=False),
            peer_options=PeerOptions(),
        )
        async with client:
            await client.connect(args.url, args.room)
            if "shared-fs" not in client.session_transports:
                raise SystemExit("shared-fs did not negotiate between the benchmark's peers")
            if index == 0:
                mem.mark_idle()
            shared = client.transports["shared-fs"]
            started = time.perf_counter()
            verified = await shared.negotiate()
            await shared.request_output(f"rtcxfer-results/bench-{index}-{secrets.token_hex(3)}")
            delivery = await shared.send_file(Path(source), Path(source).name)
            elapsed = time.perf_counter() - started
            if not verified or delivery.size != os.path.getsize(source):
                raise SystemExit("shared-fs submission did not validate")
            results.append({"size": delivery.size, "seconds": elapsed})
    return {"files": results, **mem.report()}


# --- the S3 plugin --------------------------------------------------------------------------


def _s3_options(args: argparse.Namespace) -> dict:
    return {"s3": {"url": args.s3_url, "endpoint_url": args.s3_endpoint, "cleanup": True}}


async def s3_side(args: argparse.Namespace, role: str) -> dict:
    from rtcxfer.net.link import Link
    from rtcxfer.protocol.engine import Engine
    from rtcxfer.transport.base import TransportContext
    from rtcxfer.transport.host import PluginHost

    peer, channel = await _connect(args, role)
    host = PluginHost()
    info = {t.name: t for t in host.transports()}["s3"]
    link = Link(channel, Engine(host.claim, catalogue=host.catalogue), name=role)
    mem = Memory()
    mem.mark_idle()
    results = []
    received = []
    context = TransportContext(
        role=role, incoming_dir=Path(args.dir), options=_s3_options(args), on_file=lambda f: received.append(f.size)
    )
    transport = info.transport(link, context)
    link.add_handler("s3", transport)
    runner = asyncio.create_task(link.run())
    try:
        if role == "client":
            if not await transport.negotiate():
                raise SystemExit("the s3 transport did not negotiate")
            for index, source in enumerate(args.files):
                started = time.perf_counter()
                delivery = await transport.send_file(Path(source), f"s3-{index}.bin")
                results.append({"size": delivery.size, "seconds": time.perf_counter() - started})
            link.close()
        await runner
    finally:
        await peer.close()
    for item in Path(args.dir).glob("s3-*.bin"):
        item.unlink()
    return {"files": results, "received": received, **mem.report()}


# --- ablation: direct without SHA-256 ------------------------------------------------------


class _NoDigest:
    """Stands in for a sha256 object that is never fed (the ablation's point)."""

    #: What it answers: zeros (an ablated sender's END), or the hash the receiver checks against.
    answer = "0" * 64

    def update(self, data) -> None:
        pass

    def hexdigest(self) -> str:
        return self.answer


def skip_sha256(where: str) -> None:
    """Benchmark-only ablation, not a mode rtcxfer offers: ``receiver`` drops the receiver's
    SHA-256 pass over the bytes (and its comparison), ``sender`` the sender's (its END then
    announces zeros, which only an ablated receiver accepts). Shows what each pass costs."""
    import hashlib
    import types

    from rtcxfer.files import receiving
    from rtcxfer.transports import direct

    def sha256(data: bytes = b""):
        return hashlib.sha256(data) if data else _NoDigest()  # transfer ids still hash their key

    stand_in = types.SimpleNamespace(sha256=sha256)
    if where == "receiver":
        receiving.hashlib = stand_in
        verify = receiving.IncomingFile.verify

        def size_only(self, sha256: str | None = None) -> str:
            # The stand-in digest answers the expected hash: only the size is really checked.
            _NoDigest.answer = sha256 or self.sha256 or "0" * 64
            return verify(self, sha256)

        receiving.IncomingFile.verify = size_only
    elif where == "sender":
        direct.hashlib = stand_in


# --- entry ----------------------------------------------------------------------------------

ROLES = {
    "chunked-send": byte_sender,
    "chunked-recv": byte_receiver,
    "direct-send": lambda args: byte_sender(args, "direct"),
    "direct-recv": lambda args: byte_receiver(args, "direct"),
    "tls-send": tls_sender,
    "tls-recv": tls_receiver,
    "stock-send": stock_sender,
    "stock-recv": stock_receiver,
    "tcp-send": tcp_sender,
    "tcp-recv": tcp_receiver,
    "sfs-worker": sfs_worker,
    "sfs-client": sfs_client,
    "s3-send": lambda args: s3_side(args, "client"),
    "s3-recv": lambda args: s3_side(args, "worker"),
}


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=sorted(ROLES), required=True)
    parser.add_argument("--url")
    parser.add_argument("--room")
    parser.add_argument("--dir")
    parser.add_argument("--root")
    parser.add_argument("--token")
    parser.add_argument("--port", type=int)
    parser.add_argument("--files", nargs="*", default=[])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--no-fast", action="store_true")
    parser.add_argument("--any-interface", action="store_true")
    parser.add_argument("--host", default="127.0.0.1", help="TCP cases: the receiver's address")
    parser.add_argument("--high-watermark", type=int)
    parser.add_argument("--chunk-size", type=int)
    parser.add_argument("--s3-url")
    parser.add_argument("--s3-endpoint")
    parser.add_argument("--streams", type=int, default=1, help="TLS connections at once (tls-send/tls-recv)")
    parser.add_argument("--fingerprint")
    parser.add_argument("--skip-sha256", action="append", default=[], choices=["sender", "receiver"])
    args = parser.parse_args(argv)
    for where in args.skip_sha256:
        skip_sha256(where)
    if args.loop == "uvloop":
        from rtcxfer.net.peer import install_uvloop_if_available

        if not install_uvloop_if_available():
            raise SystemExit("uvloop is not installed")
    profile_dir = os.environ.get("RTCXFER_BENCH_PROFILE")
    if profile_dir:
        import cProfile

        # CPU time of the thread (the event loop's), not wall time: on a busy machine wall time
        # would charge other processes' turns on the CPU to whatever function was running.
        profiler = cProfile.Profile(time.thread_time)
        result = profiler.runcall(asyncio.run, ROLES[args.child](args))
        profiler.dump_stats(os.path.join(profile_dir, f"{args.child}-{os.getpid()}.prof"))
    else:
        result = asyncio.run(ROLES[args.child](args))
    result["loop"] = args.loop
    emit(result)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
