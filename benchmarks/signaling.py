"""Signaling relay benchmark (``python benchmarks/run.py --signaling``): messages relayed per second
and their round-trip latency through

* one ``SignalingServer`` with its rooms in memory (the default),
* one with its rooms in Redis (``--redis``), every peer on it,
* two replicas sharing one Redis, every worker on the first and every client on the second (each
  message crosses replicas through Redis pub/sub),

with 1,000 rooms holding a worker and a client each (2,000 sockets), all on this machine.

Each server runs in its own process (this script with ``--serve``), as ``rtcxfer signal`` would
(uvloop where installed; the per-address limits raised for 2,000 sockets from 127.0.0.1, the
per-socket rate limit left as it is); Redis is a throwaway ``redis-server`` on 127.0.0.1
without persistence (:mod:`rtcxfer.testing.redis_server`). The peers are raw WebSockets
speaking the signaling protocol in this process: a worker sends every relay back to its sender.

Per setup: the time to register the 2,000 peers; the round-trip latency of one relay and its
answer with nothing else going on (``--signaling-samples`` round trips, one at a time, in rooms
taken in turn); then every client keeps ``--signaling-window`` relays in flight for
``--signaling-seconds`` seconds: relays per second (a round trip is two relays) and the latency
under that load. The machine has few cores: the load generator, the servers and Redis share them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOMS = 1000
HERE = Path(__file__).resolve().parent


# --- the server processes ------------------------------------------------------------------------


def serve_main(argv: list[str]) -> None:
    """``signaling.py --serve PORT [REDIS_URL]``: a signaling server until terminated."""
    from rtcxfer import log
    from rtcxfer.cli.running import Interrupted, run_until_interrupted
    from rtcxfer.net.signaling import run_signaling_server

    log.enable("WARNING")
    port = int(argv[0])
    redis_url = argv[1] if len(argv) > 1 else None
    options = {"redis_url": redis_url} if redis_url else {}

    def ready(server) -> None:
        print(f"listening on {server.url}", flush=True)

    try:
        run_until_interrupted(run_signaling_server(
            "127.0.0.1", port, on_ready=ready, max_connections=3 * ROOMS, max_connections_per_address=10 * ROOMS,
            max_unregistered_per_address=ROOMS, max_peers_per_address_in_room=None, **options,
        ))
    except Interrupted:
        pass


class ServerProcess:
    def __init__(self, workdir: Path, name: str, redis_url: str | None) -> None:
        from rtcxfer.testing.redis_server import free_port

        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, str(HERE / "signaling.py"), "--serve", str(self.port)]
        if redis_url:
            command.append(redis_url)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=workdir)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"signaling server {name} did not start: {(workdir / f'{name}.log').read_text()}")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


# --- the peers --------------------------------------------------------------------------------------


class Client:
    """A client socket that times each relay until its worker's answer comes back."""

    def __init__(self, ws, worker_id: str) -> None:
        self.ws = ws
        self.worker_id = worker_id
        self.rtts: list[float] = []
        self.waiter: asyncio.Future | None = None
        self.running = False
        self.reader: asyncio.Task | None = None

    async def send(self) -> None:
        await self.ws.send(json.dumps({"type": "relay", "to": self.worker_id, "payload": {"t": time.perf_counter()}}))

    async def read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if message.get("type") != "relay":
                if message.get("type") == "error":
                    print(f"  server error: {message}", file=sys.stderr)
                continue
            self.rtts.append(time.perf_counter() - message["payload"]["t"])
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
            if self.running:
                await self.send()


async def echo(ws) -> None:
    async for raw in ws:
        message = json.loads(raw)
        if message.get("type") == "relay":
            await ws.send(json.dumps({"type": "relay", "to": message["from"], "payload": message["payload"]}))


async def register(url: str, room: str, role: str, peer_id: str):
    from rtcxfer.net.signaling import connect_directly

    ws = await connect_directly(url, open_timeout=60, compression=None, max_queue=None)
    await ws.send(json.dumps({"type": "register", "room": room, "role": role, "peer_id": peer_id}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if reply.get("type") != "registered":
        raise RuntimeError(f"{peer_id} not registered: {reply}")
    return ws


async def gather_bounded(coroutines, limit: int = 200):
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine):
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Setup:
    """One setup's 1,000 rooms: workers registered through ``worker_url``, clients through ``client_url``."""

    def __init__(self, label: str, servers: list[ServerProcess]) -> None:
        self.label = label
        self.servers = servers
        worker_url, client_url = servers[0].url, servers[-1].url
        #: Rooms of different setups must differ: two of them share one Redis.
        self.tag = f"s{id(self):x}"
        self.worker_url, self.client_url = worker_url, client_url
        self.workers: list = []
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Task] = []
        self.result: dict[str, float] = {}
        self.idle: list[float] = []

    async def register(self, rooms: int) -> None:
        started = time.perf_counter()
        self.workers = await gather_bounded(
            register(self.worker_url, f"{self.tag}-room-{n}", "worker", f"w{n}") for n in range(rooms)
        )
        sockets = await gather_bounded(
            register(self.client_url, f"{self.tag}-room-{n}", "client", f"c{n}") for n in range(rooms)
        )
        self.result["register_s"] = time.perf_counter() - started
        self.clients = [Client(ws, f"w{n}") for n, ws in enumerate(sockets)]
        self.tasks = [asyncio.create_task(echo(ws)) for ws in self.workers]
        for client in self.clients:
            client.reader = asyncio.create_task(client.read())
            self.tasks.append(client.reader)
        # Warm up: one round trip in each room.
        await asyncio.gather(*(self.round_trip(client) for client in self.clients))
        self.idle.clear()

    async def round_trip(self, client: Client) -> float:
        client.waiter = asyncio.get_running_loop().create_future()
        await client.send()
        await asyncio.wait_for(client.waiter, 30)
        client.waiter = None
        return client.rtts[-1]

    async def idle_round_trips(self, count: int, offset: int) -> None:
        """``count`` round trips one at a time, in rooms taken in turn from ``offset``."""
        for n in range(count):
            self.idle.append(await self.round_trip(self.clients[(offset + n) % len(self.clients)]))

    async def load(self, seconds: float, window: int) -> None:
        clients = self.clients
        for client in clients:
            client.rtts.clear()
            client.running = True
        started = time.perf_counter()
        cpu_before = [server.cpu_seconds() for server in self.servers], time.process_time()
        await asyncio.gather(*(client.send() for client in clients for _ in range(window)))
        await asyncio.sleep(seconds)
        counted = sum(len(client.rtts) for client in clients)
        elapsed = time.perf_counter() - started
        servers_cpu = sum(s.cpu_seconds() - b for s, b in zip(self.servers, cpu_before[0]))
        generator_cpu = time.process_time() - cpu_before[1]
        loaded = [rtt for client in clients for rtt in client.rtts]
        for client in clients:
            client.running = False
        await asyncio.sleep(1.0)  # what is in flight drains
        self.result.update(
            idle_p50_ms=statistics.median(self.idle) * 1000,
            idle_p99_ms=percentile(self.idle, 0.99) * 1000,
            relays_per_s=2 * counted / elapsed,
            load_p50_ms=statistics.median(loaded) * 1000,
            load_p99_ms=percentile(loaded, 0.99) * 1000,
            servers_cpu=servers_cpu / elapsed,
            generator_cpu=generator_cpu / elapsed,
        )

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in [*self.workers, *(c.ws for c in self.clients)]),
                             return_exceptions=True)


async def measure(setups: list[Setup], rooms: int, samples: int, rounds: int, seconds: float, window: int) -> None:
    try:
        for setup in setups:
            print(f"{setup.label}: registering {2 * rooms} peers ...", flush=True)
            await setup.register(rooms)
        # Idle latency, the setups interleaved round by round (the machine's load drifts).
        per_round = max(1, samples // rounds)
        for round_number in range(rounds):
            for setup in setups:
                await setup.idle_round_trips(per_round, round_number * per_round)
        for setup in setups:
            print(f"{setup.label}: {seconds:g} s under load ...", flush=True)
            await setup.load(seconds, window)
    finally:
        for setup in setups:
            await setup.close()


def signaling_main(args: argparse.Namespace, workdir: Path) -> None:
    """Run the three setups and print the table (for benchmarks/README.md)."""
    from rtcxfer.net.peer import install_uvloop_if_available
    from rtcxfer.testing.redis_server import redis_server_available, running_redis

    if not redis_server_available():
        raise SystemExit("--signaling needs redis-server (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise SystemExit("--signaling needs the redis library: pip install -e '.[redis]'") from None
    install_uvloop_if_available()
    rooms, samples, seconds, window = (
        args.signaling_rooms, args.signaling_samples, args.signaling_seconds, args.signaling_window
    )
    rounds = args.signaling_rounds
    servers: list[ServerProcess] = []
    with running_redis(workdir / "redis") as redis_server:
        try:
            memory = ServerProcess(workdir, "signal-memory", None)
            servers.append(memory)
            shared = ServerProcess(workdir, "signal-redis", redis_server.url)
            servers.append(shared)
            replica_a = ServerProcess(workdir, "signal-replica-a", redis_server.url)
            servers.append(replica_a)
            replica_b = ServerProcess(workdir, "signal-replica-b", redis_server.url)
            servers.append(replica_b)
            setups = [
                Setup("one server, rooms in memory", [memory]),
                Setup("one server, rooms in Redis", [shared]),
                Setup("two replicas (worker on A, client on B)", [replica_a, replica_b]),
            ]
            asyncio.run(measure(setups, rooms, samples, rounds, seconds, window))
        finally:
            for server in servers:
                server.stop()
    base = setups[0].result
    print()
    print(f"{rooms} rooms per setup (a worker and a client each, all three setups registered at once); "
          f"{samples} idle round trips per setup, one at a time, in {rounds} interleaved rounds; then "
          f"{window} relays in flight per client for {seconds:g} s, one setup at a time; "
          f"{os.cpu_count()} cores shared by the load generator, four servers and Redis")
    print()
    print("| setup | register 2,000 peers | round trip, idle (p50 / p99) | idle p50 vs. in memory | "
          "relays/s under load | round trip under load (p50 / p99) | cores busy under load: servers / peers |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for setup in setups:
        r = setup.result
        print(f"| {setup.label} | {r['register_s']:.1f} s | {r['idle_p50_ms']:.2f} / {r['idle_p99_ms']:.2f} ms | "
              f"{r['idle_p50_ms'] / base['idle_p50_ms']:.1f}x | {r['relays_per_s']:,.0f} | "
              f"{r['load_p50_ms']:.0f} / {r['load_p99_ms']:.0f} ms | "
              f"{r['servers_cpu']:.2f} / {r['generator_cpu']:.2f} |")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """run.py's options for this benchmark."""
    parser.add_argument("--signaling", action="store_true",
                        help="instead: signaling relay rate and latency, in memory, with Redis, across two replicas")
    parser.add_argument("--signaling-rooms", type=int, default=ROOMS,
                        help="--signaling: rooms (a worker and a client each)")
    parser.add_argument("--signaling-samples", type=int, default=2000, help="--signaling: idle round trips timed")
    parser.add_argument("--signaling-seconds", type=float, default=10.0, help="--signaling: seconds under load")
    parser.add_argument("--signaling-window", type=int, default=2, help="--signaling: relays in flight per client")
    parser.add_argument("--signaling-rounds", type=int, default=10,
                        help="--signaling: interleaved rounds of the idle round trips")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve_main(sys.argv[2:])
    else:
        raise SystemExit("run it as: python benchmarks/run.py --signaling")
