"""The worker's side of one session in rtcxfer's own protocol.

A session starts with mutual authentication (``HELLO``, ``AUTH_CHALLENGE``, ``AUTH_PROOF``,
``WELCOME``; see :mod:`rtcxfer.protocol.auth`): until the client has proved the token nothing
but those frames is looked at, nothing is created on disk, and the session is closed after a
couple of unusable messages or when its deadline passes. Proving the token also takes one of
the worker's job slots (``WORKER_BUSY`` when none is free), held until the session ends.

Then one job at a time: ``JOB_SUBMIT`` announces it, its input arrives by any transport
(``SHARED_INPUT_PATH``, ``FILE_META``, ...), it runs through the job pipeline
(:mod:`rtcxfer.worker.pipeline`) once the input is complete, and its results go back by the
transport the client named before ``JOB_COMPLETE``. A job ends with exactly one of
``JOB_COMPLETE``, ``JOB_FAILED`` or ``PATH_ERROR``: a transport that refuses the input the
client named (``PATH_ERROR``) ends the job waiting for it, so the next ``JOB_SUBMIT`` is a fresh
start. A client that speaks only the specification's messages (no ``JOB_SUBMIT``) gets an
implicit job for each input it sends, whose results go back the way its input came (on the
shared storage for a ``SHARED_INPUT_PATH``: a client of the specification reads no
``FILE_META``). docs/protocol.md section 6 is this module's contract, held to it by
tests/docs/test_doc_and_worker_agree.py.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rtcxfer.files import kept_partials
from rtcxfer.log import logger
from rtcxfer.net.link import Link
from rtcxfer.protocol import auth, frames, texts
from rtcxfer.protocol.engine import APPLICATION, Engine
from rtcxfer.protocol.errors import (
    ArchiveError,
    ConnectionClosedError,
    PathError,
    RtcxferError,
    TransferError,
    describe,
)
from rtcxfer.protocol.frames import PROTOCOL_VERSION, Frame, JobState, quote_for_log
from rtcxfer.protocol.manifest import Manifest
from rtcxfer.transport.base import ReceivedFile, Transport
from rtcxfer.worker.jobs import SUPERVISOR_MARGIN
from rtcxfer.worker.pipeline import (
    Job,
    JobOutcome,
    Outcome,
    complete_despite_cancellation,
    package_unpacker,
    remove_quietly,
    run_job,
)

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

#: Frames the worker application handles itself.
APPLICATION_FRAMES: tuple[type[Frame], ...] = (
    frames.Hello,
    frames.AuthProof,
    frames.JobSubmit,
    frames.JobCancel,
    frames.ProtocolErrorFrame,
)
#: The handler name of frames that arrive before the client authenticated.
UNAUTHENTICATED = "unauthenticated"
MIB = 1024 * 1024
#: How long a stopped job's input may take to stop arriving before its partial is kept (seconds).
INPUT_SETTLE_SECONDS = 3.0
#: How long an input extracted while it arrived may take to be written back into its partial.
INPUT_RESTORE_SECONDS = 120.0


class UnauthenticatedRefuser:
    """Handles every frame of a session that has not authenticated yet: it refuses them all."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session

    async def on_frame(self, frame: Frame) -> None:
        await self.session.refuse("authenticate with HELLO first")

    async def on_chunk(self, event) -> None:
        await self.session.refuse("authenticate with HELLO first")


class WorkerSession:
    """The worker's side of one client session in rtcxfer's protocol."""

    def __init__(
        self, worker: RTCWorkerClient, channel, name: str, *, on_authenticated: Callable[[], None] | None = None
    ) -> None:
        self.worker = worker
        self.name = name
        self.authenticated = False
        self._on_authenticated = on_authenticated
        self._client_nonce: str | None = None
        self._client_transports = ""
        self._worker_nonce: str | None = None
        host = worker.plugins
        self.engine = Engine(
            self._claim,
            catalogue=host.catalogue,
            application_frames=APPLICATION_FRAMES,
            chunk_gate=lambda: None if self.authenticated else UNAUTHENTICATED,
        )
        self.link = Link(channel, self.engine, name=name, max_violations=worker.limits.max_bad_frames_unauthenticated)
        #: The session's private directory, made once the client has authenticated.
        self.directory: Path | None = None
        self.context = worker.transport_context()
        self.context.on_file = self._on_file
        self.context.on_input_refused = self._on_input_refused
        self.transports: dict[str, Transport] = {
            info.name: info.transport(self.link, self.context) for info in host.transports()
        }
        for transport_name, transport in self.transports.items():
            self.link.add_handler(transport_name, transport)
        self.link.add_handler(APPLICATION, self)
        self.link.add_handler(UNAUTHENTICATED, UnauthenticatedRefuser(self))
        self.job: Job | None = None
        #: Every job task not yet ended, the current one and one still removing its files.
        self._job_tasks: set[asyncio.Task] = set()

    def _claim(self, frame: Frame) -> str | None:
        if not self.authenticated:
            return UNAUTHENTICATED
        return self.worker.plugins.claim(frame)

    async def run(self, auth_deadline: float | None = None) -> None:
        """Serve until the channel closes; unauthenticated after ``auth_deadline`` s: closed."""
        watchdog = None
        if auth_deadline is not None:
            watchdog = asyncio.create_task(self._enforce_auth_deadline(auth_deadline))
        try:
            await self.link.run()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            # A cancel (the client left the room) must not cut the cleanup short: the job's
            # processes are stopped and the session's files removed in any case.
            await complete_despite_cancellation(self._clean_up(watchdog))

    async def _enforce_auth_deadline(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.authenticated and not self.link.closed:
            await self.refuse(f"no authentication within {seconds:.3g} s")

    async def _clean_up(self, watchdog: asyncio.Task | None) -> None:
        if watchdog is not None:
            await asyncio.gather(watchdog, return_exceptions=True)
        job = self.job
        if job is not None and job.task is not None:
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)
        elif job is not None:
            self.worker.tell_operator(f"job {job.job_id} stopped: the client left before its input arrived")
            await self._keep_partial_input(job)
        # A job that has reported may still be removing its directory: removing the session's
        # at the same time fails on names the other removal took first, and leaves it behind.
        await asyncio.gather(*self._job_tasks, return_exceptions=True)
        self.worker.job_slots.release(self)
        if self.directory is not None:
            await asyncio.to_thread(remove_quietly, self.directory)

    async def refuse(self, reason: str) -> None:
        logger.warning("{}: refused: {}", self.name, reason)
        try:
            await self.link.send(frames.AuthFailed(reason))
        except RtcxferError as error:
            logger.debug("{}: refusal not sent: {}", self.name, describe(error))
        self.link.close()

    # --- application frames -----------------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, frames.Hello):
            await self._hello(frame)
        elif isinstance(frame, frames.AuthProof):
            await self._proof(frame)
        elif not self.authenticated:
            await self.refuse("authenticate with HELLO first")
        elif isinstance(frame, frames.JobSubmit):
            await self._submit(frame)
        elif isinstance(frame, frames.JobCancel):
            await self._cancel(frame.job_id)
        elif isinstance(frame, frames.ProtocolErrorFrame):
            logger.warning("{}: client reports a protocol error: {}", self.name, quote_for_log(frame.reason))

    def on_closed(self) -> None:
        if self.job is not None and self.job.task is not None:
            if self.worker.stopping:
                return  # the shutdown stops the job and reports it
            # A client that left (Ctrl-C, or its connection lost) is nothing for the operator to fix.
            logger.info("{}: the client left; stopping job {}", self.name, self.job.job_id)
            self.job.task.cancel()

    async def _hello(self, frame: frames.Hello) -> None:
        if self.authenticated or self._client_nonce is not None:
            await self.refuse("HELLO was already sent in this session")
            return
        if frame.version != PROTOCOL_VERSION:
            await self.refuse(f"unsupported protocol version {frame.version} (this worker speaks {PROTOCOL_VERSION})")
            return
        if not auth.is_nonce(frame.client_nonce):
            await self.refuse(f"HELLO needs a nonce of {2 * auth.NONCE_BYTES} lowercase hex digits")
            return
        self._client_nonce, self._client_transports = frame.client_nonce, frame.transports
        self._worker_nonce = auth.new_nonce()
        await self.link.send(frames.AuthChallenge(self._worker_nonce))

    def _transcript(self) -> auth.Transcript:
        assert self._client_nonce is not None and self._worker_nonce is not None
        local, remote = auth.channel_fingerprints(self.link.channel)
        return auth.Transcript(self._client_nonce, self._worker_nonce, remote, local, self._client_transports)

    async def _proof(self, frame: frames.AuthProof) -> None:
        if self.authenticated or self._worker_nonce is None:
            await self.refuse("AUTH_PROOF out of order: send HELLO and answer its AUTH_CHALLENGE")
            return
        transcript = self._transcript()
        token = self.worker.token
        if token is not None and not auth.proofs_match(auth.client_proof(token, transcript), frame.proof):
            await self.refuse("invalid token")
            return
        busy = self.worker.job_slots.take(self)
        if busy is not None:
            # Only now, to a client that proved the token: the slots are the room's business.
            logger.info("{}: refused, busy: {}", self.name, busy)
            try:
                await self.link.send(frames.WorkerBusy(busy))
            except RtcxferError as error:
                logger.debug("{}: busy reply not sent: {}", self.name, describe(error))
            self.link.close()
            return
        self.authenticated = True
        self.link.max_violations = self.worker.limits.max_bad_frames
        self.directory = Path(tempfile.mkdtemp(prefix="session-", dir=self.worker.work_dir))
        self.context.incoming_dir = self.directory
        if self._on_authenticated is not None:
            self._on_authenticated()
        logger.info("{}: authenticated", self.name)
        transports = ",".join(self.worker.offered_transports()) or "none"
        proof = auth.worker_proof(token, transcript, transports) if token is not None else auth.NO_PROOF
        await self.link.send(frames.Welcome(PROTOCOL_VERSION, transports, proof))

    async def _submit(self, frame: frames.JobSubmit) -> None:
        stale = None
        ending = self.job.task if self.job is not None and self.job.cancelled else None
        if ending is not None:
            # JOB_CANCEL then JOB_SUBMIT: let the cancelled job finish stopping its processes
            # (at most its grace and the supervisor's margin) rather than refuse the new one.
            await asyncio.wait({ending}, timeout=self.worker.kill_grace_seconds + SUPERVISOR_MARGIN + 5)
        if self.worker.job_slots.draining and (self.job is None or self.job.job_id != frame.job_id):
            draining = f"Job {frame.job_id}: this worker is draining and accepts no new jobs"
            await self.link.send(frames.JobFailed(draining))
            return
        if self.job is not None:
            if self.job.task is not None or self.job.job_id != frame.job_id:
                running = f"job {self.job.job_id} is still running in this session"
                await self.link.send(frames.ProtocolErrorFrame(running))
                return
            # The client's retry of a job whose input never arrived (its transport failed
            # before delivering, e.g. an s3 upload was refused): start that job over.
            logger.info("{}: job {} submitted again before its input arrived", self.name, frame.job_id)
            stale, self.job = self.job, None
        if frame.results_via not in self.transports:
            unknown = f"Job {frame.job_id}: no transport {frame.results_via!r} on this worker"
            await self.link.send(frames.JobFailed(unknown))
        else:
            self.job = self._new_job(frame.job_id, frame.results_via)
            await self.link.send(frames.JobAccepted(frame.job_id))
        if stale is not None:
            await self._drop_input(stale)

    def _new_job(self, job_id: str, results_via: str | None) -> Job:
        assert self.directory is not None, "jobs exist only in authenticated sessions"
        job = Job(job_id, Path(tempfile.mkdtemp(prefix="job-", dir=self.directory)), results_via)
        job.incoming_dir.mkdir()
        job.output_dir.mkdir()
        self.context.incoming_dir = job.incoming_dir
        self.context.unpack = package_unpacker(self.worker, job.directory)
        logger.info("{}: job {} accepted (results via {})", self.name, job_id, results_via or "whatever fits")
        self.worker.tell_operator(f"job {job_id} accepted ({self.name})")
        return job

    async def _cancel(self, job_id: str) -> None:
        job = self.job
        if job is None or job.job_id != job_id:
            return
        logger.info("{}: client cancelled job {}", self.name, job_id)
        job.cancelled = True
        if job.task is not None:
            job.task.cancel()  # its own ending reports JOB_FAILED and removes its files
            return
        # Accepted, but its input never arrived: nothing runs, so clear it here, or every later
        # JOB_SUBMIT in this session would be told the job is still running.
        self.end_job(job)
        self.worker.stats["failed"] += 1
        self.worker.tell_operator(f"job {job_id} was cancelled")
        # A task the session's cleanup waits for: the client's Ctrl-C ends the session right
        # after its cancel, and the session's removal must not take the partial with it.
        dropping = asyncio.create_task(self._drop_input(job))
        self._job_tasks.add(dropping)
        dropping.add_done_callback(self._job_tasks.discard)
        await NativeJobDialect(self, job, None).report(JobOutcome(Outcome.CANCELLED))

    async def _drop_input(self, job: Job) -> None:
        """Keep a job's partial input for a resume, then remove the job's files."""
        await self._keep_partial_input(job)
        await asyncio.to_thread(remove_quietly, job.directory)

    async def _keep_partial_input(self, job: Job) -> None:
        """An upload that stopped part-way is kept for the client's re-run to resume."""
        # The cancel comes over the data channel, the bytes may come over a connection of their
        # own (direct): let the receiver see the sender stop and let go of the partial first.
        # An input extracted while it arrived is first written back into its partial (a
        # thread copies the staged members): worth waiting for, it is the resume.
        started = time.monotonic()
        while kept_partials.receiving_into(job.incoming_dir):
            waited = time.monotonic() - started
            restoring = kept_partials.restoring_into(job.incoming_dir)
            if waited > (INPUT_RESTORE_SECONDS if restoring else INPUT_SETTLE_SECONDS):
                break
            await asyncio.sleep(0.02)
        kept = self.worker.kept_partials_dir
        if await asyncio.to_thread(kept_partials.keep_partials, job.incoming_dir, kept):
            await asyncio.to_thread(kept_partials.prune, kept)

    def end_job(self, job: Job) -> None:
        """The job reported (or never started): the session takes its next one (called before
        the report leaves: the client may submit the next job as soon as it reads it)."""
        self.context.incoming_dir = self.directory
        self.context.unpack = None
        if self.job is job:
            self.job = None

    def _on_input_refused(self, reason: str) -> None:
        """A transport refused the input the client named for the job waiting for one (a
        ``PATH_ERROR`` about to leave): that ends the job, so the client's next ``JOB_SUBMIT``
        (the same job by another transport, or a new one) is a fresh start."""
        job = self.job
        if job is None or job.task is not None:
            return  # no job waits for its input (an implicit job starts only with a valid one)
        logger.info("{}: job {} ends: its input was refused ({})", self.name, job.job_id, quote_for_log(reason))
        self.end_job(job)
        self.worker.stats["failed"] += 1
        self.worker.tell_operator(f"job {job.job_id} failed: {quote_for_log(reason)}")
        dropping = asyncio.create_task(self._drop_input(job))
        self._job_tasks.add(dropping)
        dropping.add_done_callback(self._job_tasks.discard)

    # --- running a job ----------------------------------------------------------------

    async def _on_file(self, received: ReceivedFile) -> None:
        """A transport delivered an input file: it is the package of the current job."""
        if self.job is None:
            self.job = self._new_job(f"job-{secrets.token_hex(4)}", None)
        job = self.job
        if job.task is not None:
            logger.warning(
                "{}: job {} already has its input; ignoring {}", self.name, job.job_id, quote_for_log(received.name)
            )
            return
        job.task = asyncio.create_task(run_job(self.worker, job, received, NativeJobDialect(self, job, received)))
        self._job_tasks.add(job.task)
        job.task.add_done_callback(self._job_tasks.discard)


class NativeJobDialect:
    """What rtcxfer's protocol says of one job: ``JOB_STATUS``, ``JOB_LOG``, ``JOB_PROGRESS``,
    then ``JOB_COMPLETE``, ``JOB_FAILED`` or the specification's ``PATH_ERROR``."""

    def __init__(self, session: WorkerSession, job: Job, received: ReceivedFile | None) -> None:
        self.session = session
        self.job = job
        self.received = received
        self.label = session.name
        #: The transport the results went by, once chosen.
        self.via: str | None = None

    # --- the package --------------------------------------------------------------------

    def package_dir(self, extracted: Path) -> Path:
        return extracted

    def manifest(self, package_dir: Path) -> Manifest | None:
        return Manifest.load(package_dir)

    def output_dir(self, package_dir: Path) -> Path:
        return self.job.output_dir

    # --- what the client hears --------------------------------------------------------

    async def stage(self, state: str) -> None:
        await self.session.link.send(frames.JobStatus(self.job.job_id, state))

    def line(self, text: str) -> Frame:
        return frames.JobLog(self.job.job_id, text)

    def progress(self, done: int, total: int) -> Frame:
        return frames.JobProgress(self.job.job_id, done, total)

    def dropped(self, count: int) -> Frame:
        return frames.JobLog(self.job.job_id, f"[rtcxfer] {count} lines of output were dropped")

    async def send(self, message: Frame) -> None:
        await self.session.link.send(message)

    def _results_via(self) -> str:
        """The transport named in ``JOB_SUBMIT``; for an implicit job, the one the client asked
        results of (a ``SHARED_OUTPUT_PATH``), else the one its input came by (a client that
        speaks only the specification's messages reads its results on the shared storage, where
        it cannot read ``FILE_META``), else the fallback."""
        if self.job.results_via is not None:
            return self.job.results_via
        transports = self.session.transports
        requested = next((name for name, transport in transports.items() if transport.results_requested), None)
        came_by = self.received.transport if self.received is not None else None
        if requested is None and came_by in transports:
            requested = came_by
        fallback = requested or self.session.worker.plugins.fallback_transport(transports)
        if fallback is None:
            raise TransferError("no transport can carry the results")
        return fallback

    async def deliver_results(self, output_dir: Path, files: Sequence[tuple[str, int]]) -> tuple[str, str]:
        self.via = self._results_via()
        return await self.session.transports[self.via].send_results(self.job.job_id, output_dir, files), self.via

    async def report(self, outcome: JobOutcome) -> None:
        job_id = self.job.job_id
        kind = outcome.outcome
        if kind is Outcome.COMPLETE:
            assert outcome.results_path is not None
            frame: Frame = frames.JobComplete(
                job_id, outcome.results_path, outcome.file_count, round(outcome.total_bytes / MIB, 2)
            )
        elif kind is Outcome.UNUSABLE_PACKAGE:
            frame = self._input_refusal(outcome) or frames.JobFailed(f"Job {job_id}: {outcome.detail}")
        elif kind is Outcome.NOT_RUNNABLE:
            # A missing or invalid manifest refuses the package as a broken ZIP does: one
            # documented reason, the detail after it (docs/protocol.md 6.4).
            frame = frames.JobFailed(f"Job {job_id}: {texts.PACKAGE_REFUSED}: {outcome.detail}")
        elif kind is Outcome.DISK_FULL:
            frame = frames.JobFailed(texts.DISK_FULL)  # the specification's words exactly
        elif kind is Outcome.CANCELLED:
            frame = frames.JobFailed(f"Job {job_id} was cancelled")
        elif kind is Outcome.WORKER_STOPPING:
            await self._send_quietly(frames.JobStatus(job_id, JobState.WORKER_STOPPING))
            frame = frames.JobFailed(f"Job {job_id} stopped: {texts.WORKER_SHUTTING_DOWN}")
        elif kind in (Outcome.FAILED, Outcome.INTERNAL_ERROR):
            frame = frames.JobFailed(f"Job {job_id} failed: {outcome.detail}")
        elif kind is Outcome.UNDELIVERED and not isinstance(outcome.error, PathError):
            frame = frames.JobFailed(f"Job {job_id}: cannot send results via {self.via}: {outcome.detail}")
        else:
            frame = frames.JobFailed(f"Job {job_id}: {outcome.detail}")
        logger.info("{}: {}", self.label, frame.encode())
        self.session.end_job(self.job)
        await self._send_quietly(frame)

    def _input_refusal(self, outcome: JobOutcome) -> Frame | None:
        """The input transport's own words for an input it delivered that is corrupted or could
        not be read (shared-fs: the specification's ``PATH_ERROR``), if it has any."""
        in_place = self._input_transport()
        if in_place is None or self.received is None:
            return None
        if isinstance(outcome.error, ArchiveError):
            return in_place.unusable_input_reply(self.received)
        if isinstance(outcome.error, PathError):
            return in_place.unreadable_input_reply(self.received, outcome.error)
        return None

    def _input_transport(self) -> Transport | None:
        return self.session.transports.get(self.received.transport) if self.received is not None else None

    async def _send_quietly(self, frame: Frame) -> None:
        try:
            await self.session.link.send(frame)
        except ConnectionClosedError as error:
            # The client left (Ctrl-C, a lost connection): nothing is wrong here.
            logger.info("{}: the client left before hearing {} ({})", self.label, frame.TYPE, error)
        except RtcxferError as error:
            logger.warning("{}: could not report {}: {}", self.label, frame.TYPE, describe(error))
