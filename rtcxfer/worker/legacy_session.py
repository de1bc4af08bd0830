"""The worker's side of one session in sleap-rtc's legacy protocol.

RTC-transfer job (``shared/spec/legacy-protocol.md`` section 2): ``PACKAGE_TYPE`` and
``OUTPUT_DIR`` set the session's job settings, ``FILE_META`` announces the package, raw binary
messages carry it, ``END_OF_FILE`` runs it. The bytes stream into a hidden ``.part`` file (never
held in memory), are counted against the announced size, and are renamed into place only when
complete. The package is extracted with the safe extractor; its top-level folder named after
the ZIP (or the archive's root, for a flat ZIP) is where the job runs: ``bash train-script.sh``
(``track-script.sh`` for ``track``), unless the folder holds an ``rtcxfer.json``, which then
wins. The client reads the job's output lines and the legacy job texts
(:data:`~rtcxfer.protocol.legacy.JOB_TEXTS`), then ``{package folder}/{OUTPUT_DIR}`` zipped as
``FILE_META::trained_{stem}.zip:{size}:{OUTPUT_DIR}``, 32 KiB raw chunks and ``END_OF_FILE``.

Shared-storage job (section 4): ``SHARED_INPUT_PATH`` and ``SHARED_OUTPUT_PATH`` are validated
by the ``shared-fs`` transport itself (the worker specification's ``PATH_VALIDATED`` /
``PATH_ERROR`` texts, the same checks and the same no-symlink opener);
``SHARED_STORAGE_JOB::start`` runs the package read in place, the job's results are written to
the shared output path, and ``JOB_COMPLETE::{the client's job id}::{output path}`` follows.

Whatever the client sends that the protocol does not allow is refused without writing
anything: the worker logs it and tells the client in a line of text (legacy clients print
every text they do not know). Unknown messages are only logged, as the legacy worker did.
A legacy client cannot present the worker's token: the session is authenticated only by the
signaling server's token.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import attrs

from rtcxfer.files import paths as security
from rtcxfer.files.safezip import extract_zip
from rtcxfer.log import logger
from rtcxfer.protocol import legacy as protocol
from rtcxfer.protocol import texts
from rtcxfer.protocol.errors import (
    ArchiveError,
    ConnectionClosedError,
    JobError,
    PathError,
    RemoteProtocolError,
    RtcxferError,
    StorageFullError,
    describe,
)
from rtcxfer.protocol.frames import Frame, SharedInputPath, SharedOutputPath
from rtcxfer.protocol.legacy import JOB_TEXTS, JobTexts, UploadRefused, UploadTracker
from rtcxfer.protocol.manifest import MANIFEST_NAME, Manifest
from rtcxfer.transport.base import ReceivedFile
from rtcxfer.transports.rtc_chunked import part_name
from rtcxfer.transports.shared_fs import SharedFsTransport
from rtcxfer.worker.jobs import JobContext, JobFailedError, run_manifest_command
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient, _result_files, publish_shared_results

#: Output lines queued for the client before further lines are counted and dropped.
LOG_QUEUE_LINES = 10_000
MISSING_PATHS = "Missing input or output path for shared storage job"
#: Prefix of the lines by which the worker itself tells a legacy client something.
NOTICE_PREFIX = "[rtcxfer]"
#: ``OUTPUT_DIR::.``: the results are the whole package folder.
PACKAGE_FOLDER = "."
#: The exit code reported when a job ended without one (timed out, could not start).
NO_EXIT_CODE = 1
#: The name a manifest has when it names none.
_UNNAMED = attrs.fields(Manifest).name.default


@attrs.frozen
class _JobSettings:
    """The session's settings when a job started (the client may change them while it runs)."""

    package_type: str
    output_dir: str
    job_id: str
    shared: bool


class ReplayChannel:
    """A data channel whose first received message was already read: it is returned again."""

    def __init__(self, first: str | bytes, channel) -> None:
        self._first: list[str | bytes] = [first]
        self._channel = channel

    async def recv(self) -> str | bytes:
        if self._first:
            return self._first.pop()
        return await self._channel.recv()

    def __getattr__(self, name: str):
        return getattr(self._channel, name)


async def peek_dialect(channel) -> tuple[ReplayChannel, bool] | None:
    """Read the session's first message: the channel with that message put back, and whether
    it speaks the legacy protocol; None if the channel closed first."""
    try:
        first = await channel.recv()
    except ConnectionClosedError:
        return None
    return ReplayChannel(first, channel), protocol.speaks_legacy(first)


class _FrameSender:
    """What the shared-fs transport needs of a link: ``send(frame)``. The replies it sends
    (``PATH_VALIDATED::input``, ``PATH_ERROR::...``) are the same text in both dialects."""

    def __init__(self, channel) -> None:
        self.channel = channel

    async def send(self, frame: Frame) -> None:
        await self.channel.send_text(frame.encode())


class _LineSender:
    """Sends a job's output lines in order without ever blocking the job; a flood beyond
    :data:`LOG_QUEUE_LINES` queued lines is counted and reported instead."""

    def __init__(self, session: LegacySession, texts: JobTexts) -> None:
        self.session = session
        self.texts = texts
        self.queue: asyncio.Queue[str] = asyncio.Queue(LOG_QUEUE_LINES)
        self.dropped = 0
        self.task = asyncio.create_task(self._run())

    def put(self, line: str) -> None:
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        while True:
            line = await self.queue.get()
            try:
                await self.session.send(self.texts.line(line))
                if self.dropped and self.queue.empty():
                    dropped, self.dropped = self.dropped, 0
                    await self.session.send(self.texts.line(f"{NOTICE_PREFIX} {dropped} lines of output were dropped"))
            finally:
                self.queue.task_done()

    async def close(self) -> None:
        """Send what is queued (unless the channel closed), then stop."""
        joined = asyncio.ensure_future(self.queue.join())
        try:
            await asyncio.wait({joined, self.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
            self.task.cancel()
            await asyncio.gather(joined, self.task, return_exceptions=True)


class LegacySession:
    """The worker's side of one legacy session."""

    def __init__(self, worker: RTCWorkerClient, channel, name: str) -> None:
        self.worker = worker
        self.channel = channel
        self.name = name
        self.directory = Path(tempfile.mkdtemp(prefix="legacy-", dir=worker.work_dir))
        self.package_type = "train"
        self.output_dir = protocol.DEFAULT_OUTPUT_DIR
        self.job_id: str | None = None
        self.uploads = UploadTracker(worker.max_file_bytes)
        self._part: BinaryIO | None = None
        self._part_path: Path | None = None
        self._stray_reported = False
        #: The job this session runs, until its last message to the client is sent.
        self.job_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        context = worker._context_template()
        context.incoming_dir = self.directory
        context.on_file = self._on_shared_input
        self.shared = SharedFsTransport(_FrameSender(channel), context)
        self.shared_input: ReceivedFile | None = None

    # --- the receive loop -------------------------------------------------------------

    async def run(self) -> None:
        logger.info("{}: legacy protocol session (authenticated only by the signaling server's token)", self.name)
        try:
            while True:
                try:
                    message = await self.channel.recv()
                except ConnectionClosedError:
                    return
                try:
                    await self._handle(protocol.decode(message))
                except ConnectionClosedError:
                    return
                except RemoteProtocolError as error:
                    await self._refuse(str(error))
                except (RtcxferError, OSError) as error:
                    # The peer's message could not be served here (a full disk, a failing
                    # write): the session goes on, as after any refusal.
                    logger.error("{}: could not handle the client's message: {}", self.name, describe(error))
                    await self._refuse(describe(error))
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.job_task is not None:
            logger.info("{}: client disconnected; stopping its job", self.name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._drop_part()
        self.shared.on_closed()
        await asyncio.to_thread(shutil.rmtree, self.directory, True)

    async def _handle(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.FileBytes):
            await self._bytes(event.data)
        elif isinstance(event, protocol.KeepAlive):
            return
        elif isinstance(event, protocol.FileMeta):
            await self._file_meta(event)
        elif isinstance(event, protocol.EndOfFile):
            await self._end_of_file()
        elif isinstance(event, protocol.PackageType):
            self.package_type = event.kind
        elif isinstance(event, protocol.OutputDir):
            await self._set_output_dir(event.path)
        elif isinstance(event, protocol.JobId):
            self.job_id = event.job_id
        elif isinstance(event, protocol.SharedInputPath):
            self.shared_input = None
            await self.shared.on_frame(SharedInputPath(event.relative_path))
        elif isinstance(event, protocol.SharedOutputPath):
            self.shared.output = None
            await self.shared.on_frame(SharedOutputPath(event.relative_path))
        elif isinstance(event, protocol.SharedStorageJob):
            await self._start_shared_job()
        elif isinstance(event, protocol.ZmqControl):
            logger.info("{}: GUI control messages (ZMQ_CTRL) are not supported; ignored", self.name)
        else:
            logger.warning("{}: client sent an unrecognized message ({}): {}", self.name, event.reason, event.excerpt)

    # --- telling the client -----------------------------------------------------------

    async def send(self, text: str) -> None:
        await self.channel.send_text(text)

    async def _notice(self, text: str) -> None:
        try:
            await self.send(f"{NOTICE_PREFIX} {text}\n")
        except RtcxferError as error:
            logger.debug("{}: notice not sent: {}", self.name, describe(error))

    async def _refuse(self, reason: str) -> None:
        logger.warning("{}: refused: {}", self.name, reason)
        await self._notice(f"refused: {reason}")

    # --- settings ---------------------------------------------------------------------

    async def _set_output_dir(self, text: str) -> None:
        if text == PACKAGE_FOLDER:
            self.output_dir = text
            return
        try:
            relative = security.check_relative_text(text)
        except PathError as error:
            problem: str | None = str(error)
        else:
            problem = "a ':' cannot be sent back in FILE_META" if ":" in text else None
        if problem is not None:
            await self._refuse(f"OUTPUT_DIR {protocol.excerpt(text)}: {problem}; keeping {self.output_dir}")
            return
        self.output_dir = relative.as_posix()

    # --- uploads ----------------------------------------------------------------------

    def _job_running(self) -> bool:
        return self.job_task is not None

    async def _file_meta(self, meta: protocol.FileMeta) -> None:
        if self._job_running():
            raise UploadRefused(f"upload of {protocol.excerpt(meta.name)} refused: a job is running in this session")
        try:
            relative = security.check_relative_text(meta.name)
        except PathError as error:
            raise UploadRefused(f"upload of {protocol.excerpt(meta.name)} refused: {error}") from None
        if len(relative.parts) != 1 or relative.as_posix() != meta.name or meta.name.startswith("."):
            raise UploadRefused(f"upload of {protocol.excerpt(meta.name)} refused: not a plain file name")
        self.uploads.announce(meta)
        self._drop_part()
        self._stray_reported = False
        if meta.gui:
            logger.info("{}: GUI progress (ZMQ) is not supported; the job's output is sent as text", self.name)

    async def _bytes(self, data: bytes) -> None:
        try:
            upload = self.uploads.feed(len(data))
        except UploadRefused as error:
            self._drop_part()
            # One notice per run of refused bytes, not one per chunk.
            if not self._stray_reported:
                self._stray_reported = True
                raise error
            return
        try:
            if self._part is None:
                upload_dir = Path(tempfile.mkdtemp(prefix="upload-", dir=self.directory))
                self._part_path = upload_dir / part_name(upload.name, secrets.token_hex(16))
                self._part = security.open_beneath(upload_dir, self._part_path.name, "xb")
            self._part.write(data)
        except (OSError, PathError, StorageFullError) as error:
            self.uploads.abort()
            self._drop_part()
            self._stray_reported = True
            raise _cannot_store(upload, error) from None

    def _drop_part(self) -> None:
        part, self._part = self._part, None
        path, self._part_path = self._part_path, None
        if part is not None:
            part.close()
        if path is not None:
            shutil.rmtree(path.parent, ignore_errors=True)

    async def _end_of_file(self) -> None:
        try:
            upload = self.uploads.finish()
        except UploadRefused:
            self._drop_part()
            raise
        part, path = self._part, self._part_path
        self._part = self._part_path = None
        if path is None:  # announced as empty: nothing was written yet
            upload_dir = Path(tempfile.mkdtemp(prefix="upload-", dir=self.directory))
            path = upload_dir / part_name(upload.name, secrets.token_hex(16))
            part = security.open_beneath(upload_dir, path.name, "xb")
        assert part is not None
        final = path.parent / upload.name
        try:
            await asyncio.to_thread(_complete_part, part, path, final)
        except OSError as error:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise _cannot_store(upload, error) from None
        logger.info("{}: received {} ({} bytes)", self.name, upload.name, upload.size)
        settings = _JobSettings(self.package_type, self.output_dir, self.job_id or "", shared=False)
        self._start_job(self._rtc_job(final, path.parent, settings))

    # --- jobs -------------------------------------------------------------------------

    def _start_job(self, coroutine) -> None:
        self.job_task = asyncio.create_task(coroutine)
        self._tasks.add(self.job_task)
        self.job_task.add_done_callback(self._job_done)

    def _job_over(self) -> None:
        """Called by the job right after its last message, before any await: the client may
        start its next job as soon as it reads that message."""
        if self.job_task is asyncio.current_task():
            self.job_task = None

    def _job_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self.job_task is task:
            self.job_task = None
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("{}: legacy job crashed", self.name)

    async def _rtc_job(self, package: Path, job_dir: Path, settings: _JobSettings) -> None:
        try:
            output, _ = await self._run_package(lambda: open(package, "rb"), package.name, job_dir, settings)
            if output is not None:
                await self._send_results(output, package.name, job_dir, settings.output_dir)
        except ConnectionClosedError:
            logger.info("{}: the client left before its results were sent", self.name)
        finally:
            self._job_over()
            await asyncio.to_thread(shutil.rmtree, job_dir, True)

    async def _on_shared_input(self, received: ReceivedFile) -> None:
        self.shared_input = received

    async def _start_shared_job(self) -> None:
        received, output = self.shared_input, self.shared.output
        if received is None or output is None:
            await self.send(f"PATH_ERROR::{MISSING_PATHS}")
            return
        job_id = self.job_id or f"job_{secrets.token_hex(4)}"
        if self._job_running() or (self.uploads.current is not None and self.uploads.current.started):
            await self.send(protocol.job_failed(job_id, "another job or upload is in progress in this session"))
            return
        self.uploads.discard_unstarted()
        # Each pair of paths serves one job; the next job names its own.
        self.shared_input = None
        self.shared.output = None
        job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self.directory))
        settings = _JobSettings(self.package_type, self.output_dir, job_id, shared=True)
        self._start_job(self._shared_job(received, output[0], job_dir, settings))

    async def _shared_job(
        self, received: ReceivedFile, relative_output: str, job_dir: Path, settings: _JobSettings
    ) -> None:
        job_id = settings.job_id
        try:
            output, failure = await self._run_package(received.open, received.name, job_dir, settings)
            if output is None or failure is not None:
                await self.send(protocol.job_failed(job_id, failure or "the job did not run"))
                return
            files = await asyncio.to_thread(_result_files, output)
            try:
                # The worker's one implementation of writing results to shared storage, with
                # its no-symlink opener, fsync and clean-up of a full disk.
                await asyncio.to_thread(
                    publish_shared_results, self.worker.shared_storage_root, output, files, relative_output, self.name
                )
            except StorageFullError:
                self.worker.stats["failed"] += 1
                await self.send(protocol.job_failed(job_id, texts.DISK_FULL))
                return
            except PathError as error:
                self.worker.stats["failed"] += 1
                await self.send(protocol.job_failed(job_id, f"cannot write results: {error}: {error.peer_path}"))
                return
            self.worker.stats["completed"] += 1
            await self.send(protocol.job_complete(job_id, relative_output))
        except ConnectionClosedError:
            logger.info("{}: the client left before job {} was reported", self.name, job_id)
        finally:
            self._job_over()
            await asyncio.to_thread(shutil.rmtree, job_dir, True)

    async def _run_package(
        self, opener: Callable[[], BinaryIO], package_name: str, job_dir: Path, settings: _JobSettings
    ) -> tuple[Path | None, str | None]:
        """Extract and run a package, sending the legacy job texts. Returns the job's output
        directory (None: there is no package to take results from) and why the job failed
        (None: it succeeded). The client has been told either way."""
        texts = JOB_TEXTS[settings.package_type]
        stem = protocol.package_stem(Path(package_name).name)
        try:
            package_dir = await asyncio.to_thread(self._extract, opener, job_dir, stem)
        except (ArchiveError, PathError, StorageFullError, OSError) as error:
            logger.error("{}: package {} is unusable: {}", self.name, package_name, describe(error))
            self.worker.stats["failed"] += 1
            await self._notice(f"package {protocol.excerpt(package_name)} refused: {error}")
            await self.send(texts.error(stem, NO_EXIT_CODE))
            await self.send(texts.done)
            return None, f"{texts.CORRUPTED}: {package_name}"
        output = package_dir / settings.output_dir
        try:
            if settings.output_dir != PACKAGE_FOLDER:
                await asyncio.to_thread(security.makedirs_beneath, package_dir, settings.output_dir)
            manifest = await asyncio.to_thread(self._manifest, package_dir, texts, stem)
        except (JobError, PathError) as error:
            self.worker.stats["failed"] += 1
            await self._notice(f"job not run: {error}")
            await self.send(texts.error(stem, NO_EXIT_CODE))
            await self.send(texts.done)
            return output, f"job not run: {error}"
        if manifest is None and self.worker.executor is run_manifest_command:
            self.worker.stats["failed"] += 1
            await self.send(texts.missing_script or texts.error(stem, NO_EXIT_CODE))
            await self.send(texts.done)
            return output, f"the package has no {texts.script}"
        name = manifest.name if manifest is not None and manifest.name != _UNNAMED else stem
        if texts.opening is not None:
            await self.send(texts.opening)
        await self.send(texts.start(name))
        lines = _LineSender(self, texts)
        context = JobContext(
            job_id=settings.job_id or name,
            package_dir=package_dir,
            output_dir=output,
            env_allow=self.worker.job_env_allow,
            manifest=manifest,
            log=lines.put,
            progress=lambda done, total: None,  # a legacy client has no progress message
            timeout_seconds=self.worker.job_timeout,
            kill_grace_seconds=self.worker.kill_grace_seconds,
        )
        failure: str | None = None
        exit_code = 0
        try:
            await self.worker.executor(context)
        except JobError as error:
            failure = f"Job failed: {error}"
            known = isinstance(error, JobFailedError) and error.exit_code is not None
            exit_code = error.exit_code if known else NO_EXIT_CODE
            if not known:  # timed out, or could not start: the output does not say so
                lines.put(f"{NOTICE_PREFIX} {error}")
        finally:
            await lines.close()
        if failure is None:
            await self.send(texts.end(name))
        else:
            self.worker.stats["failed"] += 1
            await self.send(texts.error(name, exit_code))
        await self.send(texts.done)
        if failure is None and not settings.shared:
            self.worker.stats["completed"] += 1
        return output, failure

    def _extract(self, opener: Callable[[], BinaryIO], job_dir: Path, stem: str) -> Path:
        with opener() as archive:
            root = extract_zip(archive, job_dir, self.worker.zip_limits).root
        # sleap-rtc's packages hold one folder named like the ZIP; a flat ZIP runs at its root.
        return root / stem if security.is_dir_beneath(root, stem) else root

    def _manifest(self, package_dir: Path, texts: JobTexts, stem: str) -> Manifest | None:
        """The package's rtcxfer.json if it has one, else its script run with bash (None: no
        script, or the worker's own executor decides what to run)."""
        if (package_dir / MANIFEST_NAME).is_file():
            return Manifest.load(package_dir)
        if self.worker.executor is not run_manifest_command:
            return None
        if texts.missing_script is not None and not _is_file_beneath(package_dir, texts.script):
            return None
        # A missing train-script.sh is left to bash, whose message becomes the job's output.
        return Manifest(("bash", texts.script), name=stem)

    async def _send_results(self, output: Path, package_name: str, job_dir: Path, output_dir: str) -> None:
        name = protocol.result_name(package_name)
        archive = job_dir / name
        size = await asyncio.to_thread(_zip_results, output, archive)
        await self.send(protocol.result_meta(name, size, output_dir))
        with open(archive, "rb") as handle:
            while block := await asyncio.to_thread(handle.read, 32 * protocol.RESULT_CHUNK_SIZE):
                for start in range(0, len(block), protocol.RESULT_CHUNK_SIZE):
                    await self.channel.send_bytes(block[start : start + protocol.RESULT_CHUNK_SIZE])
        await self.send(protocol.END_OF_FILE)
        logger.info("{}: sent {} ({} bytes)", self.name, name, size)


def _complete_part(part: BinaryIO, path: Path, final: Path) -> None:
    """fsync and close the partial upload, then rename it onto its final name. Blocking."""
    try:
        part.flush()
        os.fsync(part.fileno())
    finally:
        part.close()
    os.replace(path, final)


def _zip_results(output: Path, archive: Path) -> int:
    """Zip the regular files under ``output`` (names relative to it, as sleap-rtc's
    ``make_archive`` writes them) into ``archive``; its size. Blocking."""
    with zipfile.ZipFile(archive, "x", zipfile.ZIP_DEFLATED) as bundle:
        for relative, _ in _result_files(output):
            with security.open_beneath(output, relative, "rb") as source:
                with bundle.open(relative, "w", force_zip64=True) as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    return archive.stat().st_size


def _is_file_beneath(root: Path, relative: str) -> bool:
    try:
        return stat.S_ISREG(security.stat_beneath(root, relative).st_mode)
    except PathError:
        return False


def _cannot_store(upload: protocol.Upload, error: BaseException) -> UploadRefused:
    return UploadRefused(f"upload of {protocol.excerpt(upload.name)} dropped: cannot store it: {error}")
