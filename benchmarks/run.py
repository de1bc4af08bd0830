"""rtcxfer benchmarks: every transport side by side, interleaved rounds, one invocation.

    python benchmarks/run.py              # the full run (5 rounds, 1 GiB cases included)
    python benchmarks/run.py --quick      # 1 round, smaller files, no 1 GiB rtc-chunked
    python benchmarks/run.py --rounds 5   # more rounds
    python benchmarks/run.py --two-host   # instead: two network namespaces (root; two_host.py)
    python benchmarks/run.py --signaling  # instead: signaling relay rate and latency (signaling.py)
    python benchmarks/run.py --two-host --vs-scp [--quick]   # scp up, ssh run, scp back vs submit (two_host_scp.py)
    python benchmarks/run.py --two-host --baseline REV       # rtc-chunked against commit REV's (two_host_chunked.py)

Every case runs in child processes (this script with ``--child ROLE``, see ``_children.py``)
that connect through a signaling server this process runs on 127.0.0.1: two processes per
data-channel case, exactly as a client and a worker would. Per round, in this order:

* ``rtc-chunked`` (uvloop where installed, SHA-256 verification on), the stock aiortc file
  transfer pattern (asyncio, 16 KiB reads, no verification) and raw asyncio TCP, each moving the
  same file of ``--size`` MiB between two processes;
* shared-fs job submission (a real ``RTCClient`` and a real ``RTCWorkerClient``, two processes)
  for 1 MiB, 64 MiB and 1 GiB packages: probe, ``SHARED_OUTPUT_PATH``, ``SHARED_INPUT_PATH`` and
  the worker's validation, up to ``PATH_VALIDATED::input``;
* ``rtc-chunked`` for the 1 MiB package (the 64 MiB one is the first case);
* the S3 plugin against moto's server on 127.0.0.1, when ``rtcxfer_s3`` and moto import;
* the frame codec, in this process.

After the rounds, ``rtc-chunked`` moves the 1 GiB package once (about 10-60 s), which gives the
shared-fs ratio for 1 GiB and the memory figures for 1 GiB.

Linux only (``/proc``). Nothing is sent anywhere but 127.0.0.1 (with ``--two-host``: but the
veth pair between the two namespaces it makes). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:
    sys.path.insert(1, str(HERE.parent))

MiB = 1024 * 1024
CHILD_TIMEOUT = 900.0


# --- files ----------------------------------------------------------------------------------


def make_file(path: Path, size: int) -> None:
    """``size`` bytes of incompressible data, fast: a 16 MiB random block written repeatedly."""
    block = os.urandom(min(size, 16 * MiB))
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            piece = block[: min(len(block), remaining)]
            handle.write(piece)
            remaining -= len(piece)


# --- running children -----------------------------------------------------------------------


def _last_json(output: bytes) -> dict:
    for line in reversed(output.decode().strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"a benchmark child printed no result: {output[-2000:]!r}")


def _idle_and_total() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, all


async def settle(idle_share: float = 0.9, interval: float = 0.25, limit: float = 5.0) -> None:
    """Wait (at most ``limit`` s) until the CPUs were idle ``idle_share`` of ``interval``.

    The kernel goes on working for a few seconds after a case (which work was not pinned
    down): measured here, the first direct transfer right after raw TCP ran 10-15 % slower
    than the next one, and with a 3 s pause in between it did not.
    """
    deadline = time.monotonic() + limit
    idle, total = _idle_and_total()
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        now_idle, now_total = _idle_and_total()
        if now_total > total and (now_idle - idle) / (now_total - total) >= idle_share:
            return
        idle, total = now_idle, now_total


async def quiet() -> None:
    """Before a case: nothing of the one before (dirty pages, the kernel's clean-up) may land
    in its time. Every case of every benchmark here starts with this."""
    os.sync()
    await settle()


async def spawn(
    role: str, *args: str, stdin: bool = False, prefix: list[str] = (), root: Path | None = None
) -> asyncio.subprocess.Process:
    """A child ``run.py --child ROLE``; ``prefix`` runs it elsewhere (``ip netns exec NS``);
    ``root``: another source tree's benchmarks and rtcxfer (an older commit's, say)."""
    root = root or HERE.parent
    command = [*prefix, sys.executable, str(root / "benchmarks" / "run.py"), "--child", role, *args]
    return await asyncio.create_subprocess_exec(
        *command,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])},
    )


async def finish(process: asyncio.subprocess.Process, name: str) -> dict:
    try:
        output, _ = await asyncio.wait_for(process.communicate(), CHILD_TIMEOUT)
    except BaseException:
        if process.returncode is None:
            process.kill()  # only the child this script started, by its own handle
            await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child {name} failed (exit {process.returncode})")
    return _last_json(output)


class Runner:
    def __init__(self, args: argparse.Namespace, url: str, workdir: Path) -> None:
        self.args = args
        self.url = url
        self.workdir = workdir

    def _room(self) -> str:
        return f"bench-{secrets.token_hex(4)}"

    async def pair(self, kind: str, files: list[Path], *, loop: str, fast: bool = True, extra=()) -> tuple[dict, dict]:
        """Receiver and sender of one data-channel case; returns (sender, receiver) results."""
        await quiet()
        room = self._room()
        common = ["--url", self.url, "--room", room, "--loop", loop, *extra] + ([] if fast else ["--no-fast"])
        receiver = await spawn(f"{kind}-recv", *common, "--dir", str(self.workdir / "incoming"))
        sender = await spawn(
            f"{kind}-send", *common, "--dir", str(self.workdir / "unused"), "--files", *map(str, files)
        )
        results = await asyncio.gather(finish(sender, f"{kind}-send"), finish(receiver, f"{kind}-recv"))
        return results[0], results[1]

    async def tcp(self, files: list[Path]) -> tuple[dict, dict]:
        await quiet()
        receiver = await spawn("tcp-recv", "--dir", str(self.workdir / "incoming"))
        assert receiver.stdout is not None
        port = json.loads(await asyncio.wait_for(receiver.stdout.readline(), 60))["port"]
        sender = await spawn("tcp-send", "--port", str(port), "--files", *map(str, files))
        results = await asyncio.gather(finish(sender, "tcp-send"), finish(receiver, "tcp-recv"))
        return results[0], results[1]

    async def shared_fs(self, root: Path, files: list[Path]) -> tuple[dict, dict]:
        await quiet()
        room, token = self._room(), secrets.token_hex(8)
        common = ["--url", self.url, "--room", room, "--token", token, "--root", str(root), "--loop", self.args.loop]
        worker = await spawn("sfs-worker", *common, "--dir", str(self.workdir / "worker"), stdin=True)
        try:
            client = await spawn(
                "sfs-client", *common, "--dir", str(self.workdir / "client"), "--files", *map(str, files)
            )
            client_result = await finish(client, "sfs-client")
        finally:
            assert worker.stdin is not None
            worker.stdin.close()
        return client_result, await finish(worker, "sfs-worker")


# --- the S3 server --------------------------------------------------------------------------


class MotoS3:
    """moto's S3 server on 127.0.0.1, started and stopped by this script (by its own pid)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.url = ""

    @staticmethod
    def available() -> str | None:
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
            import rtcxfer_s3  # noqa: F401
        except ImportError as error:
            return f"not run: {error}"
        return None

    def start(self) -> None:
        import socket
        import urllib.request

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket="rtcxfer-bench")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


# --- the codec ------------------------------------------------------------------------------


def codec_rates(seconds: float = 1.0) -> tuple[float, float]:
    """Frames encoded and decoded per second, over a mix of the protocol's frames."""
    from rtcxfer.protocol.frames import (
        FileAccept,
        FileMeta,
        JobLog,
        JobProgress,
        PathErrorFrame,
        PathValidated,
        SharedInputPath,
        decode,
        encode,
    )

    frames = [
        SharedInputPath("jobs/123/data.zip"),
        PathValidated("input"),
        PathErrorFrame("Input path does not exist: jobs/1/x::y.zip"),
        FileMeta(transfer_id="ab" * 16, name="inputs/data.bin", size=1 << 30, sha256="cd" * 32, chunk_size=65509),
        FileAccept(transfer_id="ab" * 16, offset=0),
        JobLog(job_id="job-1", line="epoch 3/10 loss=0.123 :: ok"),
        JobProgress(job_id="job-1", done=3, total=10),
    ]
    wires = [encode(frame) for frame in frames]
    rates = []
    for work, items in ((encode, frames), (decode, wires)):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            for _ in range(200):
                for item in items:
                    work(item)
            count += 200 * len(items)
        rates.append(count / elapsed)
    return rates[0], rates[1]


# --- the report -----------------------------------------------------------------------------


def mbps(result: dict, index: int = 0) -> float:
    item = result["files"][index]
    return item["size"] / 1e6 / item["seconds"]


def summary(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{fmt.format(median)} (1 run)"
    return f"{fmt.format(median)} [{fmt.format(min(values))} .. {fmt.format(max(values))}]"


def rss(result: dict) -> str:
    idle, peak = result["idle_rss"] / MiB, result["peak_rss"] / MiB
    flag = "" if result.get("peak_reset", True) else " (HWM not reset)"
    return f"{idle:.0f} -> {peak:.0f} MiB (+{peak - idle:.1f}){flag}"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.ratios: list[tuple[str, list[float], str]] = []
        self.memory: list[tuple[str, str, str]] = []

    def row(self, case: str, unit: str, values: list[float], fmt: str = "{:.1f}") -> None:
        self.rows.append((case, unit, summary(values, fmt)))

    def ratio(self, name: str, values: list[float], target: str) -> None:
        self.ratios.append((name, values, target))

    def print(self, header: str) -> None:
        print()
        print(header)
        print()
        print("| case | unit | median [min .. max] |")
        print("| --- | --- | --- |")
        for case, unit, text in self.rows:
            print(f"| {case} | {unit} | {text} |")
        print()
        print("| ratio (same run) | per round | median | target |")
        print("| --- | --- | --- | --- |")
        for name, values, target in self.ratios:
            per_round = ", ".join(f"{v:.2f}" for v in values) or "-"
            median = f"{statistics.median(values):.2f}" if values else "-"
            print(f"| {name} | {per_round} | {median} | {target} |")
        if not self.memory:
            return
        print()
        print("| process | idle -> peak RSS (growth), worst round | |")
        print("| --- | --- | --- |")
        for name, first, second in self.memory:
            print(f"| {name} | {first} | {second} |")


def worst(results: list[dict]) -> dict:
    return max(results, key=lambda r: r["peak_rss"] - r["idle_rss"])


# --- main -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, workdir: Path) -> None:
    from rtcxfer.net.signaling import SignalingServer

    ab_size = args.size * MiB
    sfs_sizes = [1 * MiB, 64 * MiB, 1024 * MiB] if not args.quick else [1 * MiB, 16 * MiB, 256 * MiB]
    shared_root = workdir / "shared"
    shared_root.mkdir(parents=True)
    print(f"work directory {workdir}; writing test files ...", flush=True)
    ab_file = workdir / f"ab-{args.size}MiB.bin"
    make_file(ab_file, ab_size)
    packages = []
    for size in sfs_sizes:
        path = shared_root / "jobs" / f"package-{size // MiB}MiB.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_file(path, size)
        packages.append(path)
    s3_note = MotoS3.available() if not args.no_s3 else "not run: --no-s3"
    moto = MotoS3()
    if s3_note is None:
        moto.start()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")

    data: dict[str, list] = {
        k: []
        for k in (
            "chunked",
            "stock",
            "tcp",
            "sfs",
            "chunked_small",
            "s3",
            "encode",
            "decode",
            "chunked_big",
            "chunked_asyncio",
            "chunked_untuned",
        )
    }
    try:
        async with SignalingServer("127.0.0.1", 0) as server:
            runner = Runner(args, server.url, workdir)
            for round_no in range(1, args.rounds + 1):
                started = time.perf_counter()
                data["chunked"].append(await runner.pair("chunked", [ab_file], loop=args.loop, fast=args.fast))
                data["stock"].append(await runner.pair("stock", [ab_file], loop="asyncio", fast=False))
                data["tcp"].append(await runner.tcp([ab_file]))
                if args.ablation:
                    data["chunked_asyncio"].append(await runner.pair("chunked", [ab_file], loop="asyncio"))
                    data["chunked_untuned"].append(await runner.pair("chunked", [ab_file], loop=args.loop, fast=False))
                data["sfs"].append(await runner.shared_fs(shared_root, packages))
                data["chunked_small"].append(
                    await runner.pair("chunked", [packages[0]], loop=args.loop, fast=args.fast)
                )
                if s3_note is None:
                    extra = ["--s3-url", "s3://rtcxfer-bench/transfers", "--s3-endpoint", moto.url]
                    data["s3"].append(await runner.pair("s3", [ab_file], loop=args.loop, extra=extra))
                encoded, decoded = codec_rates()
                data["encode"].append(encoded)
                data["decode"].append(decoded)
                c, s = mbps(data["chunked"][-1][0]), mbps(data["stock"][-1][0])
                print(
                    f"round {round_no}/{args.rounds}: rtc-chunked {c:.1f} MB/s, stock {s:.1f} MB/s "
                    f"({c / s:.2f}x), {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            if not args.quick:
                print("rtc-chunked, 1 GiB, once ...", flush=True)
                data["chunked_big"].append(await runner.pair("chunked", [packages[-1]], loop=args.loop, fast=args.fast))
    finally:
        moto.stop()
    report(args, data, sfs_sizes, ab_size, s3_note)


def report(args, data, sfs_sizes, ab_size, s3_note) -> None:
    table = Table()
    label = f"{ab_size // MiB} MiB"
    chunked = [mbps(r[0]) for r in data["chunked"]]
    stock = [mbps(r[0]) for r in data["stock"]]
    tcp = [mbps(r[0]) for r in data["tcp"]]
    packet = data["chunked"][0][0].get("sctp_packet") or "stock"
    table.row(f"rtc-chunked, {label}, 2 processes ({args.loop}, SCTP packet {packet}, verified)", "MB/s", chunked)
    table.row(f"stock aiortc pattern, {label}, 2 processes (asyncio, 16 KiB reads)", "MB/s", stock)
    table.row(f"raw asyncio TCP, {label}, 2 processes", "MB/s", tcp)
    ablation = {}
    if data["chunked_asyncio"]:
        ablation["asyncio"] = [mbps(r[0]) for r in data["chunked_asyncio"]]
        ablation["untuned"] = [mbps(r[0]) for r in data["chunked_untuned"]]
        table.row(f"ablation: rtc-chunked, {label}, asyncio instead of {args.loop}", "MB/s", ablation["asyncio"])
        table.row(f"ablation: rtc-chunked, {label}, stock SCTP packets (1189 B)", "MB/s", ablation["untuned"])
    for index, size in enumerate(sfs_sizes):
        times = [r[0]["files"][index]["seconds"] * 1000 for r in data["sfs"]]
        table.row(f"shared-fs submission, {size // MiB} MiB package (protocol time)", "ms", times, "{:.1f}")
    small = [r[0]["files"][0]["seconds"] * 1000 for r in data["chunked_small"]]
    table.row("rtc-chunked, 1 MiB package", "ms", small, "{:.1f}")
    table.row(f"rtc-chunked, {label} package", "ms", [r[0]["files"][0]["seconds"] * 1000 for r in data["chunked"]])
    big = data["chunked_big"]
    if big:
        table.row(f"rtc-chunked, {sfs_sizes[-1] // MiB} MiB package", "s", [r[0]["files"][0]["seconds"] for r in big])
        table.row(f"rtc-chunked, {sfs_sizes[-1] // MiB} MiB package", "MB/s", [mbps(r[0]) for r in big])
    if data["s3"]:
        table.row(f"s3 plugin via moto, {label}", "MB/s", [mbps(r[0]) for r in data["s3"]])
    else:
        table.rows.append(("s3 plugin", "-", s3_note or "not run"))
    table.row("frame codec: encode", "frames/s", data["encode"], "{:,.0f}")
    table.row("frame codec: decode", "frames/s", data["decode"], "{:,.0f}")

    table.ratio("rtc-chunked / stock aiortc", [c / s for c, s in zip(chunked, stock)], ">= 1.5")
    table.ratio("raw TCP / rtc-chunked", [t / c for t, c in zip(tcp, chunked)], "(information)")
    if ablation:
        table.ratio(
            f"rtc-chunked {args.loop} / asyncio", [c / a for c, a in zip(chunked, ablation["asyncio"])], "(gain)"
        )
        table.ratio(
            "rtc-chunked 16 KiB / stock SCTP packets", [c / u for c, u in zip(chunked, ablation["untuned"])], "(gain)"
        )
        table.ratio(
            "untuned rtc-chunked / stock aiortc", [u / s for u, s in zip(ablation["untuned"], stock)], "(before)"
        )
    sfs_small = [r[0]["files"][0]["seconds"] for r in data["sfs"]]
    sfs_big = [r[0]["files"][-1]["seconds"] for r in data["sfs"]]
    table.ratio(
        f"shared-fs {sfs_sizes[-1] // MiB} MiB / {sfs_sizes[0] // MiB} MiB time",
        [b / s for b, s in zip(sfs_big, sfs_small)],
        "<= 2",
    )
    if big:
        big_seconds = big[0][0]["files"][0]["seconds"]
        table.ratio(
            f"rtc-chunked / shared-fs time, {sfs_sizes[-1] // MiB} MiB",
            [big_seconds / s for s in sfs_big],
            ">= 100",
        )
    small_sfs_vs_chunked = [r[0]["files"][0]["seconds"] / s for r, s in zip(data["chunked_small"], sfs_small)]
    table.ratio("rtc-chunked / shared-fs time, 1 MiB", small_sfs_vs_chunked, "(information)")

    if big:
        table.memory.append((f"rtc-chunked {sfs_sizes[-1] // MiB} MiB sender", rss(big[0][0]), "target: +100 MiB"))
        table.memory.append((f"rtc-chunked {sfs_sizes[-1] // MiB} MiB receiver", rss(big[0][1]), "target: +100 MiB"))
    for key, name in (("chunked", f"rtc-chunked {label}"), ("stock", f"stock aiortc {label}"), ("tcp", f"TCP {label}")):
        table.memory.append((f"{name} sender", rss(worst([r[0] for r in data[key]])), ""))
        table.memory.append((f"{name} receiver", rss(worst([r[1] for r in data[key]])), ""))
    table.memory.append(("shared-fs client", rss(worst([r[0] for r in data["sfs"]])), ""))
    table.memory.append(("shared-fs worker", rss(worst([r[1] for r in data["sfs"]])), ""))
    if data["s3"]:
        table.memory.append((f"s3 {label} sender", rss(worst([r[0] for r in data["s3"]])), ""))
        table.memory.append((f"s3 {label} receiver", rss(worst([r[1] for r in data["s3"]])), ""))

    import aiortc

    header = (
        f"{datetime.now().strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}, aiortc {aiortc.__version__}, "
        f"{args.rounds} round(s){' (--quick)' if args.quick else ''}"
    )
    table.print(header)


def main() -> None:
    if "--child" in sys.argv:
        from _children import child_main

        child_main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, or 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="1 round, 16 MiB and 256 MiB packages, no 1 GiB")
    parser.add_argument("--size", type=int, help="MiB moved by the A/B cases (default 64, 16 with --quick)")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], help="rtc-chunked's loop (default uvloop if installed)"
    )
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 plugin case")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also run rtc-chunked on asyncio and with stock SCTP packets each round (about +10 s a round)",
    )
    parser.add_argument(
        "--no-fast-loopback",
        dest="fast",
        action="store_false",
        help="rtc-chunked with aiortc's stock SCTP packet size (PeerOptions(large_packets=False))",
    )
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    parser.add_argument(
        "--two-host",
        action="store_true",
        help="instead: rtc-chunked, the stock pattern and TCP between two network namespaces (root)",
    )
    parser.add_argument(
        "--direct-size",
        type=int,
        default=256,
        help="--two-host: MiB moved by direct and raw TCP on the unshaped and 1 Gbit/s links (0: skip)",
    )
    parser.add_argument(
        "--direct-only", action="store_true", help="--two-host: only the direct part (not rtc-chunked and stock)"
    )
    parser.add_argument(
        "--nat",
        action="store_true",
        help="instead: rtc-chunked through NATs, TURN over UDP and over TCP against two hosts (root; nat.py)",
    )
    parser.add_argument("--nat-size", type=int, default=256, help="--nat: MiB of the package each submit sends")
    parser.add_argument(
        "--nat-rate",
        help="--nat: shape the two-host link and the NAT beds' access links with tc tbf (e.g. 1gbit)",
    )
    from signaling import add_arguments as add_signaling_arguments

    add_signaling_arguments(parser)
    parser.add_argument(
        "--vs-scp",
        action="store_true",
        help="--two-host: instead, the scp workflow against rtcxfer submit end to end (two_host_scp.py)",
    )
    parser.add_argument("--scp-sizes", default="256,1024", help="--vs-scp: package sizes in MiB (default 256,1024)")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="--two-host: rtc-chunked of this tree against commit REV's (with --vs-scp: also end to end)",
    )
    args = parser.parse_args()
    if not (args.two_host or args.nat):
        args.rounds = args.rounds or (1 if args.quick else 5)
    args.size = args.size or (16 if args.quick else 64)
    if args.loop is None:
        try:
            import uvloop  # noqa: F401

            args.loop = "uvloop"
        except ImportError:
            args.loop = "asyncio"
    workdir = Path(tempfile.mkdtemp(prefix="rtcxfer-bench-")) if args.dir is None else args.dir
    started = time.perf_counter()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if args.signaling:
            from signaling import signaling_main

            signaling_main(args, workdir)
        elif args.nat:
            from nat import nat_main

            args.rounds = args.rounds or 3
            asyncio.run(nat_main(args, workdir))
        elif args.two_host and args.vs_scp:
            from two_host_scp import scp_main

            asyncio.run(scp_main(args, workdir))
        elif args.two_host and args.baseline:
            from two_host_chunked import chunked_main

            asyncio.run(chunked_main(args, workdir))
        elif args.two_host:
            from two_host import two_host_main

            args.rounds = args.rounds or 3
            asyncio.run(two_host_main(args, workdir))
        else:
            asyncio.run(main_async(args, workdir))
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
