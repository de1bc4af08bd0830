"""``run.py --two-host``: the transports between two "machines" (network namespaces).

Each link kind gets a fresh bed (``rtcxfer.testing.two_hosts``): two namespaces joined by a veth
pair, MTU 1500, once passing IP fragments and once dropping them. The signaling server runs in
host A on A's veth address; every sender (client role) runs in A and every receiver (worker
role) in B, each as its own process, exactly as a client and a remote worker would.

A case is one entry of :data:`CASES`: a name, a label for the table and a coroutine that moves
the file once and returns ``(sender result, receiver result)``. Another transport (say a direct
TCP transport) is one more entry; the rounds, the table and the ratios pick it up.

Root, ``ip`` and ``nft`` are needed (as for the tests that use the bed).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
from run import MiB, Table, finish, make_file, mbps, quiet, spawn

from rtcxfer.testing.two_hosts import TwoHosts, missing_requirements, two_hosts

LINKS = (("fragments pass", False), ("fragments dropped", True))


@attrs.frozen
class TwoHostRunner:
    """Starts the children of one case in the bed's two hosts."""

    bed: TwoHosts
    url: str
    workdir: Path
    loop: str

    async def pair(
        self, kind: str, files: list[Path], *, loop: str, fast: bool = True, extra: tuple[str, ...] = ()
    ) -> tuple[dict, dict]:
        await quiet()
        room = f"bench-{secrets.token_hex(4)}"
        common = ["--url", self.url, "--room", room, "--loop", loop, "--any-interface", *extra] + (
            [] if fast else ["--no-fast"]
        )
        receiver = await spawn(
            f"{kind}-recv", *common, "--dir", str(self.workdir / "incoming"), prefix=self.bed.b.prefix
        )
        sender = await spawn(
            f"{kind}-send", *common, "--dir", str(self.workdir / "unused"), "--files", *map(str, files),
            prefix=self.bed.a.prefix,
        )  # fmt: skip
        results = await asyncio.gather(finish(sender, f"{kind}-send"), finish(receiver, f"{kind}-recv"))
        return results[0], results[1]

    async def tcp(self, files: list[Path]) -> tuple[dict, dict]:
        await quiet()
        host = self.bed.b.address
        receiver = await spawn(
            "tcp-recv", "--host", host, "--dir", str(self.workdir / "incoming"), prefix=self.bed.b.prefix
        )
        assert receiver.stdout is not None
        port = json.loads(await asyncio.wait_for(receiver.stdout.readline(), 60))["port"]
        sender = await spawn(
            "tcp-send", "--host", host, "--port", str(port), "--files", *map(str, files), prefix=self.bed.a.prefix
        )
        results = await asyncio.gather(finish(sender, "tcp-send"), finish(receiver, "tcp-recv"))
        return results[0], results[1]


Case = Callable[[TwoHostRunner, Path], Awaitable[tuple[dict, dict]]]


@attrs.frozen
class TwoHostCase:
    name: str
    label: str
    run: Case


CASES = [
    TwoHostCase(
        "chunked",
        "rtc-chunked (probed SCTP packets, verified)",
        lambda runner, file: runner.pair("chunked", [file], loop=runner.loop),
    ),
    TwoHostCase(
        "stock",
        "stock aiortc pattern (asyncio, 16 KiB reads)",
        lambda runner, file: runner.pair("stock", [file], loop="asyncio", fast=False),
    ),
    TwoHostCase("tcp", "raw asyncio TCP", lambda runner, file: runner.tcp([file])),
]
BASELINE = "stock"


async def _start_signaling(bed: TwoHosts) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        *bed.a.prefix, sys.executable, "-m", "rtcxfer.cli", "signal", "--host", bed.a.address, "--port", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
        if not line:
            raise RuntimeError("the signaling server in host A exited")
        match = re.search(r"listening on (ws://\S+)", line)
        if match:
            return process, match.group(1)


async def _run_link(args, drop: bool, file: Path, workdir: Path) -> tuple[dict[str, list], str]:
    data: dict[str, list] = {case.name: [] for case in CASES}
    with two_hosts(drop_fragments=drop) as bed:
        signaling, url = await _start_signaling(bed)
        try:
            runner = TwoHostRunner(bed, url, workdir, args.loop)
            for round_no in range(1, args.rounds + 1):
                started = time.perf_counter()
                for case in CASES:  # interleaved: A B C, A B C, ...
                    data[case.name].append(await case.run(runner, file))
                figures = ", ".join(f"{case.name} {mbps(data[case.name][-1][0]):.1f}" for case in CASES)
                print(f"  {bed.describe()}: round {round_no}/{args.rounds}: {figures} MB/s, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        finally:
            signaling.terminate()  # our own child, by its handle
            await signaling.wait()
        return data, bed.describe()


def _packet_notes(results: list[tuple[dict, dict]]) -> str:
    notes = sorted(
        {f"{r[0]['sctp_packet']} B in {r[0]['sctp_datagram']} B datagrams: {r[0]['sctp_reason']}" for r in results}
    )
    timeouts = ", ".join(str(r[0]["sctp_timeouts"]) for r in results)
    return "; ".join(notes) + f" (retransmission timeouts per round: {timeouts})"


async def two_host_main(args, workdir: Path) -> None:
    reason = missing_requirements()
    if reason is not None:
        raise SystemExit(f"--two-host: {reason}")
    if args.direct_only:
        from two_host_direct import direct_main

        await direct_main(args, workdir)
        return
    file = workdir / f"ab-{args.size}MiB.bin"
    make_file(file, args.size * MiB)
    table = Table()
    notes = []
    for link_name, drop in LINKS:
        print(f"link: {link_name} ...", flush=True)
        data, described = await _run_link(args, drop, file, workdir)
        for case in CASES:
            table.row(f"{link_name}: {case.label}, {args.size} MiB", "MB/s", [mbps(r[0]) for r in data[case.name]])
        baseline = [mbps(r[0]) for r in data[BASELINE]]
        for case in CASES:
            if case.name != BASELINE:
                values = [mbps(r[0]) for r in data[case.name]]
                target = {"chunked": ">= 8" if not drop else ">= 0.9"}.get(case.name, "(information)")
                table.ratio(f"{link_name}: {case.name} / {BASELINE}", [v / b for v, b in zip(values, baseline)], target)
        notes.append(f"{link_name} ({described}): rtc-chunked sender used {_packet_notes(data['chunked'])}")
    import aiortc

    print()
    print(f"two hosts: {args.rounds} round(s), aiortc {aiortc.__version__}, loop {args.loop}, {args.size} MiB")
    table.print("two network namespaces joined by a veth pair (MTU 1500)")
    print()
    for note in notes:
        print(f"* {note}")
    if args.direct_size:
        from two_host_direct import direct_main

        await direct_main(args, workdir)
