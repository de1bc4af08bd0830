"""The ``shared-fs`` transport: both peers mount the same storage, so only a relative path
crosses the wire (``SHARED_INPUT_PATH::jobs/123/data.zip``).

Worker side, as the worker specification says: resolve the path under the worker's own root,
validate it (text checks, symlinks resolved, inside the root), answer ``PATH_VALIDATED::input``
or ``PATH_ERROR::<the spec's text>: <the peer's path>``, and hand the file on to be read in
place. The worker's absolute paths are logged, never sent.

Client side: prove once per session that the worker sees the same storage (a probe file with
random content), then send paths instead of bytes.

Results are delivered in place: the client asks for an output directory under the shared
root (``SHARED_OUTPUT_PATH::rtcxfer-results/<job id>``), the worker writes the result files
there (fsync'ed, no link followed) and reports it in ``JOB_COMPLETE``, and the client copies
them out of its own mount and removes the worker's copy.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from rtcxfer.files import paths, results
from rtcxfer.files.filesystem import FilesystemAdapter
from rtcxfer.files.shared_storage import (
    check_probe,
    make_then_create,
    remove_empty_directories,
    write_probe,
)
from rtcxfer.log import logger
from rtcxfer.protocol import texts
from rtcxfer.protocol.errors import (
    PathError,
    PathNotFoundError,
    PathOutsideRootError,
    PathPermissionError,
    TransferError,
    UnsafePathError,
)
from rtcxfer.protocol.frames import (
    Frame,
    PathErrorFrame,
    PathValidated,
    SharedInputPath,
    SharedOutputPath,
    SharedProbe,
    SharedProbeResult,
    quote_for_log,
    quote_for_reply,
)
from rtcxfer.transport.base import Delivery, ReceivedFile, Transport
from rtcxfer.transport.hookspecs import hookimpl

#: Where the client stages a file that is not already under its shared root.
STAGING_DIR = PurePosixPath("rtcxfer-staging")
#: Where, under the shared root, the client asks the worker to write results.
RESULTS_DIR = PurePosixPath("rtcxfer-results")

#: How long the client waits for the worker to answer a path message.
REPLY_TIMEOUT = 60.0
#: Validation slower than this is logged as a warning (the spec's threshold).
SLOW_VALIDATION_SECONDS = 1.0


def path_error_text(error: PathError) -> str:
    """The spec's PATH_ERROR text for ``error``, with the peer's own path."""
    if isinstance(error, (UnsafePathError, PathOutsideRootError)):
        prefix = texts.OUTSIDE_ROOT
    elif isinstance(error, PathPermissionError):
        prefix = texts.PERMISSION_DENIED
    else:
        prefix = texts.NOT_FOUND
    return f"{prefix}: {quote_for_reply(error.peer_path)}"


def results_path(job_id: str) -> str:
    """The output directory the client asks for, relative to the shared root."""
    return (RESULTS_DIR / job_id).as_posix()


class SharedPathRefused(TransferError):
    """The worker answered a path message with PATH_ERROR; ``message`` is its text."""


class SharedFsTransport(Transport):
    name = "shared-fs"
    rank = 100
    frame_types = (SharedInputPath, SharedOutputPath, PathValidated, PathErrorFrame, SharedProbe, SharedProbeResult)
    description = "a relative path on storage both peers mount; no bytes cross the data channel"
    delivers_results_in_place = True

    @classmethod
    def usable(cls, context) -> bool:
        return context.shared_root is not None

    @classmethod
    def unusable_because(cls, context) -> str:
        return (
            "no shared storage root on this machine: give --shared-root DIR (or set SHARED_STORAGE_ROOT) "
            "to the directory where this machine mounts the storage the worker sees"
        )

    def __init__(self, link, context) -> None:
        super().__init__(link, context)
        root = context.shared_root
        self.root: Path | None = Path(root).resolve() if root is not None else None
        self.fs_adapter: FilesystemAdapter | None = context.shared_filesystem
        if self.fs_adapter is None and self.root is not None:
            self.fs_adapter = FilesystemAdapter(self.root)
        #: Client side: whether the worker proved it sees our storage in this session.
        self.verified = False
        #: Worker side: the last output directory the client asked for (relative, absolute).
        self.output: tuple[str, Path] | None = None
        self._reply: asyncio.Future[Frame] | None = None
        self._request_lock = asyncio.Lock()
        self._staged: list[Path] = []

    # --- worker side ------------------------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, (PathValidated, PathErrorFrame, SharedProbeResult)):
            self._take_reply(frame)
        elif isinstance(frame, SharedInputPath):
            await self._receive_input(frame.relative_path)
        elif isinstance(frame, SharedOutputPath):
            await self._receive_output(frame.relative_path)
        elif isinstance(frame, SharedProbe):
            await self.link.send(SharedProbeResult(await asyncio.to_thread(check_probe, self.root, frame)))

    async def _refuse(self, message: str) -> None:
        """``PATH_ERROR::<message>``, which ends the job that waited for this path."""
        self.context.input_refused(message)
        await self.link.send(PathErrorFrame(message))

    async def _receive_input(self, relative: str) -> None:
        if self.root is None:
            await self._refuse(f"{texts.NOT_SHARED}: {quote_for_reply(relative)}")
            return
        try:
            path, size = await asyncio.to_thread(self.validate_input, relative)
        except PathError as error:
            await self._refuse(self._refusal(error, relative))
            return
        await self.link.send(PathValidated("input"))
        root = self.root
        received = ReceivedFile(
            name=relative,
            path=path,
            size=size,
            transport=self.name,
            # Read in place through the safe opener: a symlink swapped in since validation
            # is refused at open time.
            opener=lambda: paths.open_peer_path(relative, root),
        )
        await self.context.deliver(received)

    def validate_input(self, relative: str) -> tuple[Path, int]:
        """Resolve and validate an input path under the root; returns (path, size).

        Raises the typed :class:`PathError` whose spec text :func:`path_error_text` gives.
        """
        assert self.root is not None and self.fs_adapter is not None
        started = time.perf_counter()
        path = paths.resolve_peer_path(relative, self.root)
        if not self.fs_adapter.exists(path):
            logger.error(
                "shared input {} does not exist (worker path {})", quote_for_log(relative), quote_for_log(str(path))
            )
            raise PathNotFoundError(texts.INPUT_MISSING, peer_path=relative)
        # Opening proves it is a readable regular file, with no symlink followed on the way.
        with paths.open_peer_path(relative, self.root) as handle:
            size = handle.seek(0, 2)
        elapsed = time.perf_counter() - started
        log = logger.warning if elapsed > SLOW_VALIDATION_SECONDS else logger.info
        log("validated shared input {} ({} bytes) in {:.4f} s", relative, size, elapsed)
        return path, size

    def _refusal(self, error: PathError, relative: str) -> str:
        if isinstance(error, (UnsafePathError, PathOutsideRootError)):
            logger.warning("security violation: peer path {!r} refused ({})", relative, error)
        elif isinstance(error, PathPermissionError):
            logger.error(
                "permission denied on shared path {} ({})",
                quote_for_log(relative),
                quote_for_log(str(self._absolute(relative))),
            )
        else:
            logger.error(
                "shared path {} not usable: {} ({})",
                quote_for_log(relative),
                error,
                quote_for_log(str(self._absolute(relative))),
            )
        if str(error) == texts.INPUT_MISSING:
            return f"{texts.INPUT_MISSING}: {quote_for_reply(relative)}"
        return path_error_text(error)

    def _absolute(self, relative: str) -> Path | str:
        """The worker-side absolute path, for local logs only (never sent to the peer)."""
        return self.root / relative if self.root is not None else relative

    async def _receive_output(self, relative: str) -> None:
        if self.root is None:
            await self._refuse(f"{texts.NOT_SHARED}: {quote_for_reply(relative)}")
            return
        try:
            path = await asyncio.to_thread(self._make_output_dir, relative)
        except PathError as error:
            await self._refuse(self._refusal(error, relative))
            return
        self.output = (relative, path)
        await self.link.send(PathValidated("output"))

    def _make_output_dir(self, relative: str) -> Path:
        assert self.root is not None
        started = time.perf_counter()
        # Created component by component with no symlink followed; an existing file or a
        # symlink on the way is refused.
        path = paths.makedirs_beneath(self.root, relative)
        paths.validate_path_in_root(path, self.root)
        logger.info("shared output directory {} ready in {:.4f} s", relative, time.perf_counter() - started)
        return path

    # --- client side ------------------------------------------------------------------

    def _take_reply(self, frame: Frame) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(frame)
        elif self.context.on_notice is not None:
            self.context.on_notice(frame)
        else:
            logger.warning("unexpected {} from the worker", quote_for_log(frame.encode()))

    async def _request(self, frame: Frame, timeout: float = REPLY_TIMEOUT) -> Frame:
        """Send ``frame`` and wait for the worker's answer (the spec's replies carry no id,
        so requests go one at a time)."""
        async with self._request_lock:
            self._reply = asyncio.get_running_loop().create_future()
            try:
                await self.link.send(frame)
                return await asyncio.wait_for(self._reply, timeout)
            finally:
                self._reply = None

    async def negotiate(self) -> bool:
        """Prove that the worker reads what we write under our root."""
        if self.root is None:
            return False
        probe = await asyncio.to_thread(write_probe, self.root)
        try:
            reply = await self._request(SharedProbe(probe.sha256, probe.relative_path))
        finally:
            await asyncio.to_thread(probe.remove)
        self.verified = isinstance(reply, SharedProbeResult) and reply.verdict == "verified"
        verdict = getattr(reply, "verdict", reply)
        logger.info("shared storage verification: {}", verdict)
        if not self.verified:
            self.not_negotiated_because = (
                f"the worker could not read the probe written under {self.root} (its verdict: {verdict}): "
                "the two machines do not see the same storage there; give --shared-root the directory "
                "where this machine mounts the worker's shared storage (check both with `rtcxfer doctor`)"
            )
        return self.verified

    def relative_to_root(self, path: Path) -> str | None:
        """``path`` relative to our shared root, or ``None`` if it lies outside."""
        if self.root is None:
            return None
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    async def send_file(self, path: Path, name: str) -> Delivery:
        """Tell the worker where ``path`` lies on the shared storage (staging a copy under
        the root first if it lies elsewhere) and wait for PATH_VALIDATED::input."""
        if self.root is None:
            raise TransferError("shared-fs has no shared root on this side")
        relative = self.relative_to_root(path)
        if relative is None:
            relative = await asyncio.to_thread(self._stage, path, name)
        size = path.stat().st_size
        reply = await self._request(SharedInputPath(relative))
        if not (isinstance(reply, PathValidated) and reply.which == "input"):
            raise SharedPathRefused(getattr(reply, "message", f"unexpected reply {reply!r}"))
        return Delivery(name=name, size=size, transport=self.name, reference=relative)

    async def request_output(self, relative: str) -> None:
        """Ask the worker to create ``relative`` under its root for the results."""
        reply = await self._request(SharedOutputPath(relative))
        if not (isinstance(reply, PathValidated) and reply.which == "output"):
            raise SharedPathRefused(getattr(reply, "message", f"unexpected reply {reply!r}"))

    # --- results, delivered in place ----------------------------------------------------

    async def request_results(self, job_id: str) -> None:
        await self.request_output(results_path(job_id))

    @property
    def results_requested(self) -> bool:
        return self.output is not None

    async def send_results(self, job_id: str, output_dir: Path, files: Sequence[tuple[str, int]]) -> str:
        """Write the results under the output directory the client asked for (without a
        ``SHARED_OUTPUT_PATH``, under ``rtcxfer-results/<job id>``); its relative path."""
        if self.root is None:
            raise TransferError("shared-fs has no shared root on this side")
        if self.output is None:
            relative = results_path(job_id)
            await asyncio.to_thread(self._make_output_dir, relative)
        else:
            relative, _ = self.output
        label = f"shared-fs ({self.context.role})"
        await asyncio.to_thread(results.publish_beneath, self.root, output_dir, files, relative, label)
        return relative

    async def collect_results(self, job_id: str, reference: str, destination: Path) -> None:
        if self.root is None:
            raise TransferError("shared-fs has no shared root on this side")
        await asyncio.to_thread(results.copy_out_of, self.root, reference, destination)

    async def discard_results(self, job_id: str) -> None:
        # The worker's copy on shared storage is ours to remove once collected (or useless, if
        # the job failed); left there, every job would leave a directory.
        if self.root is None:
            return
        copy = self.root / results_path(job_id)
        await asyncio.to_thread(shutil.rmtree, copy, True)
        await asyncio.to_thread(remove_empty_directories, copy.parent, self.root)

    def unusable_input_reply(self, received: ReceivedFile) -> Frame | None:
        # The specification's reply, which also asks the client to retry with the bytes.
        return PathErrorFrame(f"{texts.CORRUPTED}: {received.name}")

    def unreadable_input_reply(self, received: ReceivedFile, error: BaseException) -> Frame | None:
        # Validated, then gone (or swapped for a link, or unreadable) when the job read it: the
        # specification's words for a file it cannot find or may not read.
        return PathErrorFrame(path_error_text(error)) if isinstance(error, PathError) else None

    def _stage(self, path: Path, name: str) -> str:
        assert self.root is not None
        relative = STAGING_DIR / secrets.token_hex(8) / PurePosixPath(name).name
        target = self.root / relative
        started = time.perf_counter()
        make_then_create(target.parent, lambda: shutil.copyfile(path, target))
        logger.info("staged {} on shared storage as {} in {:.2f} s", path, relative, time.perf_counter() - started)
        self._staged.append(target.parent)
        return relative.as_posix()

    def remove_staged(self) -> None:
        """Remove the copies this session staged on the shared storage."""
        for directory in self._staged:
            shutil.rmtree(directory, ignore_errors=True)
            if self.root is not None:
                remove_empty_directories(directory.parent, self.root)
        self._staged.clear()

    def on_closed(self) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self.remove_staged()


@hookimpl
def rtcxfer_register_transports(register) -> None:
    register(SharedFsTransport)


@hookimpl
def rtcxfer_claim_frame(frame: Frame) -> str | None:
    return SharedFsTransport.name if SharedFsTransport.claims(frame) else None
