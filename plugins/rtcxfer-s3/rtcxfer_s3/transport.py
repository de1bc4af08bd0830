"""The ``s3`` transport: the file goes through an S3-compatible bucket both peers reach.

One session, as the wire sees it::

    either side                                   the other side
    S3_REACH::s3://bucket/prefix              ->  (same location? bucket reachable with my own
                                              <-   credentials?)  S3_REACH_RESULT::reachable
    one transfer (either direction, once agreed):
    (multipart upload to <prefix>/<transfer_id>/<name>)
    S3_OBJECT::id::size::sha256::key          ->  (key checked like a peer path, streamed
                                                   download with SHA-256, fsync, rename)
                                              <-  S3_ACK::id::sha256   or   S3_ERROR::id::code: text
    (sender deletes the object when ``cleanup`` is on)

Only the location, keys, sizes and digests cross the data channel; credentials and endpoint
URLs stay on each side. s3fs's synchronous API runs in worker threads (``asyncio.to_thread``),
never on the event loop.

Every failure is a typed :class:`rtcxfer.protocol.errors.TransferError` (see :mod:`rtcxfer_s3.errors`):
the sender raises it from :meth:`S3Transport.send_file`, so a client can fall back to another
transport, and the receiver answers ``S3_ERROR`` and keeps serving the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from rtcxfer.files.paths import check_relative_text, makedirs_beneath, open_beneath
from rtcxfer.log import logger
from rtcxfer.protocol.errors import (
    ConnectionClosedError,
    PathError,
    RtcxferError,
    TransferError,
    describe,
)
from rtcxfer.protocol.frames import Frame
from rtcxfer.transport.base import Delivery, ReceivedFile, Transport
from rtcxfer_s3.errors import (
    S3ConfigError,
    S3IntegrityError,
    S3NotAgreedError,
    S3StorageError,
    S3TransportError,
    S3UnsafeKeyError,
    error_from_reason,
)
from rtcxfer_s3.frames import (
    DIFFERENT,
    INVALID,
    REACHABLE,
    S3_FRAME_TYPES,
    UNCONFIGURED,
    UNREACHABLE,
    S3Ack,
    S3Error,
    S3Object,
    S3Reach,
    S3ReachResult,
)
from rtcxfer_s3.settings import URL_ENV, S3Location, S3Settings, classify, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.net.link import Link
    from rtcxfer.transport.base import TransportContext

#: Bytes read from the local file, or from the object, per step.
IO_BLOCK = 1024 * 1024
PART_SUFFIX = ".s3part"

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class _Aborted(Exception):
    """The session closed while a download thread was still running."""


def _settings_or_none(context: TransportContext) -> S3Settings | None:
    try:
        return S3Settings.from_context(context)
    except S3ConfigError as error:
        logger.warning("s3: settings unusable, transport not offered: {}", error)
        return None


class S3Transport(Transport):
    name = "s3"
    rank = 50
    frame_types = S3_FRAME_TYPES
    description = "an S3-compatible bucket both peers reach (s3fs); only the object key crosses the channel"

    @classmethod
    def usable(cls, context: TransportContext) -> bool:
        """Offered only when this side has an ``s3://bucket/prefix`` configured."""
        settings = _settings_or_none(context)
        return settings is not None and settings.location is not None

    @classmethod
    def unusable_because(cls, context: TransportContext) -> str:
        try:
            S3Settings.from_context(context)
        except S3ConfigError as error:
            return f"its settings are unusable: {error}"
        return (
            f"no bucket is configured on this side: set {URL_ENV}=s3://BUCKET/PREFIX (and "
            f"RTCXFER_S3_ENDPOINT_URL for a server other than AWS) on both machines"
        )

    def __init__(self, link: Link, context: TransportContext) -> None:
        super().__init__(link, context)
        self.settings = _settings_or_none(context) or S3Settings()
        self._fs: Any = None
        self._fs_lock = threading.Lock()
        #: None until the peers compared locations; then whether s3 is usable in this session.
        self.agreed: bool | None = None
        self._negotiation: asyncio.Task[bool] | None = None
        self._downloads: dict[str, asyncio.Task[None]] = {}
        self._abort = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def location(self) -> S3Location | None:
        return self.settings.location

    def _filesystem(self) -> Any:
        # Built lazily, in a worker thread, because importing s3fs takes a while.
        with self._fs_lock:
            if self._fs is None:
                self._fs = self.settings.filesystem()
            return self._fs

    # --- agreeing on a bucket ---------------------------------------------------------

    def check_bucket(self) -> None:
        """Raise a typed error unless this side's bucket answers with its own credentials.

        Blocking: run it in a thread.
        """
        location = self.location
        if location is None:
            raise S3NotAgreedError("no s3 location is configured on this side")
        what = f"checking {location.url} at {redact_url(self.settings.endpoint_url) or 'the default AWS endpoint'}"
        try:
            self._filesystem().call_s3("head_bucket", Bucket=location.bucket)
        except Exception as error:  # any failure of the store means "not reachable"; classified below
            raise classify(error, what, bucket_level=True) from None

    async def negotiate(self) -> bool:
        """Ask the peer whether it reaches the same bucket/prefix; cache the answer.

        Either side may ask (the client usually does, once per session); concurrent callers
        share one exchange.
        """
        if self.agreed is not None:
            return self.agreed
        if self._negotiation is None:
            self._negotiation = asyncio.ensure_future(self._negotiate())
        return await asyncio.shield(self._negotiation)

    async def _negotiate(self) -> bool:
        location = self.location
        if location is None:
            self.agreed = False
            return False
        try:
            await asyncio.to_thread(self.check_bucket)
        except S3StorageError as error:
            logger.warning("s3: not offered in this session: {}", error)
            self.not_negotiated_because = f"{error}; check {URL_ENV} and the store's credentials on this machine"
            self.agreed = False
            return False
        await self.link.send(S3Reach(url=location.url))
        try:
            reply = await self.link.wait_for(
                lambda frame: isinstance(frame, S3ReachResult), timeout=self.settings.negotiate_timeout
            )
        except asyncio.TimeoutError:
            logger.warning("s3: the peer did not answer S3_REACH in {} s", self.settings.negotiate_timeout)
            self.not_negotiated_because = f"the worker did not answer S3_REACH in {self.settings.negotiate_timeout} s"
            self.agreed = False
            return False
        self.agreed = reply.verdict == REACHABLE
        if self.agreed:
            logger.info("s3: both peers reach {}", location.url)
        else:
            logger.info("s3: not used in this session, the peer answered {}", reply.verdict)
            self.not_negotiated_because = (
                f"the worker cannot use {location.url} (its verdict: {reply.verdict}); set {URL_ENV} to the same "
                "bucket on both machines, with credentials that reach it"
            )
        return self.agreed

    async def _answer_reach(self, frame: S3Reach) -> None:
        verdict = await self._verdict_for(frame.url)
        if verdict == REACHABLE:
            self.agreed = True
        elif self.agreed is None:
            self.agreed = False
        await self._send_quietly(S3ReachResult(verdict=verdict))

    async def _verdict_for(self, url: str) -> str:
        location = self.location
        if location is None:
            return UNCONFIGURED
        try:
            theirs = S3Location.parse(url)
        except S3ConfigError as error:
            logger.warning("s3: the peer sent an unusable location: {}", error)
            return INVALID
        if theirs != location:
            logger.info("s3: the peer uses {}, this side {}", theirs.url, location.url)
            return DIFFERENT
        try:
            await asyncio.to_thread(self.check_bucket)
        except S3StorageError as error:
            logger.warning("s3: {}", error)
            return UNREACHABLE
        return REACHABLE

    async def _require_agreement(self) -> S3Location:
        if not await self.negotiate():
            raise S3NotAgreedError("s3 is not available in this session: the peers share no reachable bucket/prefix")
        assert self.location is not None
        return self.location

    # --- sending ----------------------------------------------------------------------

    async def send_file(self, path: Path, name: str) -> Delivery:
        """Upload ``path``, announce it as ``name`` and return once the peer verified it.

        Raises :class:`~rtcxfer.protocol.errors.UnsafePathError` for a name that is not a plain
        relative path, :class:`S3NotAgreedError` when s3 is not usable in this session, an
        :class:`S3StorageError` when the upload fails, and the error the receiver reported
        (:class:`S3IntegrityError`, :class:`S3ObjectNotFoundError`...) otherwise.
        """
        relative = str(check_relative_text(name))
        location = await self._require_agreement()
        transfer_id = secrets.token_hex(16)
        key = location.key_for(transfer_id, relative)
        uploaded = False
        report = self._progress_reporter(relative)
        try:
            size, sha256 = await asyncio.to_thread(self._upload, Path(path), location.path_of(key), report)
            uploaded = True
            await self.link.send(S3Object(transfer_id=transfer_id, size=size, sha256=sha256, key=key))
            reply = await self.link.wait_for(
                lambda frame: isinstance(frame, (S3Ack, S3Error)) and frame.transfer_id == transfer_id,
                timeout=self.settings.ack_timeout,
            )
        except asyncio.TimeoutError:
            raise S3TransportError(f"no answer for s3 object {key!r} within {self.settings.ack_timeout} s") from None
        finally:
            if uploaded and self.settings.cleanup:
                await asyncio.to_thread(self._remove_quietly, location.path_of(key))
        if isinstance(reply, S3Error):
            raise error_from_reason(reply.reason, key)
        if reply.sha256 != sha256:
            raise S3IntegrityError(f"the peer acknowledged {key!r} with a different SHA-256")
        logger.info("s3: delivered {} ({} bytes) as {}", relative, size, key)
        return Delivery(name=relative, size=size, transport=self.name, sha256=sha256, reference=key)

    def _progress_reporter(self, name: str) -> Callable[[int, int], None] | None:
        """A ``report(done, total)`` for the upload thread that calls the application's
        ``progress(name, done, total)`` on the event loop, where its other callbacks run."""
        progress = self.settings.progress or self.context.progress_reporter(self.name)
        if progress is None:
            return None
        loop = asyncio.get_running_loop()

        def report(done: int, total: int) -> None:
            loop.call_soon_threadsafe(progress, name, done, total)

        return report

    def _upload(self, path: Path, s3_path: str, report: Callable[[int, int], None] | None = None) -> tuple[int, str]:
        """Stream ``path`` into a (multipart) upload, hashing the very bytes sent. Blocking.

        The object only comes into being when the upload completes: a failure aborts the
        multipart upload, so no partial object is ever left under the final key. A local
        read error propagates as the ``OSError`` it is: the caller's file, not the store.
        """
        total = path.stat().st_size
        digest = hashlib.sha256()
        done = 0
        what = f"uploading {s3_path}"
        with open(path, "rb") as source:
            try:
                target = self._filesystem().open(s3_path, "wb", block_size=self.settings.part_size)
            except Exception as error:  # the store's failure, classified
                raise classify(error, what, bucket_level=True) from None
            try:
                while block := source.read(IO_BLOCK):
                    digest.update(block)
                    try:
                        target.write(block)
                    except Exception as error:  # the store's failure, classified
                        raise classify(error, what, bucket_level=True) from None
                    done += len(block)
                    if report is not None:
                        report(done, total)
                try:
                    target.close()
                except Exception as error:  # the store's failure, classified
                    raise classify(error, what, bucket_level=True) from None
            except BaseException:
                self._discard(target, s3_path)
                raise
        if done != total:
            logger.warning("s3: {} changed size while being uploaded ({} -> {} bytes)", path, total, done)
        return done, digest.hexdigest()

    @staticmethod
    def _discard(target: Any, s3_path: str) -> None:
        try:
            target.discard()
        except Exception as error:  # the store may be gone; the upload expires on its own
            logger.warning("s3: could not abort the upload of {}: {}", s3_path, describe(classify(error, "abort")))
        # Marks the file closed so that its finaliser never completes a partial upload.
        target.closed = True

    def _remove_quietly(self, s3_path: str) -> None:
        try:
            self._filesystem().rm_file(s3_path)
        except Exception as error:  # clean-up is best effort: the transfer's outcome stands
            logger.warning("s3: could not delete {}: {}", s3_path, describe(classify(error, "clean-up")))

    # --- receiving --------------------------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, S3Reach):
            # The bucket check goes to the store: keep the link serving meanwhile.
            self._spawn(self._answer_reach(frame))
        elif isinstance(frame, S3Object):
            self._start_download(frame)
        elif isinstance(frame, (S3Ack, S3Error, S3ReachResult)):
            # Answers nobody waits for any more (the sender timed out or was cancelled).
            logger.info("s3: late {} ignored", frame.TYPE)
        else:  # pragma: no cover - the claim hook routes only the types above
            raise TransferError(f"s3 does not handle {frame.TYPE}")

    def _refusal(self, transfer_id: str, error: RtcxferError) -> RtcxferError:
        reason = error.wire_reason() if hasattr(error, "wire_reason") else f"refused: {error}"
        error.reply = S3Error(transfer_id=transfer_id, reason=reason)
        return error

    def _start_download(self, frame: S3Object) -> None:
        """Check the announcement; raising here makes the link send the S3_ERROR reply."""
        tid = frame.transfer_id
        location = self.location
        if not self.agreed or location is None:
            raise self._refusal(tid, S3NotAgreedError("s3 was not agreed in this session"))
        if tid in self._downloads:
            raise self._refusal(tid, S3TransportError(f"transfer {tid} is already in progress"))
        if frame.size > self.context.max_file_bytes:
            raise self._refusal(
                tid, S3TransportError(f"{frame.size} bytes is over the limit of {self.context.max_file_bytes}")
            )
        try:
            name = location.name_from_key(frame.key, tid)
        except S3UnsafeKeyError as error:
            raise self._refusal(tid, error) from None
        task = asyncio.ensure_future(self._receive(frame, name, location))
        self._downloads[tid] = task
        task.add_done_callback(lambda _: self._downloads.pop(tid, None))

    async def _receive(self, frame: S3Object, name: str, location: S3Location) -> None:
        tid = frame.transfer_id
        try:
            final_path = await asyncio.to_thread(self._download, frame, name, location, self._progress_reporter(name))
        except (RtcxferError, _Aborted) as error:
            if isinstance(error, _Aborted):
                return
            logger.warning("s3: transfer {} of {!r} failed: {}", tid, frame.key, describe(error))
            reason = error.wire_reason() if hasattr(error, "wire_reason") else f"refused: {error}"
            await self._send_quietly(S3Error(transfer_id=tid, reason=reason))
            return
        except Exception as error:  # a bug here must not leave the sender waiting for ever
            logger.exception("s3: transfer {} failed unexpectedly", tid)
            await self._send_quietly(S3Error(transfer_id=tid, reason=f"failed: {type(error).__name__}"))
            return
        await self._send_quietly(S3Ack(transfer_id=tid, sha256=frame.sha256))
        logger.info("s3: received {} ({} bytes)", name, frame.size)
        received = ReceivedFile(
            name=name, path=final_path, size=frame.size, transport=self.name, sha256=frame.sha256, transfer_id=tid
        )
        try:
            await self.context.deliver(received)
        except Exception:  # the application's callback: its failure is not the peer's business
            logger.exception("s3: on_file failed for {}", name)

    def _download(
        self, frame: S3Object, name: str, location: S3Location, report: Callable[[int, int], None] | None = None
    ) -> Path:
        """Stream the object into a partial file, verify, fsync, rename. Blocking.

        The partial (``.<basename>.<transfer_id>.s3part``) never has the final name, and is
        removed on any failure, so a name under ``incoming_dir`` always means a verified file.
        """
        root = Path(self.context.incoming_dir)
        root.mkdir(parents=True, exist_ok=True)
        relative = PurePosixPath(name)
        try:
            parent = makedirs_beneath(root, relative.parent.as_posix()) if relative.parent.parts else root.resolve()
            part_relative = (relative.parent / f".{relative.name}.{frame.transfer_id}{PART_SUFFIX}").as_posix()
            handle = open_beneath(root, part_relative, "xb")
        except PathError as error:
            raise S3UnsafeKeyError(f"Unsafe key: {error}", peer_path=frame.key) from None
        part_path = parent / PurePosixPath(part_relative).name
        s3_path = location.path_of(frame.key)
        try:
            with handle:
                self._copy_verified(frame, s3_path, handle, report)
                handle.flush()
                os.fsync(handle.fileno())
            self._place(parent, part_path.name, relative.name)
        except OSError as error:
            part_path.unlink(missing_ok=True)
            raise S3TransportError(f"cannot store {name!r} on this side ({error.strerror or error})") from None
        except BaseException:
            part_path.unlink(missing_ok=True)
            raise
        return parent / relative.name

    def _copy_verified(
        self, frame: S3Object, s3_path: str, handle: Any, report: Callable[[int, int], None] | None = None
    ) -> None:
        """Copy the object into ``handle``, checking size and SHA-256. Blocking."""
        what = f"downloading {s3_path}"
        fs = self._filesystem()
        bucket, _, key = s3_path.partition("/")
        try:
            # A plain HEAD: s3fs's info() would fall back to listing the "directory" when the
            # object is missing, turning "no such object" into a listing permission question.
            head = fs.call_s3("head_object", Bucket=bucket, Key=key)
        except Exception as error:  # the store's failure, classified
            raise classify(error, what) from None
        size = head.get("ContentLength")
        if size != frame.size:
            raise S3IntegrityError(
                f"object {frame.key!r} has {size} bytes, {frame.size} were announced "
                "(changed or replaced before download)"
            )
        try:
            source = fs.open(s3_path, "rb", block_size=self.settings.part_size, size=size)
        except Exception as error:  # the store's failure, classified
            raise classify(error, what) from None
        digest = hashlib.sha256()
        count = 0
        if report is not None:
            report(0, frame.size)
        with source:
            while True:
                try:
                    block = source.read(IO_BLOCK)
                except Exception as error:  # the store's failure, classified
                    raise classify(error, what) from None
                if not block:
                    break
                if self._abort.is_set():
                    raise _Aborted
                count += len(block)
                if count > frame.size:
                    raise S3IntegrityError(f"object {frame.key!r} grew while being downloaded")
                digest.update(block)
                handle.write(block)
                if report is not None:
                    report(count, frame.size)
        if count != frame.size:
            raise S3IntegrityError(f"object {frame.key!r} ended after {count} of {frame.size} bytes")
        if digest.hexdigest() != frame.sha256:
            raise S3IntegrityError(
                f"SHA-256 of object {frame.key!r} does not match the announced one "
                "(changed or replaced before download)"
            )

    @staticmethod
    def _place(parent: Path, part_name: str, final_name: str) -> None:
        fd = os.open(parent, _DIR_FLAGS)
        try:
            try:
                os.replace(part_name, final_name, src_dir_fd=fd, dst_dir_fd=fd)
            except IsADirectoryError:
                raise S3TransportError(f"a directory named {final_name!r} is in the way") from None
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- the session's end ------------------------------------------------------------

    def on_closed(self) -> None:
        # Download threads see the flag between blocks and remove their partial files.
        self._abort.set()
        for task in list(self._downloads.values()) + list(self._tasks):
            task.cancel()

    # --- helpers ----------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_quietly(self, frame: Frame) -> None:
        try:
            await self.link.send(frame)
        except ConnectionClosedError:
            logger.debug("s3: could not send {}, the link is closed", frame.TYPE)
