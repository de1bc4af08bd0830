"""coturn (Debian's ``turnserver``) on 127.0.0.1 for a test, and a TURN allocation with aioice's
client, to show what credentials a real TURN server accepts.

The server listens on one free port for UDP and TCP, checks the TURN REST API's credentials
against a shared secret (``use-auth-secret``), keeps its configuration, log, pid file and
database in a temporary directory, relays on 127.0.0.1 only, and is stopped by its pid. With a
``prefix`` (``LoopbackNamespace.command()``) it runs inside a namespace of the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
from aioice import stun, turn

LOOPBACK = "127.0.0.1"
START_GUARD = 20.0
STOP_GUARD = 10.0


def turnserver_problem() -> str | None:
    """Why coturn cannot be started here, or None."""
    if shutil.which("turnserver") is None:
        return "no turnserver (apt-get install coturn; .ci/run installs it)"
    return None


def free_udp_and_tcp_port() -> int:
    """A port of 127.0.0.1 free for both UDP and TCP just now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


@attrs.frozen
class TurnServer:
    port: int
    process: subprocess.Popen
    log_path: Path
    prefix: tuple[str, ...] = ()

    @property
    def stun_url(self) -> str:
        return f"stun:{LOOPBACK}:{self.port}"

    def turn_url(self, transport: str) -> str:
        return f"turn:{LOOPBACK}:{self.port}?transport={transport}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def coturn(directory: Path, secret: str, prefix: Sequence[str] = ()) -> Iterator[TurnServer]:
    """coturn on 127.0.0.1 checking TURN REST API credentials made from ``secret`` (run after
    ``prefix``, ``ip netns exec NS``, where it runs in a namespace)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_udp_and_tcp_port()
    log_path = directory / "turnserver.log"
    config = directory / "turnserver.conf"
    # In a file, not on the command line: the secret stays out of `ps`.
    config.write_text(
        "\n".join([
            f"listening-ip={LOOPBACK}",
            f"relay-ip={LOOPBACK}",
            f"listening-port={port}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            "realm=rtcxfer.test",
            "no-tls",
            "no-dtls",
            "no-cli",
            "allow-loopback-peers",
            "no-stdout-log",
            "simple-log",
            f"log-file={log_path}",
            f"pidfile={directory / 'turnserver.pid'}",
            f"userdb={directory / 'turndb'}",
            "",
        ])
    )
    config.chmod(0o600)
    process = subprocess.Popen([*prefix, "turnserver", "-c", str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=directory)
    server = TurnServer(port, process, log_path, tuple(prefix))
    try:
        _wait_until_listening(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(STOP_GUARD)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GUARD)


def _wait_until_listening(server: TurnServer) -> None:
    deadline = time.monotonic() + START_GUARD
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"turnserver exited with {server.process.returncode}:\n{server.log()}")
        if _listening(server):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"turnserver: not listening on {server.port} within {START_GUARD} s:\n{server.log()}")
        time.sleep(0.05)


def _listening(server: TurnServer) -> bool:
    if server.prefix:
        probe = f"import socket; socket.create_connection(({LOOPBACK!r}, {server.port}), 1).close()"
        return subprocess.run([*server.prefix, sys.executable, "-c", probe], capture_output=True).returncode == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex((LOOPBACK, server.port)) == 0


@attrs.frozen
class Allocation:
    """What a TURN server answered an allocation: the relayed address, or its error code."""

    relayed: tuple[str, int] | None = None
    error_code: int | None = None
    reason: str = ""


async def allocate(server: TurnServer, transport: str, username: str, password: str) -> Allocation:
    """Ask ``server`` for a relay over ``transport`` with these credentials (aioice's TURN client),
    and release it again."""
    try:
        relay, receiver = await asyncio.wait_for(
            turn.create_turn_endpoint(_Receiver, (LOOPBACK, server.port), username, password, transport=transport),
            START_GUARD,
        )
    except stun.TransactionFailed as failed:
        code, reason = failed.response.attributes.get("ERROR-CODE", (None, ""))
        return Allocation(error_code=code, reason=reason)
    relayed = relay.get_extra_info("sockname")
    relay.close()
    # The release (a Refresh with lifetime 0) is answered before the socket closes.
    await asyncio.wait_for(receiver.lost, START_GUARD)
    return Allocation(relayed=relayed)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
