"""The ``rtc-chunked`` transport: the file's bytes in chunks over the data channel itself,
announced by ``FILE_META`` and confirmed by ``FILE_ACK`` after a SHA-256 check.

One transfer, as the wire sees it (either direction)::

    sender                                      receiver
    FILE_META::id::name::size::sha256::chunk ->
                                             <- FILE_ACCEPT::id::offset[::prefix sha256]  (resume)
    binary chunks from offset on              ->
    FILE_END::id                              ->
                                             <- FILE_ACK::id::sha256      (size, hash, fsync, rename)
    either side, at any point:  FILE_ERROR::id::reason  (the transfer is abandoned)

Sender (:meth:`RtcChunkedTransport.send_file`): hashes the file off the event loop, derives a
deterministic transfer id from its own role, the name, the size and the SHA-256 (so a later
session sending the same file gets the same id and resumes), streams chunks from the offset the
receiver asks for, respecting the data channel's backpressure, and returns once ``FILE_ACK``
arrives with the right hash.

Receiver: validates ``FILE_META`` (chunk size, no second transfer with the same id) and
receives the file through :class:`~rtcxfer.files.receiving.IncomingFile`, the receiving side
every byte-moving transport shares: the name is checked, the chunks go to
``.<basename>.<transfer_id>.part`` beside the final name under ``context.incoming_dir``, hashed
as they are written; the file is never held in memory. ``FILE_END`` completes it (size and
SHA-256 checked, fsync, rename onto the final name) and is answered by ``FILE_ACK``; any
mismatch gets ``FILE_ERROR`` and the partial is removed.

Resume: when a session ends mid-transfer the partial stays (it never has the final name, so it
is never mistaken for a complete file). A ``FILE_META`` with the same id finds it, hashes the
prefix already on disk (off the loop) and accepts at its length, with that hash; the final
check therefore covers the whole file, never the size alone. Ids are predictable, so the
sender continues only after a prefix whose hash is its own file's, and otherwise sends from
byte 0, which the receiver takes as a start over; a resume that still fails the final check
(a receiver that proves no prefix) is sent once more from byte 0. Hashing the prefix at accept time rather than the
whole file at the end costs the same (sha256 runs at about 800 MB/s here) but keeps the
``FILE_END`` -> ``FILE_ACK`` step short for the usual, non-resumed transfer.

Policies:

* A completed file of the same name is replaced: the newest verified copy wins (an existing
  directory of that name is not, and the transfer fails).
* Names shaped like a partial file (``.x.<32 hex>.part``) are refused.
* Writes and hash updates of each chunk run on the event loop: a 256 KiB chunk costs tens of
  microseconds (profiled: about 0.12 s of CPU per 64 MiB, against about 0.6 s for the whole
  transfer with loopback-tuned SCTP and 6 s with stock SCTP); prefix hashing and fsync, which
  scale with the file, run in a thread.
* ``on_file`` is awaited inline (after ``FILE_ACK`` is sent), so it should start a task for
  long work; an exception from it is logged, never sent to the peer.

Options (``context.options["rtc-chunked"]``):

* ``progress``: ``callable(name, bytes_done, total)``, called as chunks leave and arrive
  (default: ``TransportContext.progress``).
* ``chunk_size``: payload bytes per chunk (default ``262144 - 27``, so header and payload fit
  in 256 KiB, the message size aiortc and Chrome advertise); clamped to the channel's
  ``max_message_size`` (65536 where the peer's SDP gives none) and to 256 KiB. A quarter as
  many messages as 64 KiB chunks: 8-16 % less CPU per byte, both sides, on the two-host bed.
  The sender cuts each chunk to fill whole SCTP packets (:func:`packet_filling_chunk_size`:
  259957 bytes between two rtcxfer peers' 65024-byte packets), at most this size.
* ``accept_timeout`` / ``ack_timeout``: seconds the sender waits for ``FILE_ACCEPT`` and for
  ``FILE_ACK`` (default 600 each: a resumed multi-GiB partial is hashed before the accept).
* ``max_concurrent``: incoming transfers one session may have open at once (default 16).
* ``idle_timeout``: seconds an incoming transfer may go without a chunk before it is abandoned
  (``FILE_ERROR``, partial removed; default 300), so an announced file cannot hold its disk
  space forever.

Disk space: a ``FILE_META`` is refused unless the file's missing bytes fit in the free space of
its filesystem *minus what transfers already open in this process still expect* there, so many
announcements at once cannot each count the same free space.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from rtcxfer.files.paths import check_relative_text
from rtcxfer.files.receiving import (
    REASON_HASH,
    REASON_INCOMPLETE,
    REASON_SENDER_CANCELLED,
    IncomingFile,
    SendReport,
    hash_file,
    hash_prefix,
    transfer_id_for,
)
from rtcxfer.log import logger
from rtcxfer.protocol.errors import (
    ConnectionClosedError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    TransferError,
    UnsafePathError,
    describe,
)
from rtcxfer.protocol.frames import (
    CHUNK_HEADER_SIZE,
    FileAccept,
    FileAck,
    FileEnd,
    FileError,
    FileMeta,
    Frame,
    quote_for_log,
    quote_for_reply,
)
from rtcxfer.transport.base import Delivery, Transport
from rtcxfer.transport.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.net.link import Link
    from rtcxfer.protocol.engine import ChunkReceived
    from rtcxfer.transport.base import TransportContext

#: Header plus payload of a default chunk is exactly 256 KiB.
DEFAULT_CHUNK_SIZE = 262144 - CHUNK_HEADER_SIZE
#: Largest chunk a receiver accepts (aiortc peers advertise 256 KiB messages).
MAX_CHUNK_SIZE = 256 * 1024
#: How much of the file the sender reads (off the loop) at a time: whole chunks, about 1 MiB.
READ_BYTES = 1024 * 1024
DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_CONCURRENT = 16
DEFAULT_IDLE_TIMEOUT = 300.0


def packet_filling_chunk_size(chunk_size: int, user_data_per_packet: int | None) -> int:
    """The payload, at most ``chunk_size``, whose message (header and payload) fills whole SCTP
    packets of ``user_data_per_packet`` bytes of user data; ``chunk_size`` itself when no packet
    size is known or a message is smaller than one packet.

    aiortc sends every message in its own packets, the last one carrying what is left: a 256 KiB
    message in packets of 64996 bytes of user data (two rtcxfer peers' 65024-byte packets) is
    four full packets and one of 2160 bytes, a fifth of all packets (each a datagram, a DTLS
    record, a wake-up and half a SACK on both sides) carrying 1 % of the bytes. Four packets'
    worth of message instead: 0.8 % smaller chunks, a fifth fewer packets.
    """
    if not user_data_per_packet:
        return chunk_size
    packets = (chunk_size + CHUNK_HEADER_SIZE) // user_data_per_packet
    if packets < 1:
        return chunk_size
    return max(1, packets * user_data_per_packet - CHUNK_HEADER_SIZE)


def _file_error(transfer_id: str, reason: str, error_class: type[TransferError] = TransferError) -> TransferError:
    return error_class(reason, reply=FileError(transfer_id=transfer_id, reason=reason))


@attrs.define(eq=False)
class _Incoming:
    """A file this side is receiving: its announcement and the file being written."""

    meta: FileMeta
    file: IncomingFile

    @property
    def received(self) -> int:
        return self.file.received


@attrs.define(eq=False)
class _Outgoing:
    """A file this side is sending."""

    transfer_id: str
    name: str
    size: int
    sha256: str
    accepted: asyncio.Future[FileAccept]
    acked: asyncio.Future[str]
    #: Payload bytes sent so far in this session.
    sent: int = 0
    #: The peer already closed the transfer (FILE_ACK or FILE_ERROR): nothing to tell it.
    closed_by_peer: bool = False

    def fail(self, error: BaseException) -> None:
        for future in (self.accepted, self.acked):
            if not future.done():
                future.set_exception(error)

    def settle(self) -> None:
        # Mark stored exceptions as retrieved so asyncio does not report them at shutdown.
        for future in (self.accepted, self.acked):
            if future.done() and not future.cancelled():
                future.exception()
            else:
                future.cancel()


# --- the transport ------------------------------------------------------------------------


class RtcChunkedTransport(Transport):
    name = "rtc-chunked"
    rank = 10
    frame_types = (FileMeta, FileAccept, FileEnd, FileAck, FileError)
    description = "chunks over the WebRTC data channel, verified by SHA-256, resumable"
    fallback = True

    def __init__(self, link: Link, context: TransportContext) -> None:
        super().__init__(link, context)
        self._incoming: dict[str, _Incoming] = {}
        self._outgoing: dict[str, _Outgoing] = {}
        self._idle_checks: set[asyncio.Task] = set()
        #: One entry per completed or attempted send, for callers and tests.
        self.reports: list[SendReport] = []

    @property
    def _options(self) -> dict[str, Any]:
        return self.context.options.get(self.name, {}) or {}

    # --- dispatch ---------------------------------------------------------------------

    async def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, FileMeta):
            await self._on_meta(frame)
        elif isinstance(frame, FileAccept):
            self._on_accept(frame)
        elif isinstance(frame, FileEnd):
            await self._on_end(frame)
        elif isinstance(frame, FileAck):
            self._on_ack(frame)
        elif isinstance(frame, FileError):
            self._on_error(frame)
        else:  # pragma: no cover - the claim hook only routes the types above
            raise TransferError(f"rtc-chunked does not handle {frame.TYPE}")

    def on_closed(self) -> None:
        for outgoing in list(self._outgoing.values()):
            outgoing.fail(ConnectionClosedError(f"connection closed during the transfer of {outgoing.name}"))
        for incoming in list(self._incoming.values()):
            logger.info(
                "rtc-chunked: session closed with {} of {} bytes of {} received; partial kept for resume",
                incoming.received,
                incoming.meta.size,
                incoming.meta.name,
            )
            self._drop(incoming, keep=True)

    # --- receiving --------------------------------------------------------------------

    def _refuse_meta(self, meta: FileMeta) -> None:
        """Raise the FILE_ERROR for a FILE_META that must not even touch the filesystem."""
        tid = meta.transfer_id
        if tid in self._incoming:
            # Both sides must agree the id is closed after a FILE_ERROR: drop the first one too.
            self._drop(self._incoming[tid], keep=False)
            raise _file_error(tid, "transfer already open")
        if tid in self._outgoing:
            raise _file_error(tid, "transfer id in use by this side")
        max_concurrent = int(self._options.get("max_concurrent", DEFAULT_MAX_CONCURRENT))
        if len(self._incoming) >= max_concurrent:
            raise _file_error(tid, f"too many concurrent transfers (at most {max_concurrent})")
        if not 1 <= meta.chunk_size <= MAX_CHUNK_SIZE:
            raise _file_error(tid, f"chunk size {meta.chunk_size} is not between 1 and {MAX_CHUNK_SIZE}")

    async def _on_meta(self, meta: FileMeta) -> None:
        tid = meta.transfer_id
        self._refuse_meta(meta)
        try:
            file = await IncomingFile.open(
                self.context.incoming_dir,
                transfer_id=tid,
                name=meta.name,
                size=meta.size,
                sha256=meta.sha256,
                transport=self.name,
                kept_partials_dir=self.context.kept_partials_dir,
                max_size=self.context.max_file_bytes,
                unpack=self.context.unpack,
            )
        except TransferError as error:
            raise _file_error(tid, str(error)) from None
        try:
            self.link.engine.open_transfer(tid, self.name)
        except TransferError:
            file.abandon(keep=True)
            raise
        incoming = self._incoming[tid] = _Incoming(meta, file)
        self._watch_idle(incoming)
        logger.info(
            "rtc-chunked: receiving {} ({} bytes) from offset {}",
            quote_for_reply(meta.name),
            meta.size,
            file.offset,
        )
        progress = self.context.progress_reporter(self.name)
        if progress is not None:
            progress(meta.name, file.offset, meta.size)  # the start, so a resumed file is not counted as sent now
        try:
            await self.link.send(FileAccept(transfer_id=tid, offset=file.offset, prefix_sha256=file.prefix_sha256))
        except ConnectionClosedError:
            # Link.run only survives RemoteProtocolError from a handler; on_closed may have run.
            logger.info("rtc-chunked: connection closed before FILE_ACCEPT for {}", quote_for_reply(meta.name))
            self._drop(incoming, keep=True)

    async def on_chunk(self, event: ChunkReceived) -> None:
        tid = event.transfer_id
        incoming = self._incoming.get(tid)
        if incoming is None:
            # Routed here because this side is *sending* that id: the peer has it backwards.
            raise TransferError(f"chunk for transfer {tid}, which this side is sending, not receiving")
        meta, file = incoming.meta, incoming.file
        payload = event.payload
        length = len(payload)
        if event.offset == 0 and file.received == file.offset > 0:
            # The sender found that the bytes kept from an earlier session are not its file's.
            try:
                file.start_over()
            except TransferError as error:
                self._drop(incoming, keep=False)
                raise _file_error(tid, str(error)) from None
        if event.offset != file.received:
            self._drop(incoming, keep=False)
            raise _file_error(tid, f"chunk at offset {event.offset}, expected {file.received}")
        if length > meta.chunk_size:
            self._drop(incoming, keep=False)
            raise _file_error(tid, f"chunk of {length} bytes exceeds the announced chunk size {meta.chunk_size}")
        if file.received + length > meta.size:
            self._drop(incoming, keep=False)
            raise _file_error(tid, f"chunk beyond the announced size of {meta.size} bytes")
        try:
            file.write(payload)
        except TransferError as error:
            # Taken over by another session (its partial is not removed), or the disk refused.
            self._drop(incoming, keep=False)
            raise _file_error(tid, str(error)) from None
        progress = self.context.progress_reporter(self.name)
        if progress is not None:
            progress(meta.name, file.received, meta.size)

    def _watch_idle(self, incoming: _Incoming) -> None:
        timeout = float(self._options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT))
        loop = asyncio.get_running_loop()
        file = incoming.file

        def check() -> None:
            if self._incoming.get(incoming.meta.transfer_id) is not incoming or file.busy:
                return
            idle = file.idle_seconds
            if idle < timeout:
                loop.call_later(timeout - idle, check)
                return
            logger.warning(
                "rtc-chunked: abandoning {}: no data for {:.0f} s ({} of {} bytes)",
                quote_for_log(incoming.meta.name),
                idle,
                file.received,
                incoming.meta.size,
            )
            self._drop(incoming, keep=False)
            task = asyncio.ensure_future(self._tell_idle(incoming.meta.transfer_id, timeout))
            self._idle_checks.add(task)
            task.add_done_callback(self._idle_checks.discard)

        loop.call_later(timeout, check)

    async def _tell_idle(self, tid: str, timeout: float) -> None:
        try:
            await self.link.send(FileError(transfer_id=tid, reason=f"no data for {timeout:g} s; transfer abandoned"))
        except (ConnectionClosedError, LocalProtocolError) as error:
            logger.debug("rtc-chunked: idle notice for {} not sent: {}", tid, describe(error))

    async def _on_end(self, end: FileEnd) -> None:
        tid = end.transfer_id
        incoming = self._incoming.get(tid)
        if incoming is None:
            if tid in self._outgoing:
                raise TransferError(f"FILE_END for transfer {tid}, which this side is sending")
            raise _file_error(tid, "unknown transfer")

        async def acknowledge(digest: str) -> None:
            # Closed before the FILE_ACK leaves: the sender may announce the same id right away.
            self._forget(incoming)
            await self.link.send(FileAck(transfer_id=tid, sha256=digest))

        try:
            await incoming.file.complete(acknowledge=acknowledge, deliver=self.context.deliver)
        except TransferError as error:  # the partial is gone already (or is another session's)
            self._drop(incoming, keep=False)
            error_class = IntegrityError if isinstance(error, IntegrityError) else TransferError
            raise _file_error(tid, str(error), error_class) from None

    def _forget(self, incoming: _Incoming) -> None:
        tid = incoming.meta.transfer_id
        if self._incoming.get(tid) is incoming:
            del self._incoming[tid]
            self.link.engine.close_transfer(tid)

    def _drop(self, incoming: _Incoming, *, keep: bool) -> None:
        """Forget an incoming transfer and abandon its file, keeping its partial or not."""
        self._forget(incoming)
        incoming.file.abandon(keep=keep)

    # --- sending ----------------------------------------------------------------------

    def _on_accept(self, accept: FileAccept) -> None:
        outgoing = self._outgoing.get(accept.transfer_id)
        if outgoing is None or outgoing.accepted.done():
            raise TransferError(f"unexpected FILE_ACCEPT for transfer {accept.transfer_id}")
        outgoing.accepted.set_result(accept)

    def _on_ack(self, ack: FileAck) -> None:
        outgoing = self._outgoing.get(ack.transfer_id)
        if outgoing is None or outgoing.acked.done():
            raise TransferError(f"unexpected FILE_ACK for transfer {ack.transfer_id}")
        outgoing.closed_by_peer = True
        outgoing.acked.set_result(ack.sha256)

    def _on_error(self, report: FileError) -> None:
        tid = report.transfer_id
        outgoing = self._outgoing.get(tid)
        if outgoing is not None:
            outgoing.closed_by_peer = True
            integrity = report.reason.startswith((REASON_HASH, REASON_INCOMPLETE))
            error_class = IntegrityError if integrity else TransferError
            outgoing.fail(error_class(f"the peer refused {outgoing.name}: {quote_for_log(report.reason)}"))
            return
        incoming = self._incoming.get(tid)
        if incoming is not None:
            logger.info(
                "rtc-chunked: the sender abandoned {}: {}",
                quote_for_log(incoming.meta.name),
                quote_for_log(report.reason),
            )
            # A sender stopped by its user comes back with the same file: keep what arrived.
            self._drop(incoming, keep=report.reason == REASON_SENDER_CANCELLED)
            return
        # Never answer an error report with another one.
        logger.debug("rtc-chunked: FILE_ERROR for unknown transfer {}: {}", tid, quote_for_log(report.reason))

    def _chunk_size(self) -> int:
        wanted = int(self._options.get("chunk_size", DEFAULT_CHUNK_SIZE))
        limit = getattr(self.link.channel, "max_message_size", None)
        size = min(wanted, MAX_CHUNK_SIZE)
        if limit is not None:
            size = min(size, limit - CHUNK_HEADER_SIZE)
        if size < 1:
            raise LocalProtocolError(f"chunk size {wanted} leaves no room for payload")
        return size

    async def send_file(self, path: Path, name: str) -> Delivery:
        """Send the local file ``path`` as ``name`` and return once the peer confirmed it.

        Raises :class:`IntegrityError` if the peer's size or hash check failed,
        :class:`TransferError` if the peer refused or abandoned the transfer (or did not
        answer in time), :class:`ConnectionClosedError` if the connection ended first (a new
        session sending the same file resumes), :class:`LocalProtocolError` for a name that
        cannot be sent or the same file already being sent in this session.
        """
        try:
            check_relative_text(name)
        except UnsafePathError as error:
            raise LocalProtocolError(f"cannot send a file as {name!r}: {error}") from None
        size, sha256 = await asyncio.to_thread(hash_file, path)
        try:
            return await self._send_once(path, name, size, sha256, from_start=False)
        except IntegrityError as error:
            if not error.after_resume:
                raise
            # What the receiver had kept was not this file's (a peer that does not prove its
            # prefix, and whose bytes were planted or damaged): once more, from byte 0.
            logger.warning("rtc-chunked: {} failed its check after a resume ({}); sending it whole", name, error)
            return await self._send_once(path, name, size, sha256, from_start=True)

    async def _send_once(self, path: Path, name: str, size: int, sha256: str, *, from_start: bool) -> Delivery:
        """One transfer of the file: ``FILE_META`` to ``FILE_ACK``; from byte 0 if ``from_start``
        (whatever the receiver kept), else from where the receiver proves it holds the file's
        first bytes."""
        progress: Callable[[str, int, int], Any] | None = self.context.progress_reporter(self.name)
        chunk_size = self._chunk_size()
        tid = transfer_id_for(self.context.role, name, size, sha256)
        if tid in self._outgoing or tid in self._incoming:
            raise LocalProtocolError(f"{name} is already being transferred in this session")
        loop = asyncio.get_running_loop()
        outgoing = _Outgoing(tid, name, size, sha256, loop.create_future(), loop.create_future())
        try:
            self.link.engine.open_transfer(tid, self.name)
        except RemoteProtocolError as error:
            raise LocalProtocolError(f"transfer id {tid} is already open: {error}") from None
        self._outgoing[tid] = outgoing
        offset = 0
        try:
            await self.link.send(FileMeta(transfer_id=tid, name=name, size=size, sha256=sha256, chunk_size=chunk_size))
            accept = await self._wait(outgoing.accepted, "accept_timeout", "FILE_ACCEPT", name)
            offset = accept.offset
            if offset > size:
                raise TransferError(f"the peer asked to resume {name} at {offset}, beyond its {size} bytes")
            if offset and (from_start or not await self._prefix_is_ours(path, accept, name)):
                offset = 0
            elif offset:
                logger.info("rtc-chunked: resuming {} at byte {} of {}", name, offset, size)
            await self._stream(outgoing, path, offset, chunk_size, progress)
            if not outgoing.acked.done():
                await self.link.send(FileEnd(transfer_id=tid))
            try:
                confirmed = await self._wait(outgoing.acked, "ack_timeout", "FILE_ACK", name)
            except IntegrityError as error:
                error.after_resume = offset > 0
                raise
            if confirmed != sha256:
                raise IntegrityError(f"the peer confirmed {name} with SHA-256 {confirmed}, expected {sha256}")
        except BaseException as error:
            if not outgoing.closed_by_peer and not isinstance(error, ConnectionClosedError):
                await self._abandon_outgoing(tid, error)
            raise
        finally:
            self._outgoing.pop(tid, None)
            self.link.engine.close_transfer(tid)
            outgoing.settle()
            self.reports.append(SendReport(tid, name, size, offset, outgoing.sent))
        logger.info("rtc-chunked: delivered {} ({} bytes, {} sent from offset {})", name, size, outgoing.sent, offset)
        return Delivery(name=name, size=size, transport=self.name, sha256=sha256, reference=tid)

    async def _prefix_is_ours(self, path: Path, accept: FileAccept, name: str) -> bool:
        """Whether the bytes the receiver kept are this file's first ``accept.offset`` bytes, as
        the hash it sends of them says. Without a hash (a receiver that does not prove its
        prefix) the resume goes ahead: the final check still covers the whole file."""
        if accept.prefix_sha256 is None:
            return True
        ours = await asyncio.to_thread(hash_prefix, path, accept.offset)
        if ours == accept.prefix_sha256:
            return True
        logger.warning(
            "rtc-chunked: the peer kept {} bytes of {} that are not this file's: sending it from the start",
            accept.offset,
            name,
        )
        return False

    async def _abandon_outgoing(self, tid: str, error: BaseException) -> None:
        """Tell the receiver this side gave up, so it closes the transfer and drops the partial
        instead of waiting for chunks (and refusing the next FILE_META as a duplicate)."""
        if isinstance(error, asyncio.CancelledError):
            reason = REASON_SENDER_CANCELLED
        else:
            reason = quote_for_reply(str(error) or type(error).__name__)
        try:
            # Bounded: this may run while the task is being cancelled.
            await asyncio.wait_for(self.link.send(FileError(transfer_id=tid, reason=reason)), 5.0)
        except (ConnectionClosedError, asyncio.TimeoutError):
            logger.debug("rtc-chunked: could not tell the peer that transfer {} was abandoned", tid)

    async def _wait(self, future: asyncio.Future, option: str, what: str, name: str) -> Any:
        timeout = float(self._options.get(option, DEFAULT_TIMEOUT))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise TransferError(f"no {what} for {name} within {timeout:g} s") from None

    async def _stream(
        self,
        outgoing: _Outgoing,
        path: Path,
        offset: int,
        chunk_size: int,
        progress: Callable[[str, int, int], Any] | None,
    ) -> None:
        """Send the file's bytes from ``offset`` (counting them in ``outgoing.sent``).

        Reads run in a thread, about 1 MiB at a time, so memory stays at one read block plus
        the channel's high watermark whatever the file's size. Chunks are at most ``chunk_size``
        (the announced size), and cut to fill whole SCTP packets (:func:`packet_filling_chunk_size`).
        """
        tid, size, name = outgoing.transfer_id, outgoing.size, outgoing.name
        position = offset
        if progress is not None:
            progress(name, position, size)
        handle = await asyncio.to_thread(open, path, "rb", buffering=0)
        try:
            await asyncio.to_thread(handle.seek, offset)
            while position < size:
                # Chunks at most the announced size, cut to fill whole SCTP packets at the packet
                # size in use now (it may change during a transfer: probing, a black hole).
                piece_size = packet_filling_chunk_size(
                    chunk_size, getattr(self.link.channel, "sctp_user_data_per_packet", None)
                )
                read_size = max(1, READ_BYTES // piece_size) * piece_size
                block = await asyncio.to_thread(handle.read, min(read_size, size - position))
                if not block:
                    break
                view = memoryview(block)
                for start in range(0, len(view), piece_size):
                    if outgoing.acked.done():
                        # The receiver gave up (FILE_ERROR) or the session closed: stop now.
                        return
                    piece = view[start : start + piece_size]
                    await self.link.send_chunk(tid, position, piece)
                    position += len(piece)
                    outgoing.sent += len(piece)
                    if progress is not None:
                        progress(name, position, size)
        finally:
            handle.close()
        if position != size:
            raise TransferError(f"{name}: file changed while being sent ({position} of {size} bytes)")


@hookimpl
def rtcxfer_register_transports(register) -> None:
    register(RtcChunkedTransport)


@hookimpl
def rtcxfer_claim_frame(frame: Frame) -> str | None:
    return RtcChunkedTransport.name if RtcChunkedTransport.claims(frame) else None
