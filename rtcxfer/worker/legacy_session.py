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
import secrets
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from rtcxfer.files import paths, results
from rtcxfer.files.receiving import IncomingFile, new_transfer_id
from rtcxfer.log import logger
from rtcxfer.protocol import legacy, texts
from rtcxfer.protocol.errors import (
    ConnectionClosedError,
    PathError,
    RemoteProtocolError,
    RtcxferError,
    TransferError,
    describe,
)
from rtcxfer.protocol.frames import Frame, JobState, SharedInputPath, SharedOutputPath
from rtcxfer.protocol.legacy import JOB_TEXTS, JobTexts, UploadRefused, UploadTracker
from rtcxfer.protocol.manifest import MANIFEST_NAME, Manifest, ManifestError
from rtcxfer.transport.base import ReceivedFile
from rtcxfer.transports.shared_fs import SharedFsTransport
from rtcxfer.worker.jobs import JobFailedError, run_manifest_command
from rtcxfer.worker.pipeline import Job, JobOutcome, Outcome, package_unpacker, remove_quietly, run_job

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

MISSING_PATHS = "Missing input or output path for shared storage job"
#: Prefix of the lines by which the worker itself tells a legacy client something.
NOTICE_PREFIX = "[rtcxfer]"
#: ``OUTPUT_DIR::.``: the results are the whole package folder.
PACKAGE_FOLDER = "."
#: The exit code reported when a job ended without one (timed out, could not start).
NO_EXIT_CODE = 1
#: The name a manifest has when it names none.
UNNAMED = attrs.fields(Manifest).name.default
#: What a legacy upload is called where the job's input says which transport brought it.
LEGACY_UPLOAD = "legacy-upload"


@attrs.frozen
class JobSettings:
    """The session's settings when a job started (the client may change them while it runs)."""

    package_type: str
    output_dir: str
    job_id: str
    #: The results go to this path of the shared storage (a shared-storage job), else they are
    #: zipped and sent back over the channel.
    shared_output: str | None = None


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
    return ReplayChannel(first, channel), legacy.speaks_legacy(first)


class FrameSender:
    """What the shared-fs transport needs of a link: ``send(frame)``. The replies it sends
    (``PATH_VALIDATED::input``, ``PATH_ERROR::...``) are the same text in both dialects."""

    def __init__(self, channel) -> None:
        self.channel = channel

    async def send(self, frame: Frame) -> None:
        await self.channel.send_text(frame.encode())


class LegacySession:
    """The worker's side of one legacy session."""

    def __init__(self, worker: RTCWorkerClient, channel, name: str) -> None:
        self.worker = worker
        self.channel = channel
        self.name = name
        self.directory = Path(tempfile.mkdtemp(prefix="legacy-", dir=worker.work_dir))
        self.package_type = "train"
        self.output_dir = legacy.DEFAULT_OUTPUT_DIR
        self.job_id: str | None = None
        self.uploads = UploadTracker(worker.max_file_bytes)
        #: The upload being received, and the directory it (then its job) lives in.
        self._incoming: IncomingFile | None = None
        self._upload_dir: Path | None = None
        self._stray_reported = False
        #: The job this session runs, until its last message to the client is sent.
        self.job_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        context = worker.transport_context()
        context.incoming_dir = self.directory
        context.on_file = self._on_shared_input
        # The legacy protocol's shared-storage messages are the worker specification's: the
        # shared-fs transport validates them (and answers with the specification's texts).
        self.shared = SharedFsTransport(FrameSender(channel), context)
        self.shared_input: ReceivedFile | None = None

    # --- the receive loop -------------------------------------------------------------

    async def run(self) -> None:
        logger.info("{}: legacy protocol session (authenticated only by the signaling server's token)", self.name)
        try:
            await self._receive_loop()
        finally:
            await self._close()

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.channel.recv()
            except ConnectionClosedError:
                return
            try:
                await self._handle(legacy.decode(message))
            except ConnectionClosedError:
                return
            except RemoteProtocolError as error:
                await self._refuse(str(error))
            except (RtcxferError, OSError) as error:
                # The peer's message could not be served here (a full disk, a failing
                # write): the session goes on, as after any refusal.
                logger.error("{}: could not handle the client's message: {}", self.name, describe(error))
                await self._refuse(describe(error))

    async def _close(self) -> None:
        if self.job_task is not None:
            logger.info("{}: client disconnected; stopping its job", self.name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._drop_upload()
        self.shared.on_closed()
        self.worker.job_slots.release(self)
        await asyncio.to_thread(remove_quietly, self.directory)

    async def _handle(self, event: legacy.Event) -> None:
        if isinstance(event, legacy.FileBytes):
            await self._bytes(event.data)
        elif isinstance(event, legacy.KeepAlive):
            return
        elif isinstance(event, legacy.FileMeta):
            await self._file_meta(event)
        elif isinstance(event, legacy.EndOfFile):
            await self._end_of_file()
        elif isinstance(event, legacy.PackageType):
            self.package_type = event.kind
        elif isinstance(event, legacy.OutputDir):
            await self._set_output_dir(event.path)
        elif isinstance(event, legacy.JobId):
            self.job_id = event.job_id
        elif isinstance(event, legacy.SharedInputPath):
            self.shared_input = None
            await self.shared.on_frame(SharedInputPath(event.relative_path))
        elif isinstance(event, legacy.SharedOutputPath):
            self.shared.output = None
            await self.shared.on_frame(SharedOutputPath(event.relative_path))
        elif isinstance(event, legacy.SharedStorageJob):
            await self._start_shared_job()
        elif isinstance(event, legacy.ZmqControl):
            logger.info("{}: GUI control messages (ZMQ_CTRL) are not supported; ignored", self.name)
        else:
            logger.warning("{}: client sent an unrecognized message ({}): {}", self.name, event.reason, event.excerpt)

    # --- telling the client -----------------------------------------------------------

    async def send(self, text: str) -> None:
        await self.channel.send_text(text)

    async def notice(self, text: str) -> None:
        """One line of the worker's own for the client (never raises)."""
        await self._notice(text)

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
            relative = paths.check_relative_text(text)
        except PathError as error:
            problem: str | None = str(error)
        else:
            problem = "a ':' cannot be sent back in FILE_META" if ":" in text else None
        if problem is not None:
            await self._refuse(f"OUTPUT_DIR {legacy.excerpt(text)}: {problem}; keeping {self.output_dir}")
            return
        self.output_dir = relative.as_posix()

    # --- uploads ----------------------------------------------------------------------

    def _job_running(self) -> bool:
        return self.job_task is not None

    async def _file_meta(self, meta: legacy.FileMeta) -> None:
        if self._job_running():
            raise UploadRefused(f"upload of {legacy.excerpt(meta.name)} refused: a job is running in this session")
        try:
            relative = paths.check_relative_text(meta.name)
        except PathError as error:
            raise UploadRefused(f"upload of {legacy.excerpt(meta.name)} refused: {error}") from None
        if len(relative.parts) != 1 or relative.as_posix() != meta.name or meta.name.startswith("."):
            raise UploadRefused(f"upload of {legacy.excerpt(meta.name)} refused: not a plain file name")
        busy = self._take_slot()
        if busy is not None:
            raise UploadRefused(f"upload of {legacy.excerpt(meta.name)} refused: {busy}")
        upload = self.uploads.announce(meta)
        self._drop_upload()
        self._stray_reported = False
        if meta.gui:
            logger.info("{}: GUI progress (ZMQ) is not supported; the job's output is sent as text", self.name)
        # Received from the announcement on, so that its space is reserved (and refused when it
        # does not fit) before a byte arrives, as a native FILE_META is. A shared-storage job's
        # announcement, which no bytes follow, gives the space back when the job starts.
        try:
            self._incoming = await self._receive_upload(upload)
        except TransferError as error:
            self.uploads.abort()
            self._drop_upload()
            self._stray_reported = True  # the bytes that follow are dropped without a notice each
            raise UploadRefused(f"upload of {legacy.excerpt(meta.name)} refused: {error}") from None

    async def _bytes(self, data: bytes) -> None:
        try:
            upload = self.uploads.feed(len(data))
        except UploadRefused as error:
            self._drop_upload()
            # One notice per run of refused bytes, not one per chunk.
            if not self._stray_reported:
                self._stray_reported = True
                raise error
            return
        try:
            if self._incoming is None:
                self._incoming = await self._receive_upload(upload)
            self._incoming.write(data)
        except TransferError as error:
            self.uploads.abort()
            self._drop_upload()
            self._stray_reported = True
            raise _cannot_store(upload, error) from None

    async def _receive_upload(self, upload: legacy.Upload) -> IncomingFile:
        """The receiving side of an upload, in a fresh directory that becomes its job's. A legacy
        client announces no hash, so nothing can vouch for a kept prefix: never resumed."""
        self._upload_dir = Path(tempfile.mkdtemp(prefix="upload-", dir=self.directory))
        return await IncomingFile.open(
            self._upload_dir,
            transfer_id=new_transfer_id(),
            name=upload.name,
            size=upload.size,
            transport=LEGACY_UPLOAD,
            max_size=self.worker.max_file_bytes,
            resume=False,
            unpack=package_unpacker(self.worker, self._upload_dir),
        )

    def _drop_upload(self) -> None:
        incoming, self._incoming = self._incoming, None
        upload_dir, self._upload_dir = self._upload_dir, None
        if incoming is not None:
            incoming.abandon(keep=False)
        if upload_dir is not None:
            remove_quietly(upload_dir)

    async def _end_of_file(self) -> None:
        try:
            upload = self.uploads.finish()
        except UploadRefused:
            self._drop_upload()
            raise
        try:
            if self._incoming is None:  # announced as empty: nothing was written yet
                self._incoming = await self._receive_upload(upload)
            received = await self._incoming.complete()
        except TransferError as error:
            self._drop_upload()
            raise _cannot_store(upload, error) from None
        job_dir = self._upload_dir
        assert job_dir is not None
        self._incoming = self._upload_dir = None
        job_id = self.job_id or f"job_{secrets.token_hex(4)}"
        settings = JobSettings(self.package_type, self.output_dir, job_id)
        self._start_job(Job(job_id, job_dir), received, settings)

    # --- jobs -------------------------------------------------------------------------

    def _take_slot(self) -> str | None:
        """One of the worker's job slots for the job this session is about to start (from its
        upload on); ``None`` when taken, else why not. sleap-rtc's clients connect for each job
        and leave without a word once they have the results, so a legacy session holds a slot
        only from a job's announcement to its end, not for the whole session."""
        busy = self.worker.job_slots.take(self)
        if busy is not None:
            logger.info("{}: refused, busy: {}", self.name, busy)
            return busy if self.worker.job_slots.draining else f"this worker is busy ({busy}); try again later"
        return None

    def _start_job(self, job: Job, received: ReceivedFile, settings: JobSettings) -> None:
        dialect = LegacyJobDialect(self, job, received, settings)
        self.job_task = asyncio.create_task(run_job(self.worker, job, received, dialect))
        self._tasks.add(self.job_task)
        self.job_task.add_done_callback(self._job_done)

    def end_job(self) -> None:
        """Called by the job right after its last message, before any await: the client may
        start its next job as soon as it reads that message."""
        self.job_task = None
        self.worker.job_slots.release(self)

    def _job_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self.job_task is task:
            self.job_task = None

    async def _on_shared_input(self, received: ReceivedFile) -> None:
        self.shared_input = received

    async def _start_shared_job(self) -> None:
        received, output = self.shared_input, self.shared.output
        if received is None or output is None:
            await self.send(f"PATH_ERROR::{MISSING_PATHS}")
            return
        job_id = self.job_id or f"job_{secrets.token_hex(4)}"
        if self._job_running() or (self.uploads.current is not None and self.uploads.current.started):
            await self.send(legacy.job_failed(job_id, "another job or upload is in progress in this session"))
            return
        busy = self._take_slot()
        if busy is not None:
            await self.send(legacy.job_failed(job_id, busy))
            return
        self.uploads.discard_unstarted()
        self._drop_upload()
        # Each pair of paths serves one job; the next job names its own.
        self.shared_input = None
        self.shared.output = None
        job = Job(job_id, Path(tempfile.mkdtemp(prefix="job-", dir=self.directory)))
        self._start_job(job, received, JobSettings(self.package_type, self.output_dir, job_id, output[0]))


class LegacyJobDialect:
    """What sleap-rtc's protocol says of one job (``shared/spec/legacy-protocol.md``).

    RTC-transfer job: ``TRAIN_JOB_START::{name}``, the output lines,
    ``TRAIN_JOB_END::{name}`` or ``TRAIN_JOB_ERROR::{name}::{code}``, ``TRAINING_JOBS_DONE``
    (the ``track`` type's own texts for tracking), then ``{package folder}/{OUTPUT_DIR}`` zipped,
    as the legacy worker did also after a failed command. Shared-storage job: the same texts,
    then the results on the shared storage and ``JOB_COMPLETE::{job id}::{output path}`` (or
    ``JOB_FAILED::{job id}::{why}``)."""

    def __init__(self, session: LegacySession, job: Job, received: ReceivedFile, settings: JobSettings) -> None:
        self.session = session
        self.job = job
        self.received = received
        self.settings = settings
        self.texts: JobTexts = JOB_TEXTS[settings.package_type]
        self.label = session.name
        self.stem = legacy.package_stem(Path(received.name).name)
        #: The job's name in the texts: the manifest's, else the package's stem.
        self.job_name = self.stem
        self._output: Path | None = None
        self._missing_script = False
        self._ended = False

    # --- the package --------------------------------------------------------------------

    def package_dir(self, extracted: Path) -> Path:
        # sleap-rtc's packages hold one folder named like the ZIP; a flat ZIP runs at its root.
        return extracted / self.stem if paths.is_dir_beneath(extracted, self.stem) else extracted

    def output_dir(self, package_dir: Path) -> Path:
        self._output = package_dir / self.settings.output_dir
        if self.settings.output_dir != PACKAGE_FOLDER:
            paths.makedirs_beneath(package_dir, self.settings.output_dir)
        return self._output

    def manifest(self, package_dir: Path) -> Manifest | None:
        """The package's rtcxfer.json if it has one, else its script run with bash (None: the
        worker's own executor decides what to run)."""
        if (package_dir / MANIFEST_NAME).is_file():
            manifest = Manifest.load(package_dir)
            if manifest.name != UNNAMED:
                self.job_name = manifest.name
            return manifest
        if self.session.worker.executor is not run_manifest_command:
            return None
        if self.texts.missing_script is not None and not _is_file_beneath(package_dir, self.texts.script):
            self._missing_script = True
            raise ManifestError(f"the package has no {self.texts.script}")
        # A missing train-script.sh is left to bash, whose message becomes the job's output.
        return Manifest(("bash", self.texts.script), name=self.stem)

    # --- what the client hears --------------------------------------------------------

    async def stage(self, state: str) -> None:
        texts_ = self.texts
        if state == JobState.RUNNING:
            if texts_.opening is not None:
                await self.session.send(texts_.opening)
            await self.session.send(texts_.start(self.job_name))
        elif state == JobState.SENDING_RESULTS:
            await self.session.send(texts_.end(self.job_name))
            await self.session.send(texts_.done)

    def line(self, text: str) -> str:
        return self.texts.line(text)

    def progress(self, done: int, total: int) -> None:
        return None  # a legacy client has no progress message

    def dropped(self, count: int) -> str:
        return self.texts.line(f"{NOTICE_PREFIX} {count} lines of output were dropped")

    async def send(self, message: str) -> None:
        await self.session.send(message)

    async def deliver_results(self, output_dir: Path, files: Sequence[tuple[str, int]]) -> tuple[str, str]:
        shared_output = self.settings.shared_output
        if shared_output is None:
            await self._send_zipped(output_dir)
            return self.job.job_id, LEGACY_UPLOAD
        root = self.session.worker.shared_storage_root
        assert root is not None, "a shared-storage job needs the shared root"
        # The worker's one way of writing results to shared storage: no link followed, fsync,
        # and what was written removed again on a full disk.
        await asyncio.to_thread(results.publish_beneath, root, output_dir, files, shared_output, self.label)
        return shared_output, self.session.shared.name

    async def _send_zipped(self, output_dir: Path) -> None:
        name = legacy.result_name(self.received.name)
        archive = self.job.directory / name
        size = await asyncio.to_thread(_zip_results, output_dir, archive)
        await self.session.send(legacy.result_meta(name, size, self.settings.output_dir))
        with open(archive, "rb") as handle:
            while block := await asyncio.to_thread(handle.read, 32 * legacy.RESULT_CHUNK_SIZE):
                for start in range(0, len(block), legacy.RESULT_CHUNK_SIZE):
                    await self.session.channel.send_bytes(block[start : start + legacy.RESULT_CHUNK_SIZE])
        await self.session.send(legacy.END_OF_FILE)
        self._end()
        logger.info("{}: sent {} ({} bytes)", self.label, name, size)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.session.end_job()

    async def report(self, outcome: JobOutcome) -> None:
        try:
            await self._report(outcome)
        except ConnectionClosedError:
            logger.info("{}: the client left before job {} was reported", self.label, self.job.job_id)
        except RtcxferError as error:
            logger.warning("{}: job {} not reported: {}", self.label, self.job.job_id, describe(error))
        finally:
            self._end()

    async def _report(self, outcome: JobOutcome) -> None:
        kind = outcome.outcome
        shared = self.settings.shared_output is not None
        job_id = self.settings.job_id
        if kind in (Outcome.CANCELLED, Outcome.WORKER_STOPPING):
            if kind is Outcome.WORKER_STOPPING:
                await self.session.notice(f"{texts.WORKER_SHUTTING_DOWN}; the job was stopped")
            return
        if kind is Outcome.COMPLETE:
            if shared:
                assert outcome.results_path is not None
                await self.session.send(legacy.job_complete(job_id, outcome.results_path))
            return
        failure = await self._tell_failure(outcome)
        if shared:
            await self.session.send(legacy.job_failed(job_id, failure))
        elif kind in (Outcome.FAILED, Outcome.NOT_RUNNABLE) and self._output is not None:
            await self._send_zipped(self._output)  # as the legacy worker, also after a failure

    async def _tell_failure(self, outcome: JobOutcome) -> str:
        """The job texts of a failed job; the reason a shared-storage job's JOB_FAILED gives."""
        kind, texts_ = outcome.outcome, self.texts
        if kind is Outcome.UNUSABLE_PACKAGE:
            await self.session.notice(f"package {legacy.excerpt(self.received.name)} refused: {outcome.detail}")
            await self.session.send(texts_.error(self.stem, NO_EXIT_CODE))
            await self.session.send(texts_.done)
            return f"{texts.CORRUPTED}: {self.received.name}"
        if kind is Outcome.NOT_RUNNABLE:
            if self._missing_script:
                await self.session.send(texts_.missing_script or texts_.error(self.stem, NO_EXIT_CODE))
            else:
                await self.session.notice(f"job not run: {outcome.detail}")
                await self.session.send(texts_.error(self.stem, NO_EXIT_CODE))
            await self.session.send(texts_.done)
            return f"job not run: {outcome.detail}"
        if kind in (Outcome.FAILED, Outcome.INTERNAL_ERROR):
            known = isinstance(outcome.error, JobFailedError) and outcome.exit_code is not None
            if not known:  # timed out, or could not start: the output does not say so
                await self.session.send(texts_.line(f"{NOTICE_PREFIX} {outcome.detail}"))
            await self.session.send(texts_.error(self.job_name, outcome.exit_code if known else NO_EXIT_CODE))
            await self.session.send(texts_.done)
            return f"Job failed: {outcome.detail}"
        if kind is Outcome.DISK_FULL:
            return texts.DISK_FULL
        return outcome.detail  # results not delivered


def _zip_results(output: Path, archive: Path) -> int:
    """Zip the regular files under ``output`` (names relative to it, as sleap-rtc's
    ``make_archive`` writes them) into ``archive``; its size. Blocking."""
    with zipfile.ZipFile(archive, "x", zipfile.ZIP_DEFLATED) as bundle:
        for relative, _ in results.result_files(output):
            with paths.open_beneath(output, relative, "rb") as source:
                with bundle.open(relative, "w", force_zip64=True) as sink:
                    while block := source.read(results.COPY_BLOCK):
                        sink.write(block)
    return archive.stat().st_size


def _is_file_beneath(root: Path, relative: str) -> bool:
    try:
        return stat.S_ISREG(paths.stat_beneath(root, relative).st_mode)
    except PathError:
        return False


def _cannot_store(upload: legacy.Upload, error: BaseException) -> UploadRefused:
    return UploadRefused(f"upload of {legacy.excerpt(upload.name)} dropped: cannot store it: {error}")
