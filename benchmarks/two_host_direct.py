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
import contextlib
import json
import statistics
import time
from pathlib import Path

from run import MiB, Table, finish, make_file, mbps, quiet, rss, spawn
from two_host import TwoHostRunner, _start_signaling

from rtcxfer.testing.two_hosts import two_hosts

DIRECT_LINKS = (("unshaped", None, ">= 0.5"), ("tbf 1 Gbit/s", "1gbit", ">= 0.9"))
STREAM_COUNTS = (1, 2, 4)


async def _streams(runner: TwoHostRunner, file: Path, count: int) -> tuple[dict, dict]:
    await quiet()
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


#: Benchmark-only ablations (``_children.skip_sha256``), run on the unshaped link: what each
#: SHA-256 pass costs there. Not modes rtcxfer offers.
ABLATIONS = (
    ("no-receiver-sha256", "direct, ablation: no SHA-256 at the receiver", ("--skip-sha256", "receiver")),
    ("no-sha256", "direct, ablation: no SHA-256 at all", ("--skip-sha256", "sender", "--skip-sha256", "receiver")),
)


def calibrate(size: int = 256 * MiB) -> dict[str, float]:
    """MB/s of SHA-256 and of TLS 1.3 records (encrypted and decrypted through direct's own
    contexts, in memory) on one core of this machine, measured in this run."""
    import hashlib
    import ssl

    from rtcxfer.transports.direct_tls import _client_context, identity

    block = bytes(range(256)) * (4 * MiB // 256)
    started = time.perf_counter()
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)
    sha256 = size / 1e6 / (time.perf_counter() - started)

    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = _client_context().wrap_bio(client_in, client_out, server_side=False)
    server = identity().server_context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(4):  # the handshake, in memory
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    plain = memoryview(bytearray(MiB))
    started = time.perf_counter()
    for _ in range(size // MiB):
        client.write(plain)
        server_in.write(client_out.read())
        got = 0
        while got < MiB:
            got += server.read(MiB - got, plain[got:])
    tls = size / 1e6 / (time.perf_counter() - started)
    return {"sha256": sha256, "tls": tls, "cipher": client.cipher()[0]}


def cpu(results: tuple[dict, dict]) -> float:
    """CPU seconds both processes of a case used after they were connected."""
    return results[0]["cpu_seconds"] + results[1]["cpu_seconds"]


async def direct_main(args, workdir: Path) -> None:
    size = args.direct_size
    file = workdir / f"direct-{size}MiB.bin"
    make_file(file, size * MiB)
    table = Table()
    notes = []
    calibration = calibrate()
    table.row("this CPU, one core: SHA-256", "MB/s", [calibration["sha256"]])
    table.row(f"this CPU, one core: TLS 1.3 records ({calibration['cipher']}), encrypt + decrypt", "MB/s",
              [calibration["tls"]])  # fmt: skip
    for link_name, rate, target in DIRECT_LINKS:
        print(f"direct, link: {link_name} ...", flush=True)
        cases = [("direct", "direct (TLS 1.3, verified)", ()), ("tcp", "raw asyncio TCP", None)]
        if rate is None:
            cases += ABLATIONS
        data: dict[str, list[tuple[dict, dict]]] = {name: [] for name, _, _ in cases}
        with two_hosts(rate=rate) as bed:
            signaling, url = await _start_signaling(bed)
            try:
                runner = TwoHostRunner(bed, url, workdir, args.loop)
                for round_no in range(1, args.rounds + 1):
                    for name, _, extra in cases:
                        if extra is None:
                            data[name].append(await runner.tcp([file]))
                        else:
                            data[name].append(await runner.pair("direct", [file], loop=args.loop, extra=extra))
                    print(
                        f"  {bed.describe()}: round {round_no}/{args.rounds}: "
                        + ", ".join(f"{name} {mbps(data[name][-1][0]):.1f}" for name, _, _ in cases)
                        + " MB/s",
                        flush=True,
                    )
                if rate is None:
                    await _big_and_streams(args, runner, file, link_name, table, notes)
            finally:
                signaling.terminate()  # our own child, by its handle
                await signaling.wait()
        rates = {name: [mbps(r[0]) for r in results] for name, results in data.items()}
        for name, label, _ in cases:
            table.row(f"{link_name}: {label}, {size} MiB", "MB/s", rates[name])
        table.ratio(f"{link_name}: direct / raw TCP", [d / t for d, t in zip(rates["direct"], rates["tcp"])], target)
        if rate is None:
            for name, label, _ in ABLATIONS:
                table.ratio(
                    f"{link_name}: {label.replace('direct, ', '')} / raw TCP",
                    [d / t for d, t in zip(rates[name], rates["tcp"])],
                    "(what the floor would need)",
                )
            for name, label, _ in cases:
                table.row(f"{link_name}: {label}: CPU seconds, both processes", "s", [cpu(r) for r in data[name]],
                          "{:.2f}")  # fmt: skip
            table.ratio(
                f"{link_name}: CPU seconds, raw TCP / direct",
                [cpu(t) / cpu(d) for d, t in zip(data["direct"], data["tcp"])],
                "(direct / raw TCP when both fill the 2 cores)",
            )
            passes = 2 * size * MiB / 1e6 / calibration["sha256"]
            notes.append(
                f"two SHA-256 passes over {size} MiB take {passes:.2f} core-seconds here; raw TCP moved the file "
                f"with {statistics.median(cpu(r) for r in data['tcp']):.2f} (median, both processes)"
            )
        worst = max(data["direct"], key=lambda r: r[1]["peak_rss"] - r[1]["idle_rss"])
        notes.append(f"direct {size} MiB on {link_name}, peak RSS: sender {rss(worst[0])}, receiver {rss(worst[1])}")
    print()
    print(f"two hosts, direct: {args.rounds} round(s), {size} MiB, {time.strftime('%Y-%m-%d %H:%M')}")
    table.print("two network namespaces joined by a veth pair (MTU 1500)")
    print()
    for note in notes:
        print(f"* {note}")


async def _big_and_streams(args, runner: TwoHostRunner, file: Path, link_name: str, table: Table, notes: list) -> None:
    """1 GiB once (the memory figures), then 1, 2 and 4 TLS connections at once."""
    print("  direct, 1 GiB once ...", flush=True)
    big = runner.workdir / "direct-1GiB.bin"
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
        table.row(f"{link_name}: TLS 1.3, {count} connection(s) at once, no hash", "MB/s", streams[count])
    for count in STREAM_COUNTS[1:]:
        table.ratio(
            f"{link_name}: {count} TLS connections / 1",
            [many / one for many, one in zip(streams[count], streams[1])],
            "(does it pay?)",
        )
