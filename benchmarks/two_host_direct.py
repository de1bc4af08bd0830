"""``run.py --two-host``, the ``direct`` part: direct against raw TCP on the same link, in the
same run, across two network namespaces (``rtcxfer.testing.two_hosts``).

Links: the bed unshaped, and the bed shaped to 1 Gbit/s with tc tbf on both veth ends. On each,
``--rounds`` interleaved rounds (direct, raw TCP, direct, raw TCP, ...) move the same file of
``--direct-size`` MiB (default 256) from host A (sender, client role) to host B (receiver, worker
role), each side its own process:

* direct: ``DirectTransport.negotiate`` (not timed), then ``send_file`` end to end: the sender's
  SHA-256 pass, META/ACCEPT, the bytes over TLS 1.3, the receiver's SHA-256 while writing, size
  and hash check, fsync, rename, ACK.
* raw TCP: asyncio streams, 1 MiB reads, the receiver writes the file (no hash, no fsync) and
  answers one byte.

Then, on the unshaped link: direct moves 1 GiB once, with each side's peak RSS growth; and the
connection-count experiment (:func:`streams_experiment`): the same file over 1, 2 and 4 TLS
connections at once, blocking sockets in threads as direct uses them, the receiver writing each
range at its offset, no hash (a SHA-256 over the whole file cannot be split across
connections, so this is the most that more connections could gain).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from run import MiB, Table, finish, make_file, mbps, rss, spawn
from two_host import TwoHostRunner, _start_signaling

from rtcxfer.testing.two_hosts import two_hosts

DIRECT_LINKS = (("unshaped", None, ">= 0.5"), ("tbf 1 Gbit/s", "1gbit", ">= 0.9"))
STREAM_COUNTS = (1, 2, 4)


async def _streams(runner: TwoHostRunner, file: Path, count: int) -> tuple[dict, dict]:
    host = runner.bed.b.address
    incoming = str(runner.workdir / "incoming")
    receiver = await spawn(
        "tls-recv", "--host", host, "--dir", incoming, "--streams", str(count), prefix=runner.bed.b.prefix
    )
    assert receiver.stdout is not None
    offer = json.loads(await asyncio.wait_for(receiver.stdout.readline(), 60))
    sender = await spawn(
        "tls-send", "--host", host, "--port", str(offer["port"]), "--fingerprint", offer["fingerprint"],
        "--streams", str(count), "--files", str(file), prefix=runner.bed.a.prefix,
    )  # fmt: skip
    results = await asyncio.gather(finish(sender, "tls-send"), finish(receiver, "tls-recv"))
    return results[0], results[1]


async def direct_main(args, workdir: Path) -> None:
    size = args.direct_size
    file = workdir / f"direct-{size}MiB.bin"
    make_file(file, size * MiB)
    table = Table()
    notes = []
    for link_name, rate, target in DIRECT_LINKS:
        print(f"direct, link: {link_name} ...", flush=True)
        data: dict[str, list] = {"direct": [], "tcp": []}
        with two_hosts(rate=rate) as bed:
            signaling, url = await _start_signaling(bed)
            try:
                runner = TwoHostRunner(bed, url, workdir, args.loop)
                for round_no in range(1, args.rounds + 1):
                    data["direct"].append(await runner.pair("direct", [file], loop=args.loop))
                    data["tcp"].append(await runner.tcp([file]))
                    print(
                        f"  {bed.describe()}: round {round_no}/{args.rounds}: direct "
                        f"{mbps(data['direct'][-1][0]):.1f}, raw TCP {mbps(data['tcp'][-1][0]):.1f} MB/s",
                        flush=True,
                    )
                if rate is None:
                    print("  direct, 1 GiB once ...", flush=True)
                    big = workdir / "direct-1GiB.bin"
                    make_file(big, 1024 * MiB)
                    sent, received = await runner.pair("direct", [big], loop=args.loop)
                    big.unlink()
                    table.row(f"{link_name}: direct, 1024 MiB", "MB/s", [mbps(sent)])
                    notes.append(f"direct 1 GiB, peak RSS: sender {rss(sent)}, receiver {rss(received)}")
                    streams: dict[int, list[float]] = {count: [] for count in STREAM_COUNTS}
                    for _ in range(args.rounds):
                        for count in STREAM_COUNTS:
                            streams[count].append(mbps((await _streams(runner, file, count))[0]))
                    for count in STREAM_COUNTS:
                        table.row(
                            f"{link_name}: TLS 1.3, {count} connection(s) at once, no hash", "MB/s", streams[count]
                        )
                    for count in STREAM_COUNTS[1:]:
                        table.ratio(
                            f"{link_name}: {count} TLS connections / 1",
                            [many / one for many, one in zip(streams[count], streams[1])],
                            "(does it pay?)",
                        )
            finally:
                signaling.terminate()  # our own child, by its handle
                await signaling.wait()
        direct_rates = [mbps(r[0]) for r in data["direct"]]
        tcp_rates = [mbps(r[0]) for r in data["tcp"]]
        table.row(f"{link_name}: direct (TLS 1.3, verified), {size} MiB", "MB/s", direct_rates)
        table.row(f"{link_name}: raw asyncio TCP, {size} MiB", "MB/s", tcp_rates)
        table.ratio(f"{link_name}: direct / raw TCP", [d / t for d, t in zip(direct_rates, tcp_rates)], target)
        worst = max(data["direct"], key=lambda r: r[1]["peak_rss"] - r[1]["idle_rss"])
        notes.append(f"direct {size} MiB on {link_name}, peak RSS: sender {rss(worst[0])}, receiver {rss(worst[1])}")
    print()
    print(f"two hosts, direct: {args.rounds} round(s), {size} MiB, {time.strftime('%Y-%m-%d %H:%M')}")
    table.print("two network namespaces joined by a veth pair (MTU 1500)")
    print()
    for note in notes:
        print(f"* {note}")
