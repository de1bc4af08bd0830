"""A throwaway ``redis-server`` for tests and benchmarks of shared signaling rooms
(``rtcxfer signal --redis``): on 127.0.0.1, a free port, no persistence, in its own directory,
stopped by its own pid.

::

    with running_redis(tmp_path) as redis:
        start_signaling(..., options=["--redis", redis.url])
        redis.restart()   # the same port, its data gone (as a Redis without persistence)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from rtcxfer.testing.processes import DEATH_GUARD, START_GUARD

__all__ = ["RedisServer", "free_port", "redis_server_available", "running_redis"]


def redis_server_available() -> bool:
    """Whether a ``redis-server`` is on PATH (Debian: ``apt-get install redis-server``)."""
    return shutil.which("redis-server") is not None


def free_port() -> int:
    """A TCP port of 127.0.0.1 free at this moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port``, logging to ``directory/redis.log``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the process holds it
        try:
            self.process = subprocess.Popen(
                [
                    "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                    "--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "yes",
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_GUARD
        while True:
            if self.process is not None and self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise AssertionError(f"redis-server exited with {self.process.returncode}:\n{log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not answer within {START_GUARD} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate it by its pid (killed after a grace period)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(DEATH_GUARD)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop it, wait ``down_for`` seconds, start it again on the same port: empty."""
        self.stop()
        time.sleep(down_for)
        self.start()


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in ``directory``, stopped when the block ends."""
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
