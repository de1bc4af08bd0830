"""The ``s3`` transport: the file goes through an S3-compatible bucket both peers reach.

One session, as the wire sees it::

    either side                                   the other side
    S3_REACH::s3://bucket/prefix              ->  (same location? bucket reachable with my own
                                              <-   credentials?)  S3_REACH_RESULT::reachable
    one transfer (either direction, once agreed):
    (multipart upload to <prefix>/<transfer_id>/<name>)
    S3_OBJECT::id::size::sha256::key          ->  (key checked like a peer path, free space
                                                   reserved, a partial of the same id resumed,
                                                   ranged download with SHA-256, fsync, rename)
                                              <-  S3_ACK::id::sha256   or   S3_ERROR::id::code: text
    (sender deletes the object when ``cleanup`` is on)

Only the location, keys, sizes and digests cross the data channel; credentials and endpoint
URLs stay on each side. s3fs's synchronous API runs in worker threads (``asyncio.to_thread``),
never on the event loop.

The receiving side is rtcxfer's own (:class:`rtcxfer.files.receiving.IncomingFile`, as for
``rtc-chunked`` and ``direct``): a hidden partial beside the final name, free space reserved
against the other files being received, write-behind, size and SHA-256 checked, fsync, rename.
The transfer id is deterministic (:func:`rtcxfer.files.receiving.transfer_id_for_file`: the
sender's role, the name, the size and the file's identity), and so is the key derived from it:
when a download is interrupted (the session closed, the store failed mid-read) the partial is
kept, and the next transfer of the same unchanged file, in this session or a later one, finds
both the object (uploaded again under the same key) and the partial, and reads the object
only from the partial's length on. The whole file's SHA-256 is still checked.

Every failure is a typed :class:`rtcxfer.protocol.errors.TransferError` (see :mod:`rtcxfer_s3.errors`):
the sender raises it from :meth:`S3Transport.send_file`, so a client can fall back to another
transport, and the receiver answers ``S3_ERROR`` and keeps serving the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from rtcxfer.files.paths import check_relative_text
from rtcxfer.files.receiving import IncomingFile, NotEnoughSpaceError, checked_name, transfer_id_for_file
from rtcxfer.log import logger
from rtcxfer.protocol.errors import (
    ConnectionClosedError,
    IntegrityError,
    LocalProtocolError,
    RtcxferError,
    TransferError,
    describe,
)
from rtcxfer.protocol.frames import Frame
from rtcxfer.transport.base import Delivery, Transport
from rtcxfer_s3.errors import (
    S3ConfigError,
    S3IntegrityError,
    S3NoSpaceError,
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


@attrs.frozen
class DownloadReport:
    """What one download of this side did: where it started (more than 0 when it resumed a
    partial) and how many bytes it read from the object."""

    transfer_id: str
    name: str
    size: int
    offset: int
    fetched: int
    #: Whether the file was verified and placed under its name.
    completed: bool


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
        self._incoming: dict[str, IncomingFile] = {}
        self._sending: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: One entry per download this side made or began, for callers and tests.
        self.downloads: list[DownloadReport] = []

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
        # Deterministic: the same unchanged file sent again gets the same id and key, so the
        # receiver resumes the partial an interrupted download left.
        transfer_id, _ = await asyncio.to_thread(transfer_id_for_file, self.context.role, Path(path), relative)
        if transfer_id in self._sending:
            raise LocalProtocolError(f"{relative} is already being sent in this session")
        key = location.key_for(transfer_id, relative)
        uploaded = False
        report = self._progress_reporter(relative)
        self._sending.add(transfer_id)
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
            self._sending.discard(transfer_id)
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
            checked_name(name)
        except S3UnsafeKeyError as error:
            raise self._refusal(tid, error) from None
        except TransferError as error:
            raise self._refusal(tid, S3UnsafeKeyError(f"Unsafe key: {error}", peer_path=frame.key)) from None
        task = asyncio.ensure_future(self._receive(frame, name, location))
        self._downloads[tid] = task
        task.add_done_callback(lambda _: self._downloads.pop(tid, None))

    async def _receive(self, frame: S3Object, name: str, location: S3Location) -> None:
        """One download, through rtcxfer's receiving API; the outcome goes back as S3_ACK or
        S3_ERROR."""
        tid = frame.transfer_id
        try:
            incoming = await IncomingFile.open(
                self.context.incoming_dir,
                transfer_id=tid,
                name=name,
                size=frame.size,
                sha256=frame.sha256,
                transport=self.name,
                kept_partials_dir=self.context.kept_partials_dir,
                unpack=self.context.unpack,
            )
        except NotEnoughSpaceError:
            error = S3NoSpaceError(f"not enough free space on this side for {name!r} ({frame.size} bytes)")
            await self._fail(tid, frame, error)
            return
        except TransferError as error:
            await self._fail(tid, frame, S3TransportError(f"cannot receive {name!r} on this side: {error}"))
            return
        self._incoming[tid] = incoming
        try:
            await self._fetch(frame, incoming, location)
            await incoming.complete(
                acknowledge=lambda digest: self._send_quietly(S3Ack(transfer_id=tid, sha256=digest)),
                deliver=self.context.deliver,
            )
        except IntegrityError as error:
            # Bytes of this object that do not add up: the partial goes (a failed verify removed
            # it already). An object of the wrong size was not read at all: the partial stays.
            incoming.abandon(keep=incoming.received == incoming.offset)
            if not isinstance(error, S3IntegrityError):
                error = S3IntegrityError(
                    f"SHA-256 of object {frame.key!r} does not match the announced one "
                    + ("(changed or replaced before download)" if not incoming.offset else "(changed or replaced)")
                )
            await self._fail(tid, frame, error)
        except RtcxferError as error:  # kept for the next transfer of the same file to resume
            stopped = incoming.finished  # abandoned by on_closed: nobody to tell
            incoming.abandon(keep=True)
            if not stopped:
                if not isinstance(error, S3TransportError):
                    error = S3TransportError(f"cannot store {name!r} on this side: {error}")
                await self._fail(tid, frame, error)
        except asyncio.CancelledError:
            incoming.abandon(keep=True)
            raise
        except Exception as error:  # a bug here must not leave the sender waiting for ever
            logger.exception("s3: transfer {} failed unexpectedly", tid)
            incoming.abandon(keep=True)
            await self._send_quietly(S3Error(transfer_id=tid, reason=f"failed: {type(error).__name__}"))
        finally:
            self._incoming.pop(tid, None)
            self.downloads.append(
                DownloadReport(
                    tid, name, frame.size, incoming.offset, incoming.received - incoming.offset, incoming.published
                )
            )

    async def _fail(self, tid: str, frame: S3Object, error: RtcxferError) -> None:
        logger.warning("s3: transfer {} of {!r} failed: {}", tid, frame.key, describe(error))
        reason = error.wire_reason() if hasattr(error, "wire_reason") else f"refused: {error}"
        await self._send_quietly(S3Error(transfer_id=tid, reason=reason))

    async def _fetch(self, frame: S3Object, incoming: IncomingFile, location: S3Location) -> None:
        """Read the object from the partial's length on into ``incoming``, in a thread."""
        report = self._progress_reporter(incoming.name)
        await incoming.run_in_thread(self._download, frame, incoming, location.path_of(frame.key), report)

    def _download(
        self, frame: S3Object, incoming: IncomingFile, s3_path: str, report: Callable[[int, int], None] | None = None
    ) -> None:
        """Copy the object from ``incoming.received`` on into ``incoming``, checking its size
        (its SHA-256 is checked by :meth:`IncomingFile.verify`). Blocking: runs in the thread
        ``incoming`` is lent to; a write raises once the session closed."""
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
        if report is not None:
            report(incoming.received, size)
        if incoming.received == size:
            return  # a kept partial that holds it all: only the hash is left to check
        try:
            source = fs.open(s3_path, "rb", block_size=self.settings.part_size, size=size)
        except Exception as error:  # the store's failure, classified
            raise classify(error, what) from None
        with source:
            # A ranged read from there on: the bytes before are the partial's.
            source.seek(incoming.received)
            while True:
                try:
                    block = source.read(IO_BLOCK)
                except Exception as error:  # the store's failure, classified
                    raise classify(error, what) from None
                if not block:
                    break
                if incoming.received + len(block) > size:
                    raise S3IntegrityError(f"object {frame.key!r} grew while being downloaded")
                incoming.write(block)
                if report is not None:
                    report(incoming.received, size)
        if incoming.received != size:
            raise S3IntegrityError(f"object {frame.key!r} ended after {incoming.received} of {size} bytes")

    # --- the session's end ------------------------------------------------------------

    def on_closed(self) -> None:
        # A download thread's next write raises; its partial is kept for a resume.
        for incoming in list(self._incoming.values()):
            incoming.abandon(keep=True)
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
