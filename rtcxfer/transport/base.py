"""The base class every transport plugin subclasses.

A transport moves the bytes of one file between the peers in its own way: a relative path on
storage both mount, chunks over the data channel, an object store. The class attributes
below are the sans-IO part of the contract that discovery, selection and dispatch rely on.

What a transport can do is declared here, never inferred from its name: the client and the
worker ask the transport, so a third party's transport can take any role a built-in has.

* :attr:`Transport.fallback`: it moves bytes over the session itself and works wherever the
  session does; when another transport fails, the client retries with it.
* Results: a finished job's results go back by the transport the client named in
  ``JOB_SUBMIT``. By default they are sent file by file (:meth:`Transport.send_file`) into the
  client's staging directory; a transport that delivers them *in place* (shared storage both
  mount, so no byte crosses the session) sets :attr:`Transport.delivers_results_in_place` and
  overrides :meth:`~Transport.request_results`, :meth:`~Transport.send_results`,
  :meth:`~Transport.collect_results` and :meth:`~Transport.discard_results`.
* Inputs read in place: :meth:`Transport.unusable_input_reply` says what the peer is told when
  an input the transport delivered is not a usable package (shared-fs answers with the
  specification's ``PATH_ERROR``, which asks the client to retry with bytes), and
  :meth:`Transport.unreadable_input_reply` when it could not be read at all.

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import attrs

from rtcxfer.protocol.frames import Frame

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.net.link import Link
    from rtcxfer.protocol.engine import ChunkReceived


class Transport:
    """A way to move a file's bytes. Subclasses set the class attributes below."""

    #: Unique name used on the wire and on the command line, e.g. ``"shared-fs"``.
    name: ClassVar[str] = ""
    #: Automatic selection prefers the transport with the highest rank both peers offer.
    rank: ClassVar[int] = 0
    #: The frame classes this transport owns; :meth:`claims` answers from them.
    frame_types: ClassVar[tuple[type[Frame], ...]] = ()
    #: One line for ``rtcxfer plugins``.
    description: ClassVar[str] = ""
    #: Moves the bytes over the session itself, so it works wherever the session does: the
    #: transport the client falls back on when another one fails. Among the transports both
    #: peers offer that declare it, the one registered last is used (an installed plugin can
    #: take the role over from the built-in ``rtc-chunked``).
    fallback: ClassVar[bool] = False
    #: Results are written where the client reads them (storage both peers mount): no bytes
    #: cross the session. Such a transport overrides the results methods below.
    delivers_results_in_place: ClassVar[bool] = False

    @classmethod
    def claims(cls, frame: Frame) -> bool:
        """Whether a frame received from the peer belongs to this transport."""
        return isinstance(frame, cls.frame_types)

    @classmethod
    def usable(cls, context: TransportContext) -> bool:
        """Whether this side can offer the transport at all (e.g. a shared root is mounted)."""
        return True

    @classmethod
    def unusable_because(cls, context: TransportContext) -> str:
        """Why :meth:`usable` said no, and what would make it yes: shown to the user who asked
        for this transport. A plugin with settings overrides it (which one is missing)."""
        return "this side does not offer it"

    #: Set by :meth:`negotiate` when it returns ``False``: the verdict, for the user.
    not_negotiated_because: str = ""

    # The I/O part of the contract: one instance per session, made by the worker or client.

    def __init__(self, link: Link, context: TransportContext) -> None:
        self.link = link
        self.context = context

    async def negotiate(self) -> bool:
        """Client side, once per session after both peers listed this transport: check it
        really works between them (shared-fs writes a probe the worker must read back).
        ``False`` means the transport is not used in this session."""
        return True

    async def on_frame(self, frame: Frame) -> None:
        """Handle a frame the engine dispatched to this transport."""
        raise NotImplementedError

    async def on_chunk(self, event: ChunkReceived) -> None:
        """Handle bytes of a transfer this transport opened (byte-moving transports only)."""
        raise NotImplementedError

    def on_closed(self) -> None:
        """The session ended: drop partial state (never present a partial file as complete)."""

    async def send_file(self, path: Path, name: str) -> Delivery:
        """Deliver the local file ``path`` to the peer as ``name``; return once confirmed."""
        raise NotImplementedError

    # Results: how a finished job's files come back when the client chose this transport.

    async def request_results(self, job_id: str) -> None:
        """Client, before the job's input is sent: prepare whatever the worker needs to deliver
        this job's results by this transport (shared-fs asks for an output directory). By
        default nothing: the results arrive as files."""

    @property
    def results_requested(self) -> bool:
        """Worker: the client asked, in this session, for results by this transport (for a
        client of the specification's messages only, which names no transport: shared-fs after a
        ``SHARED_OUTPUT_PATH``)."""
        return False

    async def send_results(self, job_id: str, output_dir: Path, files: Sequence[tuple[str, int]]) -> str:
        """Worker: deliver the result ``files`` (relative names and sizes under ``output_dir``)
        of a finished job; return the relative path ``JOB_COMPLETE`` reports. By default each
        file is sent with :meth:`send_file` under its relative name, and the path is the job id.

        Raises :class:`~rtcxfer.protocol.errors.StorageFullError` when the destination is full,
        a :class:`~rtcxfer.protocol.errors.PathError` when the client's destination cannot be
        written, or another :class:`~rtcxfer.protocol.errors.RtcxferError`."""
        for relative_name, _ in files:
            await self.send_file(output_dir / relative_name, relative_name)
        return job_id

    async def collect_results(self, job_id: str, reference: str, destination: Path) -> None:
        """Client, after ``JOB_COMPLETE`` named ``reference``: put the job's results in
        ``destination``. By default nothing: they arrived there as files."""

    async def discard_results(self, job_id: str) -> None:
        """Client, once the results are collected (or the job failed): remove whatever the
        worker left for this job outside the session. By default nothing."""

    def unusable_input_reply(self, received: ReceivedFile) -> Frame | None:
        """Worker: the frame that tells the client an input this transport delivered is not a
        usable package, or ``None`` for the usual ``JOB_FAILED``."""
        return None

    def unreadable_input_reply(self, received: ReceivedFile, error: BaseException) -> Frame | None:
        """Worker: the frame that tells the client an input this transport delivered could not
        be read (``error``, e.g. a file on shared storage that vanished after it was validated),
        or ``None`` for the usual ``JOB_FAILED``."""
        return None


@attrs.frozen
class ReceivedFile:
    """A file that arrived from the peer and is complete and verified at ``path``."""

    name: str
    path: Path
    size: int
    transport: str
    sha256: str | None = None
    transfer_id: str | None = None
    #: How to open it for reading; by default a plain open of ``path``.
    opener: Callable[[], BinaryIO] | None = attrs.field(default=None, eq=False, repr=False)
    #: What the application's unpacker made of the bytes while they arrived
    #: (:attr:`TransportContext.unpack`; the worker: the extracted package). The file itself
    #: was not kept: nothing is at ``path``.
    unpacked: Any = attrs.field(default=None, eq=False)
    #: Why the unpacker refused the bytes (the file was verified but not kept either).
    unpack_error: Exception | None = attrs.field(default=None, eq=False)

    def open(self) -> BinaryIO:
        """Open the file for reading (binary)."""
        return self.opener() if self.opener is not None else open(self.path, "rb")


@attrs.frozen
class Delivery:
    """A file this side delivered to the peer, as the peer confirmed it."""

    name: str
    size: int
    transport: str
    sha256: str | None = None
    #: How the peer refers to it: a relative path for shared-fs, a transfer id for rtc-chunked.
    reference: str = ""


@attrs.define
class TransportContext:
    """What a transport's per-session object needs to know about its side of the session."""

    #: ``"client"`` or ``"worker"``.
    role: str
    #: Where files received by bytes-moving transports are placed (the application may change
    #: it between jobs).
    incoming_dir: Path
    #: The shared storage root on this side, if any.
    shared_root: Path | None = None
    #: The application's ``FilesystemAdapter`` over :attr:`shared_root`, if it has one (the
    #: worker specification's ``fs_adapter``); a transport makes its own otherwise.
    shared_filesystem: Any = None
    #: Called with every :class:`ReceivedFile` once it is complete and verified.
    on_file: Callable[[ReceivedFile], Awaitable[None] | None] | None = None
    #: Worker: called with the reason when a transport refuses the input the peer named (a
    #: ``PATH_ERROR``), before the refusal is sent: the job that waited for that input ends.
    on_input_refused: Callable[[str], None] | None = None
    #: Called with frames a transport received but did not expect (e.g. a PATH_ERROR about a
    #: package the worker already accepted), so the application can react.
    on_notice: Callable[[Frame], None] | None = None
    #: Where partial files of earlier sessions wait to be resumed (the worker's inputs; see
    #: :mod:`rtcxfer.files.kept_partials`), or ``None``.
    kept_partials_dir: Path | None = None
    #: Largest file a peer may announce.
    max_file_bytes: int = 1 << 40
    #: Worker: ``unpack(name, size)`` is asked, when a file starts arriving from its first
    #: byte, for an unpacker that takes the bytes as they arrive instead of the file being
    #: written whole (the worker extracts a job's package while it is received; see
    #: :mod:`rtcxfer.files.unpacking`). A transport passes it on to the receiving side and
    #: knows nothing more of it. ``None``, or ``None`` returned: the file is written as usual.
    unpack: Callable[[str, int], Any] | None = None
    #: Transport-specific settings, by transport name.
    options: dict[str, Any] = attrs.field(factory=dict)
    #: Called as ``progress(transport, name, bytes_done, total)`` by every transport that moves
    #: bytes, in both directions (sending and receiving), so an application shows a bar for a
    #: transport it has never heard of. ``bytes_done == total`` ends a file.
    progress: Callable[[str, str, int, int], None] | None = None

    def progress_reporter(self, transport: str) -> Callable[[str, int, int], None] | None:
        """``progress(name, done, total)`` for ``transport``: its own ``progress`` option if the
        application gave one, else :attr:`progress` with the transport's name filled in."""
        own = self.options.get(transport, {}).get("progress")
        if own is not None:
            return own
        shared = self.progress
        if shared is None:
            return None
        return lambda name, done, total: shared(transport, name, done, total)

    def input_refused(self, reason: str) -> None:
        """Tell the application (:attr:`on_input_refused`) that the peer's input was refused;
        call it before sending the refusal, which the peer may answer at once."""
        if self.on_input_refused is not None:
            self.on_input_refused(reason)

    async def deliver(self, received: ReceivedFile) -> None:
        """Hand a complete, verified file to :attr:`on_file` (a plain or a coroutine function)."""
        if self.on_file is None:
            return
        result = self.on_file(received)
        if inspect.isawaitable(result):
            await result
