"""The one job pipeline: a received package, extracted, its manifest, run, results, report.

Both dialects a worker speaks drive this module: rtcxfer's own protocol
(:class:`~rtcxfer.worker.session.WorkerSession`) and sleap-rtc's legacy one
(:class:`~rtcxfer.worker.legacy_session.LegacySession`). What differs between them is a
:class:`JobDialect`: where the package lies in the archive, which manifest applies when the
package has none, where the job writes its results and how they travel, and every word said to
the client. The pipeline owns the rest, once:

1. the package is extracted safely: while it arrives (:func:`package_unpacker`, the
   transports' ``TransportContext.unpack``; it is handed over checked, SHA-256 and central
   directory included), else from the received ZIP (:mod:`rtcxfer.files.safezip`) off the
   event loop;
2. its manifest is read (a package without one runs only under an application's executor);
3. the executor runs it with the worker's limits; its output goes to the client through an
   :class:`OutputQueue` that never blocks the job;
4. the results are delivered by the dialect (a transport's
   :meth:`~rtcxfer.transport.base.Transport.send_results`, or the legacy ZIP);
5. the :class:`JobOutcome` is reported, whatever happened: a refused package, a failing
   command, a full disk, a cancel, the worker's own shutdown, or a bug of ours (the client must
   always hear that its job ended; the worker goes on serving);
6. the job's files are removed, even when the session is cancelled meanwhile.

The worker's counts (``stats``) and its operator's one line per step come from here too, so
every job a worker runs leaves the same trail whichever dialect brought it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import attrs

from rtcxfer.files import paths
from rtcxfer.files.results import result_files
from rtcxfer.files.safezip import ExtractResult, extract_zip
from rtcxfer.files.stream_unzip import StreamingUnzip
from rtcxfer.log import logger
from rtcxfer.protocol import texts
from rtcxfer.protocol.errors import (
    ArchiveError,
    JobError,
    PathError,
    RtcxferError,
    StorageFullError,
    describe,
)
from rtcxfer.protocol.frames import JobState, quote_for_log
from rtcxfer.protocol.manifest import Manifest, ManifestError
from rtcxfer.transport.base import ReceivedFile
from rtcxfer.worker.jobs import JobContext, JobFailedError, run_manifest_command

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

#: Output messages queued for the client before further ones are counted and dropped.
OUTPUT_QUEUE_MESSAGES = 10_000

M = TypeVar("M")
T = TypeVar("T")


class Outcome(enum.Enum):
    """How a job ended."""

    COMPLETE = "complete"
    #: The package cannot be used: not a safe, readable ZIP (the detail says why).
    UNUSABLE_PACKAGE = "unusable package"
    #: The package has no usable manifest (or script) to run.
    NOT_RUNNABLE = "not runnable"
    #: The command failed or ran out of time.
    FAILED = "failed"
    #: The results could not be delivered (the detail says why).
    UNDELIVERED = "results not delivered"
    #: Writing the results filled the shared storage; what was written is gone again.
    DISK_FULL = "disk full"
    CANCELLED = "cancelled"
    #: The worker itself is shutting down.
    WORKER_STOPPING = "worker stopping"
    #: A bug, or a limit of ours that a package found (a manifest nested too deep...).
    INTERNAL_ERROR = "internal error"


@attrs.frozen
class JobOutcome:
    """How a job ended and what the client should hear of it."""

    outcome: Outcome
    #: Why, for a person (without the job's id): the error, the command's status...
    detail: str = ""
    #: The command's exit status, when it ran and failed.
    exit_code: int | None = None
    #: Where the results were delivered (``JOB_COMPLETE``'s path), how many and how large.
    results_path: str | None = None
    file_count: int = 0
    total_bytes: int = 0
    #: The error behind the outcome, if any (the dialect may word its reply after it).
    error: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.COMPLETE


@attrs.define
class Job:
    """One job, from its announcement (or its implicit input) to its report."""

    job_id: str
    #: The job's own directory: its input arrives in it, its package is extracted in it, and it
    #: goes when the job ends.
    directory: Path
    #: The transport the client wants the results by (``None``: whatever fits).
    results_via: str | None = None
    task: asyncio.Task | None = None
    #: The client cancelled it; its processes are being stopped.
    cancelled: bool = False
    #: When it was accepted (``time.monotonic()``).
    accepted_at: float = attrs.field(factory=time.monotonic)

    @property
    def incoming_dir(self) -> Path:
        return self.directory / "incoming"

    @property
    def output_dir(self) -> Path:
        return self.directory / "output"


class JobDialect(Protocol[M]):
    """What one dialect says and decides for one job; the pipeline calls it at each step.

    ``M`` is the dialect's message type (a frame, a line of text): :meth:`line`,
    :meth:`progress` and :meth:`dropped` make messages that the pipeline queues and hands to
    :meth:`send` in order.
    """

    #: Names the session in log lines.
    label: str

    def package_dir(self, extracted: Path) -> Path:
        """Where the job runs, given the directory its package was extracted into."""

    def manifest(self, package_dir: Path) -> Manifest | None:
        """The job's manifest; ``None`` when the package has none (only an application's own
        executor runs such a package). Raises :class:`ManifestError` for an unusable one."""

    def output_dir(self, package_dir: Path) -> Path:
        """Where the job writes its results (created by the dialect, beneath its directories)."""

    async def stage(self, state: str) -> None:
        """The job reached ``state`` (a :class:`~rtcxfer.protocol.frames.JobState`)."""

    def line(self, text: str) -> M:
        """The message carrying one line of the job's output."""

    def progress(self, done: int, total: int) -> M | None:
        """The message carrying the job's progress, or ``None`` when the dialect has none."""

    def dropped(self, count: int) -> M:
        """The message saying that ``count`` messages of output were dropped."""

    async def send(self, message: M) -> None:
        """Send one queued output message (raises :class:`RtcxferError` when it cannot)."""

    async def deliver_results(self, output_dir: Path, files: Sequence[tuple[str, int]]) -> tuple[str, str]:
        """Deliver the result files; the path ``JOB_COMPLETE`` reports and how they went (a
        transport's name). Raises :class:`StorageFullError`, :class:`PathError` or another
        :class:`RtcxferError`."""

    async def report(self, outcome: JobOutcome) -> None:
        """Tell the client how the job ended (never raises)."""


class OutputQueue(Generic[M]):
    """A job's output on its way to the client, in order, without ever blocking the job: beyond
    :data:`OUTPUT_QUEUE_MESSAGES` queued messages, further ones are counted and reported."""

    def __init__(self, dialect: JobDialect[M]) -> None:
        self._dialect = dialect
        self._queue: asyncio.Queue[M] = asyncio.Queue(OUTPUT_QUEUE_MESSAGES)
        self._dropped = 0
        self._closed = False
        self._task = asyncio.create_task(self._run())

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, message: M | None) -> None:
        if message is None:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._dropped += 1

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._dialect.send(message)
                if self._dropped and self._queue.empty():
                    dropped, self._dropped = self._dropped, 0
                    await self._dialect.send(self._dialect.dropped(dropped))
            except RtcxferError as error:
                logger.debug("{}: job output not sent: {}", self._dialect.label, describe(error))
            finally:
                self._queue.task_done()

    async def close(self) -> None:
        """Send what is queued (a closed channel makes that quick), then stop; once."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._queue.join()
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def run_job(worker: RTCWorkerClient, job: Job, received: ReceivedFile, dialect: JobDialect) -> JobOutcome:
    """Run ``job`` from its input ``received`` to its report, then remove its files.

    Never raises but for the caller's own cancellation arriving during the final clean-up; a
    cancellation during the job is reported as such (or as the worker stopping)."""
    output: OutputQueue | None = None
    try:
        try:
            output = OutputQueue(dialect)
            outcome = await _steps(worker, job, received, dialect, output)
        except asyncio.CancelledError:
            stopping = worker.stopping and not job.cancelled
            outcome = JobOutcome(Outcome.WORKER_STOPPING if stopping else Outcome.CANCELLED)
        except Exception as error:  # noqa: BLE001
            # A bug, or a limit of ours a package found (deep nesting...): the client must still
            # hear that the job ended, or it waits forever; the worker goes on serving.
            logger.opt(exception=error).error("{}: job {} failed unexpectedly", dialect.label, job.job_id)
            outcome = JobOutcome(
                Outcome.INTERNAL_ERROR, f"internal error on the worker ({type(error).__name__})", error=error
            )
        if output is not None and not output.closed:
            # The job's last lines first: the client stops listening once it has the report.
            await complete_despite_cancellation(output.close())
        worker.stats["completed" if outcome.ok else "failed"] += 1
        worker.tell_operator(_operator_line(job.job_id, outcome))
        await complete_despite_cancellation(dialect.report(outcome))
        return outcome
    finally:
        await complete_despite_cancellation(asyncio.to_thread(remove_quietly, job.directory))


async def _steps(
    worker: RTCWorkerClient, job: Job, received: ReceivedFile, dialect: JobDialect, output: OutputQueue
) -> JobOutcome:
    await dialect.stage(JobState.EXTRACTING)
    try:
        package = await asyncio.to_thread(_extract, worker, job, received, dialect)
    except ArchiveError as error:
        logger.error("{}: package {} is unusable: {}", dialect.label, quote_for_log(received.name), describe(error))
        return JobOutcome(Outcome.UNUSABLE_PACKAGE, f"{texts.PACKAGE_REFUSED}: {error}", error=error)
    except (PathError, StorageFullError, OSError) as error:
        logger.error("{}: package {} is unreadable: {}", dialect.label, quote_for_log(received.name), describe(error))
        return JobOutcome(Outcome.UNUSABLE_PACKAGE, f"{texts.PACKAGE_UNREADABLE}: {error}", error=error)
    default_executor = worker.executor is run_manifest_command
    try:
        output_dir = await asyncio.to_thread(dialect.output_dir, package)
        manifest = await asyncio.to_thread(dialect.manifest, package)
        if manifest is None and default_executor:
            raise ManifestError("the package has nothing to run")
    except (ManifestError, PathError) as error:
        if default_executor or not isinstance(error, ManifestError):
            return JobOutcome(Outcome.NOT_RUNNABLE, str(error), error=error)
        manifest = None  # an application's executor may not need a manifest
    await dialect.stage(JobState.RUNNING)
    started = time.monotonic()
    context = JobContext(
        job_id=job.job_id,
        package_dir=package,
        output_dir=output_dir,
        env_allow=worker.job_env_allow,
        manifest=manifest,
        log=lambda line: output.put(dialect.line(line)),
        progress=lambda done, total: output.put(dialect.progress(done, total)),
        timeout_seconds=worker.job_timeout,
        kill_grace_seconds=worker.kill_grace_seconds,
    )
    try:
        await worker.executor(context)
    except JobError as error:
        exit_code = error.exit_code if isinstance(error, JobFailedError) else None
        return JobOutcome(Outcome.FAILED, str(error), exit_code=exit_code, error=error)
    finally:
        worker.tell_operator(f"job {job.job_id} ran {time.monotonic() - started:.1f} s")
    await output.close()
    await dialect.stage(JobState.SENDING_RESULTS)
    files = await asyncio.to_thread(result_files, output_dir)
    total = sum(size for _, size in files)
    try:
        results_path, via = await dialect.deliver_results(output_dir, files)
    except StorageFullError as error:
        return JobOutcome(Outcome.DISK_FULL, str(error), error=error)
    except PathError as error:
        return JobOutcome(Outcome.UNDELIVERED, f"cannot write results: {error}: {error.peer_path}", error=error)
    except RtcxferError as error:
        logger.error("{}: results of job {} not delivered: {}", dialect.label, job.job_id, describe(error))
        return JobOutcome(Outcome.UNDELIVERED, describe(error), error=error)
    worker.tell_operator(f"job {job.job_id} results: {len(files)} files, {total} bytes via {via}")
    return JobOutcome(Outcome.COMPLETE, results_path=results_path, file_count=len(files), total_bytes=total)


def package_unpacker(worker: RTCWorkerClient, directory: Path) -> Callable[[str, int], StreamingUnzip | None]:
    """The ``TransportContext.unpack`` of a job whose files live in ``directory``: its package
    is extracted beneath it as it arrives (unless the worker's
    ``extract_while_receiving`` is off), and handed to :func:`run_job` already checked."""

    def start(name: str, size: int) -> StreamingUnzip | None:
        if not worker.extract_while_receiving:
            return None
        return StreamingUnzip.start(directory, size, worker.zip_limits)

    return start


def _extract(worker: RTCWorkerClient, job: Job, received: ReceivedFile, dialect: JobDialect) -> Path:
    worker.tell_operator(
        f"job {job.job_id} input {quote_for_log(received.name)} ({received.size} bytes) via {received.transport}"
    )
    if received.unpack_error is not None:
        raise received.unpack_error  # found while it arrived: the verdict extract_zip would give
    if isinstance(received.unpacked, ExtractResult):
        result = received.unpacked
        logger.info(
            "{}: received {} ({} bytes, via {}) and extracted {} files while it arrived",
            dialect.label, received.name, received.size, received.transport, result.files,
        )
        return dialect.package_dir(result.root)
    started = time.perf_counter()
    with received.open() as archive:
        result = extract_zip(archive, job.directory, worker.zip_limits)
    elapsed = time.perf_counter() - started
    logger.info(
        "{}: read {} ({} bytes, via {}) and extracted {} files in {:.3f} s",
        dialect.label, received.name, received.size, received.transport, result.files, elapsed,
    )
    return dialect.package_dir(result.root)


def _operator_line(job_id: str, outcome: JobOutcome) -> str:
    if outcome.ok:
        return f"job {job_id} done"
    if outcome.outcome is Outcome.CANCELLED:
        return f"job {job_id} was cancelled"
    if outcome.outcome is Outcome.WORKER_STOPPING:
        return f"job {job_id} stopped: {texts.WORKER_SHUTTING_DOWN}"
    return f"job {job_id} failed: {quote_for_log(outcome.detail or outcome.outcome.value)}"


async def complete_despite_cancellation(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile (cleanup that
    must not be cut short); a cancellation that arrived is re-raised once it is done."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


def remove_quietly(path: Path) -> None:
    """Remove a tree the worker made (without following links in it); log, never raise."""
    try:
        paths.remove_tree(path)
    except OSError as error:
        logger.error("could not remove {}: {}", path, error)

