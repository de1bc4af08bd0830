"""What every host of a test bed does in its network namespace: run commands there, start
processes that end with the bed, and hand out a wrapper script for a program path
(:class:`InNamespace`, shared by :mod:`rtcxfer.testing.two_hosts` and
:mod:`rtcxfer.testing.nat_bed`)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["InNamespace", "delete_namespace", "end_process", "pids_inside", "remove_stale_namespaces"]

_COMMAND_GUARD = 30.0  # seconds; ip answers in milliseconds


def namespaces() -> list[str]:
    """The names of every network namespace ``ip netns`` knows."""
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=_COMMAND_GUARD, check=True
    ).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def pids_inside(namespace: str) -> list[int]:
    """The processes running in ``namespace``."""
    listing = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=_COMMAND_GUARD, check=False
    )
    return [int(word) for word in listing.stdout.split() if word.isdigit()]


def delete_namespace(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=_COMMAND_GUARD, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces(stale_name: re.Pattern[str]) -> list[str]:
    """Delete the namespaces named by ``stale_name`` (its group 1: the pid of the process that
    made them) whose maker no longer runs and in which nothing runs any more; their names."""
    removed = []
    for name in namespaces():
        match = stale_name.match(name)
        # Also nothing running inside: a maker in another pid namespace only looks dead.
        if (
            match
            and int(match.group(1)) != os.getpid()
            and not _pid_alive(int(match.group(1)))
            and not pids_inside(name)
        ):
            delete_namespace(name)
            removed.append(name)
    return removed


def end_process(process: subprocess.Popen, grace: float) -> None:
    """Terminate ``process`` if it still runs; kill it after ``grace`` seconds; reap it."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


class InNamespace:
    """A host's commands in its namespace; the host class (attrs) gives ``namespace`` and a
    ``_processes`` list."""

    namespace: str
    _processes: list[subprocess.Popen]

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program in this namespace (``ip netns exec NS``)."""
        return ["ip", "netns", "exec", self.namespace]

    def command(self, command: Sequence[str]) -> list[str]:
        return [*self.prefix, *command]

    def run(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """``subprocess.run`` of ``command`` inside this namespace (same keyword arguments)."""
        return subprocess.run(self.command(command), **kwargs)

    def spawn(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen`` of ``command`` inside this namespace; ended when the bed closes."""
        process = subprocess.Popen(self.command(command), **kwargs)
        self._processes.append(process)
        return process

    def wrapper(self, directory: str | os.PathLike[str], name: str, program: str | os.PathLike[str]) -> Path:
        """An executable ``directory/name`` that runs ``program`` with its arguments inside this
        namespace (``exec`` all the way down), for wherever a program path is expected: a
        browser's for playwright's ``executable_path``, a python for ``CliProcess``."""
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.namespace} {os.fspath(program)} "$@"\n')
        path.chmod(0o755)
        return path

    def end_processes(self, grace: float = 5.0) -> None:
        """End every process :meth:`spawn` started (all asked first, then each waited for)."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            end_process(process, grace)
