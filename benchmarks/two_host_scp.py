"""``run.py --two-host --vs-scp``: what users who reach their GPU box by TCP type today, against
``rtcxfer submit``, end to end, between two network namespaces (``rtcxfer.testing.two_hosts``).

The scp workflow: ``scp package.zip gpu:job/``, ``ssh gpu 'cd job && unzip -q package.zip && python3
job.py'``, ``scp gpu:job/out/result.txt .``: three SSH connections, OpenSSH from Debian
(``apt-get install -y openssh-server openssh-client``), cipher ``aes128-gcm@openssh.com`` (the
cheapest on a CPU with AES-NI). The sshd runs in host B on B's veth address with a host key and
a client key made for this run in a temporary directory, started and stopped by this script
(by its pid); nothing else of the machine's SSH set-up is used (``-F /dev/null``, its own
known_hosts).

``rtcxfer submit PACKAGE --json`` in host A against ``rtcxfer worker --any-interface`` in host B
(a signaling server in A): automatic transport choice, then each byte-moving transport forced.
With ``--baseline REV``, rtc-chunked also runs from the tree of commit REV (a worker and a submit
of that tree, same bed, same rounds), for the before/after of one run.

The package: a ZIP (stored, the data is incompressible) of ``rtcxfer.json``, ``job.py`` and
``data.bin``; the job reads all of ``data.bin`` (SHA-256 in 1 MiB reads) and writes a 100-byte
result. Every case's wall time is the whole workflow (commands started to last command ended); CPU
seconds are those of the client side's processes (from ``wait4``) and of the server side (the
sshd, or the worker, with every child they reaped: the job, unzip, the per-connection sshd).

Cases are interleaved within a round (scp, auto, direct, rtc-chunked, ...), rounds follow each
other; links: unshaped and tc tbf 1 Gbit/s on both veth ends. Every address used is one of the
bed's private ones.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import attrs
from run import MiB, Table, quiet
from two_host_chunked import baseline_tree

from rtcxfer.testing.cluster import Cluster, start_cluster
from rtcxfer.testing.processes import cli_command, cli_environment
from rtcxfer.testing.two_hosts import Host, two_hosts

LINKS = (("unshaped", None), ("tbf 1 Gbit/s", "1gbit"))
TRANSPORTS = ("auto", "direct", "rtc-chunked")
SSH_PORT = 2222
CIPHER = "aes128-gcm@openssh.com"
TOKEN = "bench-vs-scp-token"
ROOM, BASE_ROOM = "bench", "bench-base"
CASE_GUARD = 900.0

JOB = """\
import hashlib, os, pathlib
out = pathlib.Path(os.environ.get("RTCXFER_OUTPUT_DIR", "out"))
out.mkdir(exist_ok=True)
digest, size = hashlib.sha256(), 0
with open("data.bin", "rb", buffering=0) as handle:
    while block := handle.read(1 << 20):
        digest.update(block)
        size += len(block)
(out / "result.txt").write_text(f"{size} {digest.hexdigest()}\\n")
"""


def make_package(path: Path, size: int) -> None:
    """The job package: manifest, job.py and ``size`` bytes of incompressible data, stored."""
    block = os.urandom(16 * MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        manifest = {"name": "bench", "command": ["python3", "job.py"], "timeout_seconds": 600}
        archive.writestr("rtcxfer.json", json.dumps(manifest))
        archive.writestr("job.py", JOB)
        with archive.open("data.bin", "w", force_zip64=True) as member:
            remaining = size
            while remaining:
                piece = block[: min(len(block), remaining)]
                member.write(piece)
                remaining -= len(piece)


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of every child it reaped (user and system), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@attrs.frozen
class Measured:
    code: int
    seconds: float
    cpu: float
    stdout: str
    stderr: str


def run_measured(command: list[str], *, env: dict | None = None, cwd: Path | None = None) -> Measured:
    """Run ``command`` to its end: exit code, wall seconds, its CPU seconds (``wait4``), output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = time.monotonic() + CASE_GUARD
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()  # our own child, by its handle
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.002)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            process.returncode, seconds, usage.ru_utime + usage.ru_stime, out.read().decode(), err.read().decode()
        )


class Sshd:
    """OpenSSH's server in ``host``, on its private address, with keys made for this run; its
    clients (ssh, scp) run in ``client``."""

    def __init__(self, host: Host, client: Host, directory: Path) -> None:
        self.host = host
        self.client = client
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @staticmethod
    def missing() -> str | None:
        wanted = {"sshd": "/usr/sbin/sshd", "ssh": "ssh", "scp": "scp", "ssh-keygen": "ssh-keygen", "unzip": "unzip"}
        absent = [name for name, path in wanted.items() if shutil.which(path) is None]
        if absent:
            return f"missing {', '.join(absent)} (Debian: apt-get install -y openssh-server openssh-client unzip)"
        return None

    def start(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        host_public = (d / "host_key.pub").read_text().split()
        (d / "known_hosts").write_text(f"[{self.host.address}]:{SSH_PORT} {host_public[0]} {host_public[1]}\n")
        (d / "sshd_config").write_text(
            f"ListenAddress {self.host.address}\nPort {SSH_PORT}\nHostKey {d / 'host_key'}\n"
            f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nPrintMotd no\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.process = self.host.spawn(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(d / "sshd.log", "wb"),  # noqa: SIM115 - the process keeps it
        )
        deadline = time.monotonic() + 30
        while subprocess.run(self.ssh("true"), capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def options(self) -> list[str]:
        d = self.directory
        return [
            "-F", "/dev/null", "-i", str(d / "client_key"), "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-c", CIPHER,
        ]  # fmt: skip

    def ssh(self, remote: str) -> list[str]:
        return self.client.prefix + ["ssh", *self.options(), "-p", str(SSH_PORT), f"root@{self.host.address}", remote]

    def scp(self, source: str, target: str) -> list[str]:
        return self.client.prefix + ["scp", "-q", *self.options(), "-P", str(SSH_PORT), source, target]

    def remote(self, path: Path) -> str:
        return f"root@{self.host.address}:{path}"

    def cpu(self) -> float:
        assert self.process is not None
        return process_cpu(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # our own child, by its handle
            self.process.wait(10)


@attrs.frozen
class Outcome:
    """One case of one round: wall seconds, CPU seconds of each side, rtcxfer's phases."""

    wall: float
    client_cpu: float
    server_cpu: float
    phases: dict = attrs.Factory(dict)
    transports: str = ""


def scp_workflow(sshd: Sshd, package: Path, workdir: Path) -> Outcome:
    job = workdir / "scp-job"
    back = workdir / "scp-back"
    for path in (job, back):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    server_before = sshd.cpu()
    steps = [
        sshd.scp(str(package), sshd.remote(job / "package.zip")),
        sshd.ssh(f"cd {job} && unzip -q package.zip && python3 job.py"),
        sshd.scp(sshd.remote(job / "out" / "result.txt"), str(back / "result.txt")),
    ]
    wall = cpu = 0.0
    for command in steps:
        measured = run_measured(command)
        if measured.code != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({measured.code}): {measured.stderr[-2000:]}")
        wall += measured.seconds
        cpu += measured.cpu
    time.sleep(0.3)  # the per-connection sshd is reaped by the listening one
    server = sshd.cpu() - server_before
    result = (back / "result.txt").read_text().split()
    assert int(result[0]) > 0, result
    shutil.rmtree(job, ignore_errors=True)
    return Outcome(wall, cpu, server)


def submit_case(cluster: Cluster, worker_pid: int, bed, package: Path, workdir: Path, *, transport: str, room: str,
                env: dict) -> Outcome:  # fmt: skip
    results = workdir / "submit-results"
    shutil.rmtree(results, ignore_errors=True)
    options = ["--any-interface", "--results", str(results), "--json", "--quiet", "--timeout", "60"]
    if transport != "auto":
        options += ["--transport", transport]
    command = cli_command("submit", str(package), *cluster.connection_options(room), *options, prefix=bed.a.prefix)
    server_before = process_cpu(worker_pid)
    measured = run_measured(command, env=env, cwd=cluster.root)
    time.sleep(0.3)  # the worker's clean-up of the job after its report
    server = process_cpu(worker_pid) - server_before
    if measured.code != 0:
        raise RuntimeError(f"submit ({transport}) failed ({measured.code}): {measured.stderr[-3000:]}")
    report = json.loads(measured.stdout.strip().splitlines()[-1])
    shutil.rmtree(results, ignore_errors=True)
    return Outcome(
        measured.seconds,
        measured.cpu,
        server,
        report["seconds"],
        f"{report['input_transport']}/{report['results_transport']}",
    )


async def scp_main(args, workdir: Path) -> None:
    reason = Sshd.missing()
    if reason is not None:
        raise SystemExit(f"--vs-scp: {reason}")
    sizes = [256] if args.quick else [int(size) for size in args.scp_sizes.split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    packages = {}
    for size in sizes:
        packages[size] = workdir / f"package-{size}MiB.zip"
        make_package(packages[size], size * MiB)
    base = baseline_tree(args.baseline, workdir) if args.baseline else None
    cases = ["scp", *TRANSPORTS] + (["rtc-chunked@base"] if base is not None else [])
    env = cli_environment()
    base_env = cli_environment(import_path=base) if base is not None else None
    data: dict[tuple[str, int, str], list[Outcome]] = {}
    load = []
    for link, rate in LINKS:
        print(f"vs scp, link: {link} ...", flush=True)
        root = workdir / f"cluster-{rate or 'unshaped'}"
        root.mkdir()
        with (
            two_hosts(rate=rate) as bed,
            start_cluster(root, token=TOKEN, env=env, signal_host=bed.a.address, signal_prefix=bed.a.prefix) as cluster,
        ):
            sshd = Sshd(bed.b, bed.a, root / "ssh")
            sshd.start()
            try:
                worker = cluster.start_worker(ROOM, "--any-interface", name="worker", work_dir=root / "worker",
                                              prefix=bed.b.prefix)  # fmt: skip
                workers = {ROOM: worker.process.pid}
                if base is not None:
                    old = cluster.start_worker(BASE_ROOM, "--any-interface", name="worker-base",
                                               work_dir=root / "worker-base", prefix=bed.b.prefix,
                                               env=base_env)  # fmt: skip
                    workers[BASE_ROOM] = old.process.pid
                for round_no in range(1, rounds + 1):
                    started = time.perf_counter()
                    for size in sizes:
                        for case in cases:  # interleaved: scp, auto, direct, rtc-chunked, ...
                            await quiet()
                            load.append(os.getloadavg()[0])
                            if case == "scp":
                                outcome = scp_workflow(sshd, packages[size], root)
                            else:
                                old_tree = case.endswith("@base")
                                room = BASE_ROOM if old_tree else ROOM
                                outcome = submit_case(
                                    cluster, workers[room], bed, packages[size], root,
                                    transport=case.removesuffix("@base"), room=room,
                                    env=base_env if old_tree else env,
                                )  # fmt: skip
                            data.setdefault((link, size, case), []).append(outcome)
                        figures = ", ".join(f"{case} {data[(link, size, case)][-1].wall:.2f}" for case in cases)
                        print(f"  {link}, {size} MiB, round {round_no}/{rounds}: {figures} s", flush=True)
                    print(f"  round {round_no}: {time.perf_counter() - started:.0f} s", flush=True)
            finally:
                sshd.stop()
    report(data, sizes, cases, rounds, args, load)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} [{min(values):.2f} .. {max(values):.2f}]"


def report(data, sizes, cases, rounds, args, load) -> None:
    label = {
        "scp": f"scp workflow ({CIPHER})",
        "auto": "rtcxfer submit (auto)",
        "direct": "submit --transport direct",
        "rtc-chunked": "submit --transport rtc-chunked",
        "rtc-chunked@base": f"submit --transport rtc-chunked at {args.baseline}",
    }
    table = Table()
    rows = []
    for link, _ in LINKS:
        for size in sizes:
            for case in cases:
                outcomes = data[(link, size, case)]
                phases = []
                for key in ("connect", "transfer", "run"):
                    value = _median(o.phases.get(key) for o in outcomes)
                    phases.append("-" if value is None else f"{value:.2f}")
                via = ", ".join(sorted({o.transports for o in outcomes if o.transports})) or "-"
                rows.append(
                    f"| {link}, {size} MiB | {label[case]} | {_spread([o.wall for o in outcomes])} "
                    f"| {statistics.median(o.client_cpu for o in outcomes):.2f} "
                    f"| {statistics.median(o.server_cpu for o in outcomes):.2f} "
                    f"| {statistics.median((o.client_cpu + o.server_cpu) * 1024 / size for o in outcomes):.2f} "
                    f"| {' | '.join(phases)} | {via} |"
                )
            scp = data[(link, size, "scp")]
            for case in cases[1:]:
                outcomes = data[(link, size, case)]
                target = "(information)"
                if case == "auto":
                    target = {("tbf 1 Gbit/s", 256): "<= 0.70", ("tbf 1 Gbit/s", 1024): "<= 0.75",
                              ("unshaped", 1024): "<= 0.65"}.get((link, size), "(information)")  # fmt: skip
                table.ratio(f"{link}, {size} MiB: {case} / scp, wall", [o.wall / s.wall for o, s in zip(outcomes, scp)],
                            target)  # fmt: skip
            direct = data[(link, size, "direct")]
            table.ratio(
                f"{link}, {size} MiB: direct / scp, CPU both sides",
                [(d.client_cpu + d.server_cpu) / (s.client_cpu + s.server_cpu) for d, s in zip(direct, scp)],
                "<= 1.2",
            )
            if "rtc-chunked@base" in cases:
                new, old = data[(link, size, "rtc-chunked")], data[(link, size, "rtc-chunked@base")]
                table.ratio(
                    f"{link}, {size} MiB: rtc-chunked new / {args.baseline}, CPU both sides (end to end)",
                    [(n.client_cpu + n.server_cpu) / (o.client_cpu + o.server_cpu) for n, o in zip(new, old)],
                    "(transfer alone: --two-host --baseline)",
                )
                table.ratio(f"{link}, {size} MiB: rtc-chunked {args.baseline} / new, wall",
                            [o.wall / n.wall for n, o in zip(new, old)], "(speed-up)")  # fmt: skip
    import aiortc

    print()
    print(
        f"vs scp: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"aiortc {aiortc.__version__}, {rounds} round(s); load average (1 min) before the cases: "
        f"{min(load):.1f} .. {max(load):.1f}"
    )
    print()
    print("Wall: median [min .. max] of the whole workflow. CPU: medians, seconds, the client's processes and the")
    print("server's (sshd or the rtcxfer worker, with the job). Phases: rtcxfer submit --json medians (connect =")
    print("command start to first byte).")
    print()
    print("| link, package | case | wall s | CPU client | CPU server | CPU s/GiB both | connect | transfer | run "
          "| input/results via |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print()
    print("| ratio (same run) | per round | median | target |")
    print("| --- | --- | --- | --- |")
    for name, values, target in table.ratios:
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} | {target} |")
