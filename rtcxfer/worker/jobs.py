"""Jobs: the context an executor gets, and the default executor, which runs the command of the
package's manifest (:mod:`rtcxfer.protocol.manifest`).

``python`` and ``python3`` as the manifest's program mean the worker's own interpreter. The command runs in
the extracted package directory with these environment variables set:

* ``RTCXFER_OUTPUT_DIR``: where to write result files (everything in it is sent back);
* ``RTCXFER_JOB_ID`` and ``RTCXFER_PACKAGE_DIR``.

Nothing else of the worker's environment reaches a job but the variables named in
:data:`DEFAULT_JOB_ENV` (and whatever the worker's operator allows on top): the worker's token,
storage and cloud credentials stay with the worker.

Every line the job prints is streamed to the client. A line ``RTCXFER_PROGRESS <done> <total>``
is sent as a progress report instead, and drawn as a bar by ``rtcxfer submit``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import attrs

from rtcxfer.log import logger
from rtcxfer.protocol import texts
from rtcxfer.protocol.errors import JobError
from rtcxfer.protocol.manifest import MANIFEST_NAME, Manifest, ManifestError

PROGRESS_LINE = re.compile(r"RTCXFER_PROGRESS\s+(\d{1,18})\s+(\d{1,18})\s*")
#: Longest line forwarded as one log frame; longer output is cut into several.
MAX_LINE_CHARS = 4000
#: How many trailing lines a failure report quotes.
TAIL_LINES = 10
#: Output lines forwarded per second once the burst is spent. Every line costs a frame on the
#: data channel and work on the client; a job printing in a tight loop would otherwise keep
#: both busy long after it ended. Lines over the budget are counted and reported instead.
LOG_LINES_PER_SECOND = 500.0
LOG_BURST_LINES = 2000
#: Progress reports forwarded per second at most; the latest one always gets through.
PROGRESS_PER_SECOND = 20.0
#: The worker's environment variables a job sees (an allow-list: anything else, such as
#: RTCXFER_TOKEN, AWS_* or RTCXFER_S3_*, stays with the worker). Names ending in ``*`` are prefixes.
DEFAULT_JOB_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "TERM",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "SYSTEMROOT",
)
#: Never passed to a job, even when allowed by name or prefix.
NEVER_JOB_ENV = frozenset({"RTCXFER_TOKEN"})


class JobFailedError(JobError):
    """The job ran and failed; ``exit_code`` and ``tail`` (its last lines) say how."""

    def __init__(self, message: str, exit_code: int | None = None, tail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.tail = tail


class JobTimeoutError(JobFailedError):
    """The job ran past its time limit and was stopped."""


@attrs.define
class JobContext:
    """What an executor gets: where the package is, where results go, how to report."""

    job_id: str
    package_dir: Path
    output_dir: Path
    manifest: Manifest | None
    log: Callable[[str], None]
    progress: Callable[[int, int], None]
    timeout_seconds: float | None = None
    kill_grace_seconds: float = 5.0
    #: Names (or ``PREFIX*``) of the worker's environment variables passed on, beyond DEFAULT_JOB_ENV.
    env_allow: tuple[str, ...] = ()


def job_environment(allow: tuple[str, ...] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of ``source`` (the worker's environment) a job may see: the allow-list."""
    source = os.environ if source is None else source
    patterns = (*DEFAULT_JOB_ENV, *allow)
    exact = {p for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    return {
        name: value
        for name, value in source.items()
        if name not in NEVER_JOB_ENV and (name in exact or (prefixes and name.startswith(prefixes)))
    }


class Executor(Protocol):
    """Runs a job. Raise :class:`JobError` (or a subclass) to fail it."""

    def __call__(self, context: JobContext) -> Awaitable[None]: ...


def supervised(command: list[str], grace_seconds: float) -> list[str]:
    """``command`` run under the job supervisor (:mod:`rtcxfer.worker.jobrunner`), which keeps every
    process the job starts, even one that leaves its session with ``setsid``, from outliving it."""
    runner = Path(__file__).with_name("jobrunner.py")
    return [sys.executable, "-I", str(runner), "--grace", repr(float(grace_seconds)), "--", *command]


def _program(command: tuple[str, ...]) -> list[str]:
    if command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return list(command)


async def run_manifest_command(context: JobContext) -> None:
    """The default executor: run the manifest's command and stream its output."""
    manifest = context.manifest
    if manifest is None:
        raise ManifestError(f"the package has no {MANIFEST_NAME}")
    env = {
        **job_environment(context.env_allow),
        **manifest.env,
        "RTCXFER_OUTPUT_DIR": str(context.output_dir),
        "RTCXFER_JOB_ID": context.job_id,
        "RTCXFER_PACKAGE_DIR": str(context.package_dir),
        "PYTHONUNBUFFERED": "1",
    }
    try:
        process = await asyncio.create_subprocess_exec(
            *supervised(_program(manifest.command), context.kill_grace_seconds),
            cwd=context.package_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so cancelling reaches children
        )
    except OSError as error:
        raise JobFailedError(f"cannot start {manifest.command[0]!r}: {error.strerror or error}") from None
    logger.info("job {} started: pid {} runs {}", context.job_id, process.pid, " ".join(manifest.command))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    timeout = manifest.timeout_seconds or context.timeout_seconds

    async def run_to_end() -> int:
        await _pump_output(process, context, tail)
        return await process.wait()

    try:
        # One limit for both: a job may close its output and then hang.
        exit_code = await asyncio.wait_for(run_to_end(), timeout)
    except asyncio.TimeoutError:
        await stop_process_group(process, context.kill_grace_seconds)
        raise JobTimeoutError(
            f"job timed out after {timeout:g} s and was stopped; last output: {_quote_tail(tail)}", None, tuple(tail)
        ) from None
    except asyncio.CancelledError:
        await stop_process_group(process, context.kill_grace_seconds)
        raise
    # Children left in the job's group (a daemon that closed its output) must not outlive it.
    _signal_group(process.pid, signal.SIGKILL)
    if exit_code != 0:
        raise JobFailedError(
            f"{texts.JOB_EXITED.format(code=exit_code)}; last output: {_quote_tail(tail)}", exit_code, tuple(tail)
        )


def _quote_tail(tail: collections.deque[str]) -> str:
    return " | ".join(tail) if tail else "(no output)"


class OutputLimiter:
    """Forwards a job's output lines and progress to its context within a rate budget.

    Lines over the budget are dropped and counted; the count is reported as a line of its own
    before the next forwarded line, and by :meth:`flush` at the end, which also forwards the
    last dropped lines (the end of a job's output says most). Progress reports are thinned to
    the latest one; the last is always delivered by :meth:`flush`.
    """

    def __init__(
        self,
        context: JobContext,
        *,
        lines_per_second: float = LOG_LINES_PER_SECOND,
        burst: int = LOG_BURST_LINES,
        progress_per_second: float = PROGRESS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.context = context
        self.rate = lines_per_second
        self.burst = float(burst)
        self.clock = clock
        self.tokens = self.burst
        self.dropped = 0
        self._recently_dropped: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._refilled = clock()
        self._progress_gap = 1.0 / progress_per_second
        self._progress_sent_at: float | None = None
        self._progress_pending: tuple[int, int] | None = None

    def line(self, text: str) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self.tokens < 1:
            self.dropped += 1
            self._recently_dropped.append(text)
            return
        self.tokens -= 1
        self._report_dropped()
        self.context.log(text)

    def progress(self, done: int, total: int) -> None:
        now = self.clock()
        if self._progress_sent_at is not None and now - self._progress_sent_at < self._progress_gap:
            self._progress_pending = (done, total)
            return
        self._progress_sent_at, self._progress_pending = now, None
        self.context.progress(done, total)

    def flush(self) -> None:
        last = list(self._recently_dropped)
        self.dropped -= len(last)
        self._report_dropped()
        for text in last:
            self.context.log(text)
        if self._progress_pending is not None:
            self.context.progress(*self._progress_pending)
            self._progress_pending = None

    def _report_dropped(self) -> None:
        self._recently_dropped.clear()
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.context.log(
                f"[rtcxfer] {dropped} lines of output were not forwarded (more than {self.rate:g} lines/s)"
            )


async def _pump_output(process: asyncio.subprocess.Process, context: JobContext, tail: collections.deque[str]) -> None:
    assert process.stdout is not None
    output = OutputLimiter(context)
    pending = b""
    try:
        while True:
            block = await process.stdout.read(65536)
            if not block:
                break
            pending += block
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                _emit(raw, output, tail)
            while len(pending) > MAX_LINE_CHARS:  # a flood with no newline still streams
                _emit(pending[:MAX_LINE_CHARS], output, tail)
                pending = pending[MAX_LINE_CHARS:]
        if pending:
            _emit(pending, output, tail)
    finally:
        output.flush()


def _emit(raw: bytes, output: OutputLimiter, tail: collections.deque[str]) -> None:
    line = raw.decode("utf-8", "replace").rstrip("\r")
    match = PROGRESS_LINE.fullmatch(line)
    if match:
        output.progress(int(match.group(1)), int(match.group(2)))
        return
    for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
        piece = line[start : start + MAX_LINE_CHARS]
        # The tail sees every line, so a failure report quotes what really came last.
        tail.append(piece)
        output.line(piece)


#: Extra seconds the supervisor gets, beyond the job's grace, to kill and reap the job's processes.
SUPERVISOR_MARGIN = 5.0


async def stop_process_group(process: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """SIGTERM the job's process group, then SIGKILL it if it is still there after the grace.

    The supervisor at its head passes the SIGTERM to every process of the job (those outside
    the group too) and kills them after the same grace; the group is killed here only if it
    does not manage that in time."""
    if process.returncode is not None:
        return
    _signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_seconds + SUPERVISOR_MARGIN)
    except asyncio.TimeoutError:
        logger.warning("job process group {} ignored SIGTERM; killing it", process.pid)
    # The leader may be gone while children that ignored SIGTERM live on: sweep the group.
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
