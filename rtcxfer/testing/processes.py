"""The ``rtcxfer`` command as real subprocesses, for end-to-end tests (ours and plugins').

A long-running process (:class:`CliProcess`: a signaling server, a worker) writes its output to
a log file that a test can wait on; a one-shot command (:func:`run_cli`, :func:`start_cli`) hands
its output back. Processes are stopped by their own pid only (terminate, then kill after a grace
period). :mod:`rtcxfer.testing.cluster` puts them together: a signaling server, workers, submits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

#: Hang guards in seconds, generous for a loaded 2-core machine; never assertions about speed.
START_GUARD = 60.0
DEATH_GUARD = 20.0
#: How long a one-shot command (``rtcxfer submit`` with its whole job) may take.
COMMAND_GUARD = 120.0

SIGNALING_READY = r"signaling server listening on (wss?://127\.0\.0\.1:\d+)"
WORKER_READY = r"waiting for jobs"


def cli_environment(
    log_level: str = "WARNING", *, import_path: str | os.PathLike[str] | None = None, **extra: str
) -> dict[str, str]:
    """An environment for ``rtcxfer`` subprocesses of a test: without the developer's own
    ``RTCXFER_*`` settings or shared mount, with unbuffered output, ``RTCXFER_LOG_LEVEL`` set,
    ``import_path`` (a source tree) first on ``PYTHONPATH`` when given, and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCXFER_") and k != "SHARED_STORAGE_ROOT"}
    if import_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.fspath(import_path), env.get("PYTHONPATH")]))
    env["RTCXFER_LOG_LEVEL"] = log_level
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli_command(
    *args: str, python: str | os.PathLike[str] = sys.executable, prefix: Sequence[str] = ()
) -> list[str]:
    """``python -m rtcxfer.cli ARGS`` as an argument list, after ``prefix`` (``ip netns exec NS``:
    ``two_hosts.Host.prefix``) where it runs elsewhere."""
    return [*prefix, os.fspath(python), "-m", "rtcxfer.cli", *args]


def run_cli(
    *args: str,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str],
    python: str | os.PathLike[str] = sys.executable,
    timeout: float = COMMAND_GUARD,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``rtcxfer ARGS`` to its end with nothing on stdin; its output comes back as text.

    ``cwd`` is required: ``python -m`` puts the working directory on ``sys.path``, and a source
    tree there would be imported instead of the installed package."""
    return subprocess.run(
        cli_command(*args, python=python, prefix=prefix),
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_cli(
    *args: str,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str],
    python: str | os.PathLike[str] = sys.executable,
    stdout: int | IO[str] = subprocess.PIPE,
    stderr: int | IO[str] = subprocess.PIPE,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """``rtcxfer ARGS`` started in the background with nothing on stdin (the caller waits for it,
    or kills it by its pid); output to pipes unless ``stdout`` or ``stderr`` say otherwise."""
    return subprocess.Popen(
        cli_command(*args, python=python, prefix=prefix),
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def describe(run: subprocess.CompletedProcess[str]) -> str:
    """What a finished command did, for an assertion's message: its exit code and the ends of its
    output."""
    return f"exit {run.returncode}\n--- stdout\n{run.stdout[-4000:]}\n--- stderr\n{run.stderr[-4000:]}"


class CliProcess:
    """A long-running ``python -m rtcxfer.cli ARGS`` whose output goes to ``log_dir/NAME.log``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        python: str | Path = sys.executable,
        prefix: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            cli_command(*args, python=python, prefix=prefix),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            # Never a source tree: `python -m` puts the working directory on sys.path.
            cwd=log_dir,
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = START_GUARD) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} within {timeout} s:\n{self.text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(DEATH_GUARD)

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(DEATH_GUARD)
        self._log.close()


def start_signaling(
    log_dir: Path,
    *,
    token: str | None,
    env: Mapping[str, str] | None = None,
    python: str | Path = sys.executable,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
    port: int = 0,
    options: Sequence[str] = (),
    name: str = "signal",
) -> tuple[CliProcess, str]:
    """``rtcxfer signal`` on ``host`` and ``port`` (0: an ephemeral one; a fixed one where a
    firewall rule must name it), admitting ``token`` (None: anyone), with further command-line
    ``options``; returns the process (logging to ``log_dir/NAME.log``) and its URL once it listens."""
    args = ["signal", "--host", host, "--port", str(port), *(["--token", token] if token is not None else []), *options]
    process = CliProcess(name, args, log_dir, env=env, python=python, prefix=prefix)
    try:
        url = process.wait_for(rf"signaling server listening on (wss?://{re.escape(host)}:\d+)").group(1)
    except AssertionError:
        process.stop()
        raise
    return process, url
