"""``rtcxfer worker --pid-file``: the file that lets ``rtcxfer worker --drain`` find the worker.

A pid alone names whatever process has that number *now*: after the worker stopped (or the
machine rebooted) it may be anyone's ``sleep``. So the file also says which process it meant:
its start time (in clock ticks since boot, ``/proc/<pid>/stat``) and the boot it started in;
``--drain`` signals only a process that matches both and is an ``rtcxfer worker``, and does so
through a pidfd opened before the check, so the number cannot change hands in between.

The first line stays the bare pid, for ``kill -USR1 $(head -1 FILE)`` and the like.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
from pathlib import Path

import attrs

from rtcxfer.protocol.errors import RtcxferError

IDENTITY_PREFIX = "rtcxfer-worker"
_PID = re.compile(r"[0-9]{1,10}")
_IDENTITY = re.compile(IDENTITY_PREFIX + r" start=(?P<start>[0-9]{1,20}) boot=(?P<boot>[0-9a-f-]{1,64})")


class PidFileError(RtcxferError):
    """The pid file names no running worker (stale, foreign or malformed); nothing was signalled."""


@attrs.frozen
class ProcessIdentity:
    pid: int
    start_ticks: int
    boot_id: str

    def line(self) -> str:
        return f"{IDENTITY_PREFIX} start={self.start_ticks} boot={self.boot_id}"


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def start_ticks(pid: int) -> int:
    """When process ``pid`` started, in clock ticks after boot (field 22 of ``/proc/<pid>/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[19])


def identity_of(pid: int) -> ProcessIdentity:
    return ProcessIdentity(pid, start_ticks(pid), boot_id())


def write_pid_file(path: Path) -> None:
    """This process's pid and identity, written whole (a reader never sees half a file)."""
    me = identity_of(os.getpid())
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{me.pid}\n{me.line()}\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_pid_file(path: Path) -> None:
    """Remove the file if it still names this process (another worker may have taken it over)."""
    with contextlib.suppress(OSError, PidFileError):
        if read_pid_file(path) == identity_of(os.getpid()):
            path.unlink()


def read_pid_file(path: Path) -> ProcessIdentity:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise PidFileError(f"cannot read {path}: {error.strerror or error}") from None
    pid = _PID.fullmatch(lines[0]) if lines else None
    identity = _IDENTITY.fullmatch(lines[1]) if len(lines) > 1 else None
    if pid is None or identity is None:
        raise PidFileError(
            f"{path} was not written by `rtcxfer worker --pid-file` (or by an older version): "
            "nothing signalled; restart the worker with --pid-file to drain it this way"
        )
    return ProcessIdentity(int(pid[0]), int(identity["start"]), identity["boot"])


def signal_worker(path: Path, signal_number: int = signal.SIGUSR1) -> int:
    """Send ``signal_number`` to the worker ``path`` names; its pid. Raises :class:`PidFileError`
    when that process is gone or is another one now."""
    expected = read_pid_file(path)

    def stale(what: str) -> PidFileError:
        return PidFileError(
            f"the worker that wrote {path} is no longer running (pid {expected.pid} is {what}); "
            "nothing signalled. Remove the stale file."
        )

    if not hasattr(os, "pidfd_open"):
        raise PidFileError("--drain through a pid file needs Linux; send the worker SIGUSR1 yourself")
    try:
        handle = os.pidfd_open(expected.pid)
    except ProcessLookupError:
        raise stale("unused") from None
    except OSError as error:
        raise PidFileError(f"cannot reach pid {expected.pid}: {error.strerror or error}") from None
    try:
        # The pidfd is for the process that has the number now; checked after opening it, the
        # identity cannot belong to a process that took the number over in between.
        try:
            current = identity_of(expected.pid)
            command = Path(f"/proc/{expected.pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            raise stale("unused") from None
        if current != expected:
            raise stale(f"another process now: {command_name(command)}")
        if not is_worker_command(command):
            raise stale(f"not an rtcxfer worker: {command_name(command)}")
        try:
            signal.pidfd_send_signal(handle, signal_number)
        except ProcessLookupError:
            raise stale("unused") from None
        except OSError as error:
            raise PidFileError(f"cannot signal pid {expected.pid}: {error.strerror or error}") from None
    finally:
        os.close(handle)
    return expected.pid


def is_worker_command(arguments: list[bytes]) -> bool:
    """Whether a command line is ``rtcxfer ... worker`` (the script, or ``python -m rtcxfer``)."""
    words = [os.path.basename(word.decode(errors="replace")) for word in arguments if word]
    return any(word.startswith("rtcxfer") for word in words) and "worker" in words


def command_name(arguments: list[bytes]) -> str:
    """The program a command line runs, for a message (``sleep``, ``python3 -m http.server``)."""
    words = [word.decode(errors="replace") for word in arguments if word][:3]
    shown = "".join(c if c.isprintable() else "?" for c in " ".join(words)) or "?"
    return shown if len(shown) <= 80 else shown[:77] + "..."
