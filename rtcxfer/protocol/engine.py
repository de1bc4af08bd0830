"""The sans-IO protocol engine of one session: data-channel messages in, events out; frames
in, messages out.

A :class:`Engine` does no I/O. The edge that owns the data channel feeds every received
message to :meth:`Engine.receive` and acts on the event it gets back:

* :class:`FrameReceived`: a control frame, and the name of the handler (a transport, or the
  application for session-level frames) that claimed it;
* :class:`ChunkReceived`: the bytes of an open transfer, and the handler that owns it;
* :class:`ProtocolViolation`: the peer sent something unusable; send ``reply`` (if any) and
  carry on. Nothing a peer sends makes the session raise.

Outgoing frames go through :meth:`Engine.send` and outgoing file bytes through
:meth:`Engine.chunk_header`. Transfers of different transports can be open at once: each
open transfer id is owned by one handler, and binary chunks are routed by that id.

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs

from rtcxfer.protocol.errors import (
    FrameDecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    TransferError,
    UnclaimedFrameError,
)
from rtcxfer.protocol.frames import (
    DEFAULT_CATALOGUE,
    FileError,
    Frame,
    FrameCatalogue,
    JobFailed,
    PathErrorFrame,
    ProtocolErrorFrame,
    pack_chunk_header,
    quote_for_reply,
    reply_to,
    unpack_chunk,
)

#: The handler name for frames the application itself handles (jobs, session control).
APPLICATION = "application"

#: Frames that report an error. An unusable one is dropped, never answered, so that two
#: peers can never bounce error replies back and forth forever.
ERROR_REPORTS: tuple[type[Frame], ...] = (ProtocolErrorFrame, FileError, PathErrorFrame, JobFailed)

Claim = Callable[[Frame], "str | None"]


@attrs.frozen
class FrameReceived:
    """A control frame from the peer, claimed by ``handler``."""

    frame: Frame
    handler: str


@attrs.frozen
class ChunkReceived:
    """Bytes at ``offset`` of the open transfer ``transfer_id``, owned by ``handler``."""

    transfer_id: str
    offset: int
    payload: memoryview = attrs.field(eq=False, repr=lambda view: f"<{len(view)} bytes>")
    handler: str


@attrs.frozen
class ProtocolViolation:
    """The peer sent something unusable. Send ``reply`` if it is not ``None``; go on."""

    error: RemoteProtocolError = attrs.field(eq=False)
    reply: Frame | None


Event = FrameReceived | ChunkReceived | ProtocolViolation


class Engine:
    """One peer-to-peer session's protocol state, without I/O.

    ``claim`` answers which transport handles a frame (usually
    :meth:`rtcxfer.transport.host.PluginHost.claim`); ``application_frames`` are the frame types the
    application handles itself, delivered with handler :data:`APPLICATION`. ``chunk_gate``, when
    it names a handler, gets every binary message whatever its header says (a session that has
    not authenticated refuses chunks as it refuses frames, instead of their transfer being
    looked up and answered).
    """

    def __init__(
        self,
        claim: Claim,
        *,
        catalogue: FrameCatalogue = DEFAULT_CATALOGUE,
        application_frames: Iterable[type[Frame]] = (ProtocolErrorFrame,),
        chunk_gate: Callable[[], str | None] | None = None,
    ) -> None:
        self._claim = claim
        self._chunk_gate = chunk_gate
        self.catalogue = catalogue
        self._application_frames = tuple(application_frames)
        self._transfers: dict[str, str] = {}
        #: How many unusable messages the peer has sent in this session.
        self.violations = 0

    # --- receiving --------------------------------------------------------------------

    def receive(self, message: str | bytes | bytearray | memoryview) -> Event:
        """Turn one data-channel message into exactly one event. Never raises."""
        if isinstance(message, str):
            return self.receive_text(message)
        return self.receive_binary(message)

    def receive_text(self, message: str) -> Event:
        """Decode a text message and find its handler."""
        try:
            frame = self.catalogue.decode(message)
        except FrameDecodeError as error:
            return self._violation(error)
        if isinstance(frame, self._application_frames):
            return FrameReceived(frame, APPLICATION)
        handler = self._claim(frame)
        if handler is None:
            error = UnclaimedFrameError(f"no handler for {frame.TYPE} frames in this session")
            if isinstance(frame, ERROR_REPORTS):
                return self._violation(error, reply=False)
            return self._violation(error)
        return FrameReceived(frame, handler)

    def receive_binary(self, message: bytes | bytearray | memoryview) -> Event:
        """Route a binary message to the handler of the transfer it belongs to."""
        gated = self._chunk_gate() if self._chunk_gate is not None else None
        if gated is not None:
            return ChunkReceived("", 0, memoryview(message), gated)
        try:
            transfer_id, offset, payload = unpack_chunk(message)
        except FrameDecodeError as error:
            return self._violation(error)
        handler = self._transfers.get(transfer_id)
        if handler is None:
            error = TransferError(
                f"chunk for unknown transfer {transfer_id}",
                reply=FileError(transfer_id=transfer_id, reason="unknown transfer"),
            )
            return self._violation(error)
        return ChunkReceived(transfer_id, offset, payload, handler)

    def _violation(self, error: RemoteProtocolError, *, reply: bool = True) -> ProtocolViolation:
        self.violations += 1
        return ProtocolViolation(error, reply_to(error) if reply else None)

    # --- sending ----------------------------------------------------------------------

    def send(self, frame: Frame) -> str:
        """The wire text for ``frame``; raises :class:`LocalProtocolError` if unwritable."""
        return self.catalogue.encode(frame)

    def reply_to(self, error: RemoteProtocolError) -> str:
        """The wire text of the reply that tells the peer about ``error``."""
        return self.send(reply_to(error))

    def chunk_header(self, transfer_id: str, offset: int) -> bytes:
        """The header to put before the bytes at ``offset`` of an open transfer."""
        if transfer_id not in self._transfers:
            raise LocalProtocolError(f"transfer {transfer_id} is not open in this session")
        return pack_chunk_header(transfer_id, offset)

    # --- transfers --------------------------------------------------------------------

    def open_transfer(self, transfer_id: str, handler: str) -> None:
        """Route chunks of ``transfer_id`` to ``handler`` from now on."""
        owner = self._transfers.get(transfer_id)
        if owner is not None:
            raise TransferError(
                f"transfer {quote_for_reply(transfer_id)} is already open",
                reply=FileError(transfer_id=transfer_id, reason="transfer already open"),
            )
        pack_chunk_header(transfer_id, 0)  # validates the id before it is ever routed
        self._transfers[transfer_id] = handler

    def close_transfer(self, transfer_id: str) -> None:
        """Stop routing chunks of ``transfer_id``; later chunks are violations."""
        self._transfers.pop(transfer_id, None)

    @property
    def open_transfers(self) -> Mapping[str, str]:
        """Open transfer ids and the handler that owns each (a read-only view)."""
        return dict(self._transfers)
