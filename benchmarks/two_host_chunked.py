"""``run.py --two-host --baseline REV``: rtc-chunked of this tree against rtc-chunked of commit REV,
side by side in one run, between two network namespaces (``rtcxfer.testing.two_hosts``).

REV's tree is extracted (``git archive``) into the work directory; its own ``run.py --child``
children run with it first on ``PYTHONPATH``, so each case runs its own commit's rtcxfer on both
sides. Links: unshaped and tc tbf 1 Gbit/s on both veth ends, each a fresh bed. Per round,
interleaved: this tree, REV, this tree, REV... each moving the same ``--size`` MiB file (default
256) with ``RtcChunkedTransport.send_file`` end to end (SHA-256 verified, uvloop where installed,
packet size by probing), sender in host A, receiver in host B. The table gives MB/s and the CPU
seconds per GiB of both processes after they were connected (user and system apart where the
children report them: at 1 Gbit/s the sender's system time is mostly tbf's, see
benchmarks/README.md), and the ratios per round; after each link's rounds, the sending qdisc's
counters (packets, drops, overlimits) and the senders' SCTP retransmission timeouts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from run import MiB, Table, finish, make_file, mbps, quiet, spawn
from two_host import _start_signaling

from rtcxfer.testing.two_hosts import INTERFACE, two_hosts

LINKS = (("unshaped", None), ("tbf 1 Gbit/s", "1gbit"))


def baseline_tree(rev: str, workdir: Path) -> Path:
    """The source tree of commit ``rev`` of this repository, extracted under ``workdir``."""
    root = Path(__file__).resolve().parent.parent
    target = workdir / f"baseline-{rev}"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


async def pair(bed, url: str, workdir: Path, file: Path, loop: str, root: Path | None) -> tuple[dict, dict]:
    """One rtc-chunked transfer of ``file`` from A to B by ``root``'s children (None: this tree)."""
    await quiet()
    room = f"bench-{os.urandom(4).hex()}"
    common = ["--url", url, "--room", room, "--loop", loop, "--any-interface"]
    receiver = await spawn("chunked-recv", *common, "--dir", str(workdir / "incoming"), prefix=bed.b.prefix, root=root)
    sender = await spawn(
        "chunked-send", *common, "--dir", str(workdir / "unused"), "--files", str(file), prefix=bed.a.prefix, root=root
    )
    sent, received = await asyncio.gather(finish(sender, "chunked-send"), finish(receiver, "chunked-recv"))
    return sent, received


def link_counters(bed) -> str:
    """What the sending host's qdisc did (tc -s): packets (IP fragments) sent, dropped, and how
    often tbf had to hold the queue (overlimits: each time a timer on the sending CPU)."""
    shown = subprocess.run(
        ["tc", "-s", "-n", bed.a.namespace, "qdisc", "show", "dev", INTERFACE], capture_output=True, text=True
    )
    words = shown.stdout.split()
    try:
        at = words.index("Sent")
        return f"{words[at + 3]} packets sent, {words[at + 6].rstrip(',')} dropped, {words[at + 8]} overlimits"
    except (ValueError, IndexError):
        return "qdisc counters not read"


def cpu_rows(table: Table, case: str, results: list[tuple[dict, dict]], size: int) -> None:
    """User and system CPU per GiB of each side, where the children report them apart (commits
    before this one report only their sum)."""
    for index, side in ((0, "sender"), (1, "receiver")):
        if all("cpu_user_seconds" in r[index] for r in results):
            for key, part in (("cpu_user_seconds", "user"), ("cpu_system_seconds", "system")):
                table.row(f"{case}: CPU per GiB, {side}, {part}", "s/GiB",
                          [r[index][key] * 1024 / size for r in results], "{:.2f}")  # fmt: skip


def per_gib(result: tuple[dict, dict], size: int) -> float:
    return (result[0]["cpu_seconds"] + result[1]["cpu_seconds"]) * 1024 / size


async def chunked_main(args, workdir: Path) -> None:
    # run.py's --size defaults (64, or 16 with --quick) are for its loopback A/B file.
    size = args.size if "--size" in sys.argv else (128 if args.quick else 256)
    rounds = args.rounds or (1 if args.quick else 3)
    base = baseline_tree(args.baseline, workdir)
    file = workdir / f"chunked-{size}MiB.bin"
    make_file(file, size * MiB)
    table = Table()
    load = []
    for link, rate in LINKS:
        print(f"rtc-chunked against {args.baseline}, link: {link} ...", flush=True)
        data: dict[str, list[tuple[dict, dict]]] = {"new": [], "base": []}
        with two_hosts(rate=rate) as bed:
            signaling, url = await _start_signaling(bed)
            try:
                for round_no in range(1, rounds + 1):
                    for name, root in (("new", None), ("base", base)):
                        load.append(os.getloadavg()[0])
                        data[name].append(await pair(bed, url, workdir, file, args.loop, root))
                    figures = ", ".join(
                        f"{name} {mbps(data[name][-1][0]):.1f} MB/s, {per_gib(data[name][-1], size):.2f} CPU s/GiB"
                        for name in data
                    )
                    print(f"  {link}: round {round_no}/{rounds}: {figures}", flush=True)
                timeouts = sum(r[0].get("sctp_timeouts", 0) for name in data for r in data[name])
                print(f"  {link}: all rounds: {link_counters(bed)}; SCTP retransmission timeouts (senders): "
                      f"{timeouts}", flush=True)  # fmt: skip
            finally:
                signaling.terminate()  # our own child, by its handle
                await signaling.wait()
        new, old = data["new"], data["base"]
        for name, label in (("new", "this tree"), ("base", args.baseline)):
            results = data[name]
            table.row(f"{link}: rtc-chunked {size} MiB, {label}", "MB/s", [mbps(r[0]) for r in results])
            table.row(f"{link}: rtc-chunked, {label}: CPU per GiB, sender", "s/GiB",
                      [r[0]["cpu_seconds"] * 1024 / size for r in results], "{:.2f}")  # fmt: skip
            table.row(f"{link}: rtc-chunked, {label}: CPU per GiB, receiver", "s/GiB",
                      [r[1]["cpu_seconds"] * 1024 / size for r in results], "{:.2f}")  # fmt: skip
            table.row(f"{link}: rtc-chunked, {label}: CPU per GiB, both", "s/GiB",
                      [per_gib(r, size) for r in results], "{:.2f}")  # fmt: skip
            cpu_rows(table, f"{link}: rtc-chunked, {label}", results, size)
        table.ratio(f"{link}: CPU per GiB, this tree / {args.baseline}",
                    [per_gib(n, size) / per_gib(o, size) for n, o in zip(new, old)], "<= 0.6")  # fmt: skip
        table.ratio(f"{link}: MB/s, this tree / {args.baseline}",
                    [mbps(n[0]) / mbps(o[0]) for n, o in zip(new, old)],
                    ">= 1.5" if rate else "(information)")  # fmt: skip
    import aiortc

    table.print(
        f"rtc-chunked, this tree against {args.baseline}: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"aiortc {aiortc.__version__}, loop {args.loop}, {rounds} round(s), {size} MiB; load average (1 min) "
        f"before the cases {min(load):.1f} .. {max(load):.1f}; median [min .. max]"
    )
