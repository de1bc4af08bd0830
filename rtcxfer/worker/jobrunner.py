"""The job supervisor: runs a job's command so that no process it starts can outlive it.

The worker starts ``python -I jobrunner.py --grace SECONDS -- COMMAND...`` (by file path and
with nothing but the standard library, so neither the job's environment nor a missing
``PYTHONPATH`` changes what runs here). Two mechanisms, as systemd tracks a service:

* where the cgroup v2 hierarchy is writable (a worker run as root, or given a delegated
  subtree), the command starts in a cgroup of its own, below the supervisor's, and every
  process in it belongs to the job whatever it does (``--no-cgroup`` turns this off);
* on Linux the supervisor is also a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``):
  every process the command starts, even one that calls ``setsid()`` and double-forks to
  leave its session and process group, stays in the supervisor's subtree, because an orphan is
  re-parented to its nearest subreaper ancestor rather than to init, so the subtree is exactly
  the job even without a cgroup; it is also how the killed processes get reaped.

Then:

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

PR_SET_DUMPABLE = 4
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


class JobCgroup:
    """A cgroup v2 for the job's processes, below this process's own; None where not writable."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls) -> JobCgroup | None:
        mount, own = _cgroup2_mount(), _own_cgroup2()
        if mount is None or own is None:
            return None
        path = os.path.join(mount, own.lstrip("/"), f"rtcxfer-job-{os.getpid()}")
        try:
            os.mkdir(path, 0o755)
        except OSError:
            return None
        return cls(path)

    def enter(self) -> None:
        """Move the calling process in (run in the child before exec: nothing escapes earlier)."""
        fd = os.open(os.path.join(self.path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as handle:
                return [int(line) for line in handle if line.strip()]
        except OSError:
            return []

    def kill(self) -> None:
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as handle:
                handle.write("1")
        except OSError:
            _signal_all(self.pids(), signal.SIGKILL)  # kernels before 5.14 have no cgroup.kill

    def remove(self) -> None:
        for _ in range(250):  # an emptied cgroup can be briefly busy
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(_POLL_SECONDS)


def _cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == "cgroup2":
                    return before.split()[4]
    except OSError:
        pass
    return None


def _own_cgroup2() -> str | None:
    try:
        with open("/proc/self/cgroup") as handle:
            for line in handle:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def forbid_inspection() -> bool:
    """Make this process non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): processes of the same
    user, such as the jobs a worker runs, can then no longer read its ``/proc/PID/environ`` or
    memory (where the worker's token is) nor attach a debugger; only root can. No core dumps
    either. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
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


def job_processes(cgroup: JobCgroup | None) -> list[int]:
    """Every process of the job: this process's descendants, and whatever is in its cgroup."""
    found = descendants(os.getpid())
    if cgroup is not None:
        found = sorted(set(found) | set(cgroup.pids()))
    return found


def kill_subtree(cgroup: JobCgroup | None = None) -> None:
    """SIGKILL every process of the job and reap them all (they become our children as their
    parents die, this process being their subreaper)."""
    while True:
        if cgroup is not None:
            cgroup.kill()
        _signal_all(job_processes(cgroup), signal.SIGKILL)
        if not _reap_available() and not job_processes(cgroup):
            return
        time.sleep(_POLL_SECONDS)


def terminate_subtree(grace: float, cgroup: JobCgroup | None = None) -> None:
    """SIGTERM every process of the job, wait up to ``grace`` seconds for them, then kill the rest."""
    deadline = time.monotonic() + grace
    _signal_all(job_processes(cgroup), signal.SIGTERM)
    while time.monotonic() < deadline and (_reap_available() or job_processes(cgroup)):
        time.sleep(_POLL_SECONDS)
    kill_subtree(cgroup)


def main(argv: list[str]) -> int:
    use_cgroup = argv[:1] != ["--no-cgroup"]
    if not use_cgroup:
        argv = argv[1:]
    if len(argv) < 4 or argv[0] != "--grace" or argv[2] != "--":
        sys.stderr.write("usage: jobrunner.py [--no-cgroup] --grace SECONDS -- COMMAND [ARG...]\n")
        return 2
    grace, command = float(argv[1]), argv[3:]
    cgroup = JobCgroup.create() if use_cgroup else None
    if not become_subreaper() and cgroup is None:
        sys.stderr.write("[rtcxfer] note: processes that leave the job's process group cannot be tracked here\n")
    try:
        return _supervise(command, grace, cgroup)
    finally:
        if cgroup is not None:
            cgroup.remove()


def _supervise(command: list[str], grace: float, cgroup: JobCgroup | None) -> int:
    """Run ``command`` and make sure nothing of it is left when this returns its exit code."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the worker's terminal is the worker's
    try:
        try:
            # preexec_fn is safe here: this process runs no other thread.
            process = subprocess.Popen(command, restore_signals=True, preexec_fn=cgroup.enter if cgroup else None)
        except subprocess.SubprocessError:
            # The cgroup refused the process (a controller's rules): the subreaper still tracks it.
            cgroup = None
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
        terminate_subtree(grace, cgroup)
        return 128 + signal.SIGTERM
    kill_subtree(cgroup)
    return _exit_code(status)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
