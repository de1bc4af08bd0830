"""``run.py --nat``: rtc-chunked through NATs and TURN relays, against the two-host bed, in one run.

Four setups, each a bed of its own that lives for the whole run, with a real ``rtcxfer signal``
and a real ``rtcxfer worker`` in it (:func:`rtcxfer.testing.cluster.start_cluster`,
``tests.support.nat_cluster``); each round runs one ``rtcxfer submit --json --transport
rtc-chunked`` of the same package in every setup, in this order (interleaved: A B C D, A B C D):

* ``two hosts``: two namespaces joined by a veth pair (``rtcxfer.testing.two_hosts``, MTU
  1500), no NAT: the signaling server and ``submit`` in host A, the worker in host B, both
  ``--any-interface``. The baseline.
* ``NAT``: the client and the worker each behind an endpoint-independent NAT
  (``rtcxfer.testing.nat_bed``), the signaling server on the public segment handing out coturn's
  STUN service: the data channel goes peer-to-peer through both NATs (server-reflexive).
* ``TURN udp``: both behind symmetric NATs, the signaling server handing out STUN and TURN over
  UDP (coturn on the public segment): the data channel goes through the relay.
* ``TURN tcp``: the client's network forwards no UDP at all (the worker's NAT keeps ports), the
  signaling server hands out only ``turn:...?transport=tcp``: the client reaches the relay over
  TCP.

Every ``submit`` is checked: exit 0, ``ok``, input via rtc-chunked, the bytes sent, the ``path``
of its JSON line (and the worker's ``data channel ...`` line) the one the setup is about, and
the job's answer: it hashes the file it was given, and the SHA-256 must be the package's.

What is timed is ``seconds.transfer`` of ``submit --json``: from the submission to the worker's
``EXTRACTING`` (the sender's SHA-256 pass, ``FILE_META``/``FILE_ACCEPT``, the chunks,
``FILE_END``, the worker's size and hash check, fsync, rename, ``FILE_ACK``, the job's
announcement), plus fetching the job's results (one 65-byte file). Connecting (signaling, ICE,
DTLS, SCTP, authentication) and the job's run are not in it.

coturn runs as the bed starts it, except ``--verbose`` (off: its log line per request is no
part of relaying) and the relay port range (wider, so that allocations of earlier rounds that
have not yet expired never make an allocation fail). coturn's bandwidth limits (``max-bps``,
``bps-capacity``) and quotas are 0 (none) by default, and the bed does not set them.

Root, ``ip``, ``nft`` and ``turnserver`` (Debian: coturn) are needed, as for the NAT tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import attrs
from run import MiB, Table, quiet

from rtcxfer.testing import nat_bed as beds
from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.nat_bed import NatKind, TurnServer
from rtcxfer.testing.processes import describe
from rtcxfer.testing.two_hosts import two_hosts
from tests.support.cli import environment
from tests.support.nat_cluster import nat_cluster

TOKEN = f"natbench-{secrets.token_hex(8)}"
ROOM = "bench"
#: Hang guard for one ``submit`` (256 MiB at 1 MB/s would take 270 s).
SUBMIT_GUARD = 900.0
#: Relay ports for coturn: one allocation per side and attempt lives up to 10 minutes.
RELAY_PORTS = (49152, 59999)

JOB = """\
import hashlib, os, pathlib

digest = hashlib.sha256()
with open("data.bin", "rb") as handle:
    while block := handle.read(1 << 20):
        digest.update(block)
pathlib.Path(os.environ["RTCXFER_OUTPUT_DIR"], "sha256.txt").write_text(digest.hexdigest() + "\\n")
"""

_WORKER_PATH = re.compile(r"client client-\w+: data channel (.+)")
_TICKS = os.sysconf("SC_CLK_TCK")
_PACKET_NOTICE = re.compile(r"^rtcxfer: (SCTP packets .+)$", re.MULTILINE)


def make_package(path: Path, size: int) -> str:
    """A job package (ZIP, stored) with ``size`` bytes of incompressible data in ``data.bin``
    and a job that hashes it; returns the data's SHA-256, the job's expected answer."""
    block = secrets.token_bytes(min(size, 16 * MiB))
    digest = hashlib.sha256()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        manifest = {"name": "nat-bench", "command": ["python", "job.py"], "timeout_seconds": 600}
        archive.writestr("rtcxfer.json", json.dumps(manifest))
        archive.writestr("job.py", JOB)
        with archive.open("data.bin", "w", force_zip64=size >= 2**31) as data:
            remaining = size
            while remaining:
                piece = block[: min(len(block), remaining)]
                data.write(piece)
                digest.update(piece)
                remaining -= len(piece)
    return digest.hexdigest()


def _cpu_ticks(pid: int) -> int:
    """User + system clock ticks of a running process (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@attrs.define
class Setup:
    """One bed with its signaling server and worker, and what a ``submit`` through it must show."""

    name: str
    label: str
    #: What the ``path`` of ``submit --json`` must match (the whole of it).
    path: str
    #: The floor of this setup's rate against the two-host bed's (None: the baseline).
    floor: float | None
    cluster: Cluster
    client_prefix: list[str]
    submit_options: tuple[str, ...] = ()
    turn: TurnServer | None = None
    runs: list[dict] = attrs.Factory(list)
    _worker_lines: int = 0

    def new_worker_paths(self) -> list[str]:
        assert self.cluster.worker is not None
        lines = self.cluster.worker.text().splitlines()
        fresh, self._worker_lines = lines[self._worker_lines :], len(lines)
        return [match.group(1) for line in fresh if (match := _WORKER_PATH.search(line))]

    def submit(self, package: Path, sha256: str) -> dict:
        """One ``rtcxfer submit`` of ``package`` from the client's side; checked; its figures."""
        results = self.cluster.root / "results"
        turn_before = _cpu_ticks(self.turn.process.pid) if self.turn else 0
        cpu_before = _children_cpu()
        run = self.cluster.submit(
            package, "--json", "--transport", "rtc-chunked", "--timeout", "120", "--results", str(results),
            *self.submit_options, room=ROOM, prefix=self.client_prefix, timeout=SUBMIT_GUARD,
        )  # fmt: skip
        submit_cpu = _children_cpu() - cpu_before
        turn_cpu = (_cpu_ticks(self.turn.process.pid) - turn_before) / _TICKS if self.turn else None
        lines = run.stdout.strip().splitlines()
        report = json.loads(lines[-1]) if lines else {}
        what = f"{self.name}: {describe(run)}"
        if run.returncode != 0 or not report.get("ok"):
            raise RuntimeError(f"the submit failed: {what}")
        if report["input_transport"] != "rtc-chunked" or report["bytes_sent"] != package.stat().st_size:
            raise RuntimeError(f"not the package over rtc-chunked: {what}")
        if not re.fullmatch(self.path, report["path"] or ""):
            raise RuntimeError(f"the data channel took another path ({report['path']!r}, wanted {self.path!r}): {what}")
        answer = (Path(report["results_dir"]) / "sha256.txt").read_text().strip()
        if answer != sha256:
            raise RuntimeError(f"the worker hashed {answer}, the package's data is {sha256}: {what}")
        shutil.rmtree(results, ignore_errors=True)
        # The worker says its line when the channel opens, before the job: it is in the log by now.
        worker_paths = self.new_worker_paths()
        if not worker_paths:
            said = self.cluster.worker.text()[-3000:]
            raise RuntimeError(f"the worker said nothing about the data channel's path: {said}")
        packets = _PACKET_NOTICE.findall(run.stderr)
        seconds = report["seconds"]
        return {
            "mbps": report["bytes_sent"] / 1e6 / seconds["transfer"],
            "transfer": seconds["transfer"],
            "total": seconds["total"],
            "path": report["path"],
            "worker_path": worker_paths[-1],
            "packets": packets[-1] if packets else "no packet size reported",
            "submit_cpu": submit_cpu,
            "turn_cpu": turn_cpu,
        }


def _two_host_setup(stack: contextlib.ExitStack, root: Path, rate: str | None) -> Setup:
    bed = stack.enter_context(two_hosts(rate=rate))
    cluster = stack.enter_context(
        start_cluster(
            root, token=TOKEN, env=environment(), service_env=environment("INFO"),
            signal_host=bed.a.address, signal_prefix=bed.a.prefix,
        )  # fmt: skip
    )
    cluster.worker = cluster.start_worker(
        ROOM, "--any-interface", name="worker", work_dir=root / "worker", prefix=bed.b.prefix
    )
    return Setup(
        "two hosts",
        f"two hosts, no NAT ({bed.describe()})",
        r"peer-to-peer \(host\)",
        None,
        cluster,
        bed.a.prefix,
        ("--any-interface",),
    )


def _nat_setup(
    stack: contextlib.ExitStack,
    root: Path,
    name: str,
    label: str,
    *,
    client: NatKind,
    worker: NatKind,
    signal: Callable[[TurnServer], list[str]],
    path: str,
    floor: float,
    rate: str | None,
) -> Setup:
    bed = stack.enter_context(beds.nat_bed(client_nat=client, worker_nat=worker, rate=rate))
    turn = stack.enter_context(bed.start_turn(verbose=False, relay_ports=RELAY_PORTS))
    cluster = stack.enter_context(nat_cluster(bed, root, token=TOKEN, room=ROOM, signal_options=signal(turn)))
    return Setup(name, f"{label} ({bed.describe()})", path, floor, cluster, bed.client.prefix, (), turn)


def _turn_secret(turn: TurnServer) -> list[str]:
    return ["--turn-secret-file", str(turn.secret_file)]


RELAY = r"via TURN relay 198\.51\.100\.1:\d+"


def make_setups(stack: contextlib.ExitStack, workdir: Path, rate: str | None = None) -> list[Setup]:
    """The four setups; with ``rate``, the two-host link and each NAT bed's access links shaped."""
    roots = [workdir / name for name in ("two-host", "nat", "turn-udp", "turn-tcp")]
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
    return [
        _two_host_setup(stack, roots[0], rate),
        _nat_setup(
            stack, roots[1], "NAT", "endpoint-independent NATs, STUN",
            client=NatKind.ENDPOINT_INDEPENDENT, worker=NatKind.ENDPOINT_INDEPENDENT,
            signal=lambda turn: ["--stun", turn.stun_url],
            path=r"through NAT \((server|peer)-reflexive\)", floor=0.9, rate=rate,
        ),
        _nat_setup(
            stack, roots[2], "TURN udp", "symmetric NATs, TURN over UDP",
            client=NatKind.SYMMETRIC, worker=NatKind.SYMMETRIC,
            signal=lambda turn: ["--stun", turn.stun_url, "--turn", turn.turn_udp_url, *_turn_secret(turn)],
            path=rf"{RELAY} (over udp|\(the worker's\))", floor=0.5, rate=rate,
        ),
        _nat_setup(
            stack, roots[3], "TURN tcp", "client's UDP blocked, TURN over TCP",
            client=NatKind.UDP_BLOCKED, worker=NatKind.ENDPOINT_INDEPENDENT,
            signal=lambda turn: ["--stun", turn.stun_url, "--turn", turn.turn_udp_url, "--turn", turn.turn_tcp_url,
                                 *_turn_secret(turn)],
            path=rf"{RELAY} over tcp", floor=0.3, rate=rate,
        ),
    ]  # fmt: skip


async def nat_main(args, workdir: Path) -> None:
    reason = beds.missing_requirements()
    if reason is not None:
        raise SystemExit(f"--nat: {reason}")
    size = args.nat_size
    package = workdir / f"nat-{size}MiB.zip"
    print(f"writing a {size} MiB package ...", flush=True)
    sha256 = make_package(package, size * MiB)
    with contextlib.ExitStack() as stack:
        print("making the beds (two hosts, three NAT beds with coturn) ...", flush=True)
        setups = make_setups(stack, workdir, args.nat_rate)
        for round_no in range(1, args.rounds + 1):
            started = time.perf_counter()
            for setup in setups:  # interleaved: A B C D, A B C D, ...
                await quiet()
                setup.runs.append(await asyncio.to_thread(setup.submit, package, sha256))
            figures = ", ".join(f"{setup.name} {setup.runs[-1]['mbps']:.1f}" for setup in setups)
            print(f"round {round_no}/{args.rounds}: {figures} MB/s, {time.perf_counter() - started:.0f} s", flush=True)
    report(args, setups, size)


def report(args, setups: list[Setup], size: int) -> None:
    table = Table()
    base = setups[0]
    baseline = [run["mbps"] for run in base.runs]
    for setup in setups:
        table.row(f"{setup.name}: rtc-chunked, {size} MiB, `rtcxfer submit`", "MB/s", [r["mbps"] for r in setup.runs])
    for setup in setups:
        table.row(f"{setup.name}: `rtcxfer submit` CPU seconds (whole process)", "s",
                  [r["submit_cpu"] for r in setup.runs], "{:.2f}")  # fmt: skip
        if setup.turn is not None:
            table.row(f"{setup.name}: coturn CPU seconds", "s", [r["turn_cpu"] for r in setup.runs], "{:.2f}")
    for setup in setups[1:]:
        table.ratio(
            f"{setup.name} / {base.name}",
            [run["mbps"] / b for run, b in zip(setup.runs, baseline)],
            f">= {setup.floor}" + ("" if _met(setup, baseline) else " (not met)"),
        )
    import aiortc

    print()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, NAT benchmark: {args.rounds} round(s), {size} MiB, "
        f"{'links shaped by tc tbf ' + args.nat_rate if args.nat_rate else 'unshaped'}, aiortc "
        f"{aiortc.__version__}, `rtcxfer submit --transport rtc-chunked` (uvloop where installed)"
    )
    table.print("rtc-chunked through NATs and TURN relays against two hosts joined directly (MTU 1500)")
    print()
    for setup in setups:
        paths = sorted({f"submit: {r['path']}; worker: {r['worker_path']}; {r['packets']}" for r in setup.runs})
        print(f"* {setup.label}: " + " | ".join(paths))


def _met(setup: Setup, baseline: list[float]) -> bool:
    ratios = [run["mbps"] / b for run, b in zip(setup.runs, baseline)]
    return setup.floor is None or statistics.median(ratios) >= setup.floor
