"""The job supervisor: runs a job's command so that no process it starts can outlive it.

The worker starts ``python -I jobrunner.py --grace SECONDS -- COMMAND...`` (by file path and
with nothing but the standard library, so neither the job's environment nor a missing
``PYTHONPATH`` changes what runs here). On Linux the supervisor makes itself a *child
subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): every process the command starts, even one that
calls ``setsid()`` and double-forks to leave its session and process group, stays in the
supervisor's subtree, because an orphan is re-parented to its nearest subreaper ancestor rather
than to init. So the supervisor's subtree is exactly the job, which gives the tracking that
systemd gets from a cgroup, without needing a writable cgroup hierarchy:

* when the command exits, every process left in the subtree is killed and reaped, and the
  supervisor exits with the command's status (``128 + N`` for a signal ``N``);
* on SIGTERM (the worker cancelling the job, or its time limit), the whole subtree gets SIGTERM,
  then after ``--grace`` seconds SIGKILL, and everything is reaped before the supervisor exits.

Elsewhere (no prctl) it still runs the command and forwards the stop, but cannot see processes
that left the process group.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
EXIT_CANNOT_START = 127
_POLL_SECONDS = 0.02


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[int]:
    """Pids of every live process below ``root`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold anything: parse after the last ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _reap_available() -> bool:
    """Reap exited children; False once this process has none left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def kill_subtree() -> None:
    """SIGKILL every descendant and reap them all (they become our children as parents die)."""
    me = os.getpid()
    while True:
        _signal_all(descendants(me), signal.SIGKILL)
        if not _reap_available():
            return
        time.sleep(_POLL_SECONDS)


def terminate_subtree(grace: float) -> None:
    """SIGTERM every descendant, wait up to ``grace`` seconds for them, then kill the rest."""
    me = os.getpid()
    deadline = time.monotonic() + grace
    _signal_all(descendants(me), signal.SIGTERM)
    while time.monotonic() < deadline and _reap_available() and descendants(me):
        time.sleep(_POLL_SECONDS)
    kill_subtree()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--grace" or argv[2] != "--":
        sys.stderr.write("usage: jobrunner.py --grace SECONDS -- COMMAND [ARG...]\n")
        return 2
    grace, command = float(argv[1]), argv[3:]
    if not become_subreaper():
        sys.stderr.write("[rtcxfer] note: processes that leave the job's process group cannot be tracked here\n")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the worker's terminal is the worker's
    try:
        process = subprocess.Popen(command, restore_signals=True)
    except OSError as error:
        sys.stderr.write(f"[rtcxfer] cannot start {command[0]!r}: {error.strerror or error}\n")
        return EXIT_CANNOT_START
    status = None
    while status is None and not stopping:
        try:
            status = process.wait(_POLL_SECONDS * 5)
        except subprocess.TimeoutExpired:
            continue
        except OSError as error:  # pragma: no cover - EINTR is retried by Python itself
            if error.errno != errno.EINTR:
                raise
    if stopping:
        terminate_subtree(grace)
        return 128 + signal.SIGTERM
    kill_subtree()
    return _exit_code(status)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
