"""RTCWorkerClient: the worker of the specification. It receives jobs, validates their inputs,
runs them and reports.

One worker serves many client sessions at once (one :class:`WorkerSession` each) and one job at
a time per session. A session starts with ``HELLO``; until it presents the worker's token no
job frame is looked at. A job is announced with ``JOB_SUBMIT``, its input arrives by any
transport (``SHARED_INPUT_PATH`` or ``FILE_META``...), it runs once the input is complete, and
its results go back by shared path or by a byte-moving transport before ``JOB_COMPLETE``.
A client that speaks only the specification's messages (no ``JOB_SUBMIT``) gets an implicit
job for each input it sends.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from rtcxfer import security
from rtcxfer.engine import APPLICATION, Session
from rtcxfer.errors import ArchiveError, JobError, PathError, RtcxferError, StorageFullError, describe
from rtcxfer.filesystem import FilesystemAdapter
from rtcxfer.frames import (
    AuthFailed,
    Frame,
    Hello,
    JobAccepted,
    JobCancel,
    JobComplete,
    JobFailed,
    JobLog,
    JobProgress,
    JobStatus,
    JobSubmit,
    PathErrorFrame,
    ProtocolErrorFrame,
    Welcome,
)
from rtcxfer.jobs import Executor, JobContext, Manifest, ManifestError, run_manifest_command
from rtcxfer.link import Link
from rtcxfer.log import logger
from rtcxfer.plugins import PluginHost
from rtcxfer.safezip import ZipLimits, extract_zip
from rtcxfer.shared_storage import detect_shared_root
from rtcxfer.transport import ReceivedFile, Transport, TransportContext
from rtcxfer.transports.shared_fs import CORRUPTED

PROTOCOL_VERSION = 1
DISK_FULL = "Disk space exhausted on shared storage"
#: Frames the worker application handles itself.
APPLICATION_FRAMES: tuple[type[Frame], ...] = (Hello, JobSubmit, JobCancel, ProtocolErrorFrame)
#: Log lines queued for sending before further lines are counted and dropped.
LOG_QUEUE_LINES = 10_000
UNAUTHENTICATED = "unauthenticated"
MIB = 1024 * 1024


@attrs.define
class Job:
    """One job of a session, from JOB_SUBMIT (or its implicit input) to its report."""

    job_id: str
    directory: Path
    results_via: str | None = None
    task: asyncio.Task | None = None

    @property
    def incoming_dir(self) -> Path:
        return self.directory / "incoming"

    @property
    def output_dir(self) -> Path:
        return self.directory / "output"


class RTCWorkerClient:
    """The worker. Give it a token; it finds shared storage by itself (see :meth:`__init__`)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        shared_storage_root: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        executor: Executor | None = None,
        plugins: PluginHost | None = None,
        job_timeout: float | None = None,
        zip_limits: ZipLimits = ZipLimits(),
        max_file_bytes: int = 1 << 40,
        kill_grace_seconds: float = 5.0,
        transport_options: dict | None = None,
    ) -> None:
        """Shared storage: ``shared_storage_root`` if given, else ``$SHARED_STORAGE_ROOT``,
        else a known container mount point (``/home/jovyan/vast/amick``...); none means the
        worker offers no shared-fs transport. ``executor`` replaces the manifest command (an
        async callable taking a :class:`~rtcxfer.jobs.JobContext`)."""
        choice = detect_shared_root(shared_storage_root)
        #: The shared storage root (a resolved Path), or None when none was found.
        self.shared_storage_root: Path | None = choice.root
        self.shared_storage_source = choice.source
        #: The FilesystemAdapter over the shared storage, or None.
        self.fs_adapter: FilesystemAdapter | None = FilesystemAdapter(choice.root) if choice.root else None
        if choice.root is not None:
            logger.info("worker shared storage root: {} (from {})", choice.root, choice.source)
        self.token = token
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="rtcxfer-worker-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.plugins = plugins or PluginHost()
        self.executor: Executor = executor or run_manifest_command
        self.job_timeout = job_timeout
        self.zip_limits = zip_limits
        self.max_file_bytes = max_file_bytes
        self.kill_grace_seconds = kill_grace_seconds
        self.transport_options = dict(transport_options or {})
        self.sessions: set[WorkerSession] = set()
        #: Counts of finished jobs by outcome, for status output and tests.
        self.stats = {"completed": 0, "failed": 0}

    def offered_transports(self) -> list[str]:
        """Names of the transports this worker can use, best first."""
        context = self._context_template()
        return [info.name for info in self.plugins.transports() if info.transport.usable(context)]

    def _context_template(self) -> TransportContext:
        return TransportContext(
            role="worker",
            incoming_dir=self.work_dir,
            shared_root=self.shared_storage_root,
            max_file_bytes=self.max_file_bytes,
            options={**self.transport_options, "shared-fs": {"fs_adapter": self.fs_adapter}},
        )

    async def serve_channel(self, channel, name: str = "session") -> None:
        """Serve one client over an open data channel until it closes."""
        session = WorkerSession(self, channel, name)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def serve(
        self,
        signaling_url: str,
        room: str,
        *,
        peer_id: str = "worker",
        signaling_token: str | None = None,
        peer_options=None,
        on_ready: Callable[[], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        """Register on the signaling server and serve every client that connects, until cancelled.

        ``on_notice`` receives one line of text about a session worth showing an operator
        (the SCTP packet size each connection uses, and why)."""
        from rtcxfer import rtc
        from rtcxfer.signaling import SignalingClient

        options = peer_options or rtc.PeerOptions()
        tasks: dict[asyncio.Task, str] = {}  # each session's task -> its client's peer id
        async with SignalingClient(signaling_url, room, "worker", peer_id, signaling_token) as signaling:
            logger.info("worker {} ready in room {} at {}", peer_id, room, signaling_url)
            if on_ready is not None:
                on_ready()
            try:
                while True:
                    event = await signaling.receive()
                    payload = event.get("payload")
                    if event.get("type") == "relay" and isinstance(payload, dict) and payload.get("kind") == "offer":
                        task = asyncio.create_task(self._answer(signaling, event["from"], payload, options, on_notice))
                        tasks[task] = event["from"]
                        task.add_done_callback(lambda done: tasks.pop(done, None))
                    elif event.get("type") == "peer-left":
                        # Clients stay in the room for their whole session, so leaving it ends
                        # the session: a killed client is noticed now, not when ICE consent
                        # expires half a minute later, and its job is stopped.
                        for task, client_id in list(tasks.items()):
                            if client_id == event.get("peer_id"):
                                logger.info("client {} left the room; ending its session", client_id)
                                task.cancel()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _answer(self, signaling, client_id: str, offer: dict, options, on_notice=None) -> None:
        from rtcxfer import rtc

        peer = rtc.PeerConnection(options)
        if on_notice is not None:
            peer.watch_packet_size(lambda size: on_notice(f"client {client_id}: {size.describe()}"))
        try:
            sdp = offer.get("sdp")
            if not isinstance(sdp, str):
                logger.warning("offer from {} has no SDP", client_id)
                return
            await signaling.send_to(client_id, {"kind": "answer", "sdp": await peer.accept_offer(sdp)})
            channel = await peer.wait_channel_open(30.0)
            logger.info("client {} connected", client_id)
            await self.serve_channel(channel, name=f"session {client_id}")
        except (RtcxferError, asyncio.TimeoutError, ValueError) as error:
            logger.warning("session with {} ended: {}", client_id, describe(error))
        finally:
            await peer.close()
            logger.info("client {} disconnected", client_id)


class _Refuser:
    """Handles every frame of a session that has not authenticated yet."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session

    async def on_frame(self, frame: Frame) -> None:
        await self.session.refuse("authenticate with HELLO first")

    async def on_chunk(self, event) -> None:
        await self.session.refuse("authenticate with HELLO first")


class WorkerSession:
    """The worker's side of one client session."""

    def __init__(self, worker: RTCWorkerClient, channel, name: str) -> None:
        self.worker = worker
        self.name = name
        self.authenticated = False
        host = worker.plugins
        self.engine = Session(self._claim, catalogue=host.catalogue, application_frames=APPLICATION_FRAMES)
        self.link = Link(channel, self.engine, name=name)
        self.directory = Path(tempfile.mkdtemp(prefix="session-", dir=worker.work_dir))
        self.context = worker._context_template()
        self.context.incoming_dir = self.directory
        self.context.on_file = self._on_file
        self.transports: dict[str, Transport] = {
            info.name: info.transport(self.link, self.context) for info in host.transports()
        }
        for transport_name, transport in self.transports.items():
            self.link.add_handler(transport_name, transport)
        self.link.add_handler(APPLICATION, self)
        self.link.add_handler(UNAUTHENTICATED, _Refuser(self))
        self.job: Job | None = None
        self._log_queue: asyncio.Queue[Frame] = asyncio.Queue(LOG_QUEUE_LINES)
        self._dropped_lines = 0

    def _claim(self, frame: Frame) -> str | None:
        if not self.authenticated:
            return UNAUTHENTICATED
        return self.worker.plugins.claim(frame)

    async def run(self) -> None:
        try:
            await self.link.run()
        finally:
            if self.job is not None and self.job.task is not None:
                self.job.task.cancel()
                await asyncio.gather(self.job.task, return_exceptions=True)
            await asyncio.to_thread(shutil.rmtree, self.directory, True)

    async def refuse(self, reason: str) -> None:
        logger.warning("{}: refused: {}", self.name, reason)
        await self.link.send(AuthFailed(reason))
        self.link.close()

    # --- application frames -----------------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Hello):
            await self._hello(frame)
        elif not self.authenticated:
            await self.refuse("authenticate with HELLO first")
        elif isinstance(frame, JobSubmit):
            await self._submit(frame)
        elif isinstance(frame, JobCancel):
            self._cancel(frame.job_id)
        elif isinstance(frame, ProtocolErrorFrame):
            logger.warning("{}: client reports a protocol error: {}", self.name, frame.reason)

    def on_closed(self) -> None:
        if self.job is not None and self.job.task is not None:
            logger.warning("{}: client disconnected; stopping job {}", self.name, self.job.job_id)
            self.job.task.cancel()

    async def _hello(self, frame: Hello) -> None:
        if frame.version != PROTOCOL_VERSION:
            await self.refuse(f"unsupported protocol version {frame.version} (this worker speaks {PROTOCOL_VERSION})")
            return
        expected = self.worker.token
        if expected is not None and not hmac.compare_digest(frame.auth_token.encode(), expected.encode()):
            await self.refuse("invalid token")
            return
        self.authenticated = True
        logger.info("{}: authenticated", self.name)
        await self.link.send(Welcome(PROTOCOL_VERSION, ",".join(self.worker.offered_transports()) or "none"))

    async def _submit(self, frame: JobSubmit) -> None:
        stale = None
        if self.job is not None:
            if self.job.task is not None or self.job.job_id != frame.job_id:
                await self.link.send(ProtocolErrorFrame(f"job {self.job.job_id} is still running in this session"))
                return
            # The client's retry of a job whose input never arrived (its transport failed
            # before delivering, e.g. an s3 upload was refused): start that job over.
            logger.info("{}: job {} submitted again before its input arrived", self.name, frame.job_id)
            stale, self.job = self.job, None
        if frame.results_via not in self.transports:
            await self.link.send(JobFailed(f"Job {frame.job_id}: no transport {frame.results_via!r} on this worker"))
        else:
            self.job = self._new_job(frame.job_id, frame.results_via)
            await self.link.send(JobAccepted(frame.job_id))
        if stale is not None:
            await asyncio.to_thread(shutil.rmtree, stale.directory, True)

    def _new_job(self, job_id: str, results_via: str | None) -> Job:
        job = Job(job_id, Path(tempfile.mkdtemp(prefix="job-", dir=self.directory)), results_via)
        job.incoming_dir.mkdir()
        job.output_dir.mkdir()
        self.context.incoming_dir = job.incoming_dir
        logger.info("{}: job {} accepted (results via {})", self.name, job_id, results_via or "whatever fits")
        return job

    def _cancel(self, job_id: str) -> None:
        if self.job is not None and self.job.job_id == job_id and self.job.task is not None:
            logger.info("{}: client cancelled job {}", self.name, job_id)
            self.job.task.cancel()

    # --- running a job ----------------------------------------------------------------

    async def _on_file(self, received: ReceivedFile) -> None:
        """A transport delivered an input file: it is the package of the current job."""
        if self.job is None:
            self.job = self._new_job(f"job-{secrets.token_hex(4)}", None)
        if self.job.task is not None:
            logger.warning("{}: job {} already has its input; ignoring {}", self.name, self.job.job_id, received.name)
            return
        self.job.task = asyncio.create_task(self._run_job(self.job, received))

    async def _run_job(self, job: Job, received: ReceivedFile) -> None:
        sender = asyncio.create_task(self._send_logs())
        try:
            await self._run_job_steps(job, received)
        except asyncio.CancelledError:
            self.worker.stats["failed"] += 1
            await self._report(JobFailed(f"Job {job.job_id} was cancelled"))
        finally:
            await self._log_queue.join()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self.context.incoming_dir = self.directory
            self.job = None
            await asyncio.to_thread(shutil.rmtree, job.directory, True)

    async def _run_job_steps(self, job: Job, received: ReceivedFile) -> None:
        await self.link.send(JobStatus(job.job_id, "extracting"))
        try:
            package = await asyncio.to_thread(self._extract, job, received)
        except ArchiveError as error:
            logger.error("{}: package {} is unusable: {}", self.name, received.name, describe(error))
            self.worker.stats["failed"] += 1
            if received.transport == "shared-fs":
                # The spec's reply, which tells the client to retry over the RTC transfer.
                await self._report(PathErrorFrame(f"{CORRUPTED}: {received.name}"))
            else:
                await self._report(JobFailed(f"Job {job.job_id}: package is corrupted or invalid: {error}"))
            return
        except (PathError, StorageFullError) as error:
            self.worker.stats["failed"] += 1
            await self._report(JobFailed(f"Job {job.job_id}: cannot read the package: {error}"))
            return
        try:
            manifest = await asyncio.to_thread(Manifest.load, package)
        except ManifestError as error:
            if self.worker.executor is run_manifest_command:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: {error}"))
                return
            manifest = None  # an application executor may not need a manifest
        await self.link.send(JobStatus(job.job_id, "running"))
        context = JobContext(
            job_id=job.job_id,
            package_dir=package,
            output_dir=job.output_dir,
            manifest=manifest,
            log=lambda line: self._queue_log(JobLog(job.job_id, line)),
            progress=lambda done, total: self._queue_log(JobProgress(job.job_id, done, total)),
            timeout_seconds=self.worker.job_timeout,
            kill_grace_seconds=self.worker.kill_grace_seconds,
        )
        try:
            await self.worker.executor(context)
        except JobError as error:
            self.worker.stats["failed"] += 1
            await self._report(JobFailed(f"Job {job.job_id} failed: {error}"))
            return
        await self.link.send(JobStatus(job.job_id, "sending-results"))
        await self._send_results(job)

    def _extract(self, job: Job, received: ReceivedFile) -> Path:
        started = time.perf_counter()
        with received.open() as archive:
            result = extract_zip(archive, job.directory, self.worker.zip_limits)
        elapsed = time.perf_counter() - started
        logger.info(
            "{}: read {} ({} bytes, via {}) and extracted {} files in {:.3f} s",
            self.name,
            received.name,
            received.size,
            received.transport,
            result.files,
            elapsed,
        )
        return result.root

    async def _send_results(self, job: Job) -> None:
        files = await asyncio.to_thread(_result_files, job.output_dir)
        total = sum(size for _, size in files)
        shared = self.transports.get("shared-fs")
        shared_output = getattr(shared, "output", None)
        via = job.results_via or ("shared-fs" if shared_output else "rtc-chunked")
        if via == "shared-fs":
            if shared_output is None:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: no SHARED_OUTPUT_PATH was given for the results"))
                return
            relative, _ = shared_output
            try:
                await asyncio.to_thread(self._publish_shared, job, files, relative)
            except StorageFullError:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(DISK_FULL))
                return
            except PathError as error:
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: cannot write results: {error}: {error.peer_path}"))
                return
        else:
            relative = job.job_id
            transport = self.transports[via]
            try:
                for relative_name, _ in files:
                    await transport.send_file(job.output_dir / relative_name, relative_name)
            except RtcxferError as error:
                # Unreported, the client would wait for JOB_COMPLETE until the session ends.
                logger.error("{}: results of job {} not sent via {}: {}", self.name, job.job_id, via, describe(error))
                self.worker.stats["failed"] += 1
                await self._report(JobFailed(f"Job {job.job_id}: cannot send results via {via}: {describe(error)}"))
                return
        self.worker.stats["completed"] += 1
        await self._report(JobComplete(job.job_id, relative, len(files), round(total / MIB, 2)))

    def _publish_shared(self, job: Job, files: list[tuple[str, int]], relative_output: str) -> None:
        """Copy results under the shared output path, fsync'ed; on a full disk remove what
        was written and raise :class:`StorageFullError`."""
        root = self.worker.shared_storage_root
        assert root is not None
        created: list[str] = []
        started = time.perf_counter()
        try:
            for name, _ in files:
                target = f"{relative_output}/{name}"
                parent = target.rpartition("/")[0]
                security.makedirs_beneath(root, parent)
                with open(job.output_dir / name, "rb") as source, security.open_beneath(root, target, "wb") as sink:
                    created.append(target)
                    sink.truncate(0)
                    shutil.copyfileobj(source, sink, 1 << 20)
                    sink.flush()
                    os.fsync(sink.fileno())
            _fsync_directory(root / relative_output)
        except (OSError, StorageFullError) as error:
            for target in created:
                (root / target).unlink(missing_ok=True)
            if isinstance(error, StorageFullError) or error.errno in (errno.ENOSPC, errno.EDQUOT):
                logger.error("{}: shared storage full; removed {} partial result files", self.name, len(created))
                raise StorageFullError(DISK_FULL) from None
            raise
        logger.info(
            "{}: wrote {} result files to shared {} in {:.3f} s",
            self.name,
            len(files),
            relative_output,
            time.perf_counter() - started,
        )

    # --- reporting --------------------------------------------------------------------

    def _queue_log(self, frame: Frame) -> None:
        try:
            self._log_queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._dropped_lines += 1

    async def _send_logs(self) -> None:
        while True:
            frame = await self._log_queue.get()
            try:
                await self.link.send(frame)
                if self._dropped_lines and self._log_queue.empty():
                    dropped, self._dropped_lines = self._dropped_lines, 0
                    await self.link.send(JobLog(frame.job_id, f"[rtcxfer] {dropped} lines of output were dropped"))
            except RtcxferError as error:
                logger.debug("{}: log line not sent: {}", self.name, describe(error))
            finally:
                self._log_queue.task_done()

    async def _report(self, frame: Frame) -> None:
        logger.info("{}: {}", self.name, frame.encode())
        # The job's last lines first: the client stops listening once it has the report.
        await self._log_queue.join()
        try:
            await self.link.send(frame)
        except RtcxferError as error:
            logger.warning("{}: could not report {}: {}", self.name, frame.TYPE, describe(error))


def _result_files(output_dir: Path) -> list[tuple[str, int]]:
    """Regular files under ``output_dir`` as (relative POSIX name, size); links are skipped."""
    found = []
    for directory, subdirs, names in os.walk(output_dir, followlinks=False):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                logger.warning("result {} is not a regular file; not sent", path)
                continue
            found.append((path.relative_to(output_dir).as_posix(), info.st_size))
    return found


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
