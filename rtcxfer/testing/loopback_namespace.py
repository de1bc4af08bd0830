"""A network namespace whose only interface is ``lo``: a test's private loopback.

Whatever runs inside it (a browser, ``rtcxfer signal``, ``rtcxfer worker``) can reach only the
other processes inside it, at 127.0.0.1, and nothing else: the namespace has no other
interface and no route. Chromium gathers candidates on every interface it sees, so it is run in
here rather than on the machine's own network.

Commands enter the namespace through small wrapper executables (``ip netns exec NAME PROGRAM
"$@"``), which can stand in wherever a program path is expected (``CliProcess(python=...)``,
playwright's ``executable_path``). Needs root and iproute2's ``ip``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

__all__ = ["LoopbackNamespace", "namespace_support_problem"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def namespace_support_problem() -> str | None:
    """Why this machine cannot make a loopback namespace, or None when it can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "creating a network namespace needs root"
    return None


class LoopbackNamespace:
    """``with LoopbackNamespace(wrapper_dir) as ns:`` creates a fresh namespace with ``lo`` up
    and deletes it on exit, whatever happened inside; processes still running in it are
    killed first (they were started in it by this test, so they are ours)."""

    def __init__(self, wrapper_dir: Path, prefix: str = "rtcxfer-lo") -> None:
        # Unique per run: two test sessions at once never share or delete each other's namespace.
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.wrapper_dir = Path(wrapper_dir)
        self.created = False

    def __enter__(self) -> LoopbackNamespace:
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.delete()

    def command(self, *argv: str | os.PathLike[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def wrapper(self, name: str, program: str | os.PathLike[str]) -> Path:
        """An executable ``wrapper_dir/name`` that runs ``program`` with its arguments inside
        the namespace (``exec`` all the way down, so its pid is the program's)."""
        self.wrapper_dir.mkdir(parents=True, exist_ok=True)
        path = self.wrapper_dir / name
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {os.fspath(program)!s} "$@"\n')
        path.chmod(0o755)
        return path

    def pids(self) -> list[int]:
        """The processes running inside the namespace now."""
        listed = _ip("netns", "pids", self.name, check=False)
        return [int(word) for word in listed.stdout.split() if word.isdigit()]

    def delete(self) -> None:
        if not self.created:
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _ip("netns", "delete", self.name, check=False)
        self.created = False
