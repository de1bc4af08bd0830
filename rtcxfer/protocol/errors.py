"""The typed errors of rtcxfer: one small hierarchy, rooted at :class:`RtcxferError`.

Two families matter most, named after h11's:

* :class:`RemoteProtocolError`: the *peer* misbehaved (a malformed frame, a hostile path,
  a chunk for an unknown transfer). It carries the ``reply`` frame to send back, and the
  session goes on.
* :class:`LocalProtocolError`: *we* misused the API (encoding a frame that cannot be written,
  sending on a closed session). It is a bug on our side and is never sent to the peer.

Everything else a peer can cause (path, archive, transfer problems) derives from
:class:`RemoteProtocolError` too, so a worker's message loop needs one ``except`` clause to
turn any peer-caused failure into a reply frame.

This module is part of the sans-IO core: it imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only: frames imports this module, never the reverse
    from rtcxfer.protocol.frames import Frame


class RtcxferError(Exception):
    """Base class of every error rtcxfer raises on purpose."""


class LocalProtocolError(RtcxferError):
    """Our own code asked for something the protocol cannot express (a bug on this side)."""


class RemoteProtocolError(RtcxferError):
    """The peer sent something we refuse; ``reply`` is the frame that tells it why.

    ``reply`` may be ``None`` when the caller will build the reply itself (for example a
    transport that knows which job the failure belongs to); :func:`rtcxfer.protocol.frames.reply_to`
    gives the frame to send either way.
    """

    def __init__(self, message: str, reply: Frame | None = None) -> None:
        super().__init__(message)
        self.reply = reply

class FrameDecodeError(RemoteProtocolError):
    """A text frame from the peer could not be decoded (unknown type, wrong fields)."""


class UnclaimedFrameError(RemoteProtocolError):
    """A well-formed frame that no installed transport or handler claims."""


class PathError(RemoteProtocolError):
    """A path received from the peer cannot be used. ``peer_path`` is the text the peer sent.

    The message and reply never contain the worker's absolute paths: those are logged
    locally, never echoed to the peer.
    """

    def __init__(self, message: str, peer_path: str, reply: Frame | None = None) -> None:
        super().__init__(message, reply)
        self.peer_path = peer_path


class UnsafePathError(PathError):
    """The path text itself is unacceptable (absolute, ``..``, control characters, a scheme)."""


class PathOutsideRootError(PathError):
    """The path, once symlinks are resolved, lies outside the shared storage root."""


class PathNotFoundError(PathError):
    """Nothing exists at the path (or it is not the kind of object expected)."""


class PathPermissionError(PathError):
    """The worker's process may not read or write the path."""


class PathExistsError(PathError):
    """Something already exists where a new file was to be created exclusively."""


class NotARegularFileError(PathNotFoundError):
    """The path exists but is a directory, device, FIFO or similar where a file was expected."""


class ArchiveError(RemoteProtocolError):
    """A package archive is corrupted, hostile or over a configured limit."""


class CorruptArchiveError(ArchiveError):
    """The archive cannot be read as a ZIP file (truncated, bad CRC, not a ZIP)."""


class UnsafeArchiveError(ArchiveError):
    """A member of the archive would escape, is a link, is duplicated or is encrypted."""


class ArchiveLimitError(ArchiveError):
    """The archive exceeds a limit: member count, total size or compression ratio."""


class TransferError(RemoteProtocolError):
    """A file transfer failed (unknown transfer, bad size, chunk out of range)."""


class IntegrityError(TransferError):
    """Received bytes do not match the announced size or SHA-256."""

    #: The transfer had continued after bytes the receiver kept from an earlier session, which
    #: may be what was wrong: sending the file whole may succeed.
    after_resume: bool = False


class AuthenticationError(RemoteProtocolError):
    """The peer did not present a valid token."""


class TokenRefusedError(AuthenticationError):
    """The worker refused this client's proof (``AUTH_FAILED``): most likely the wrong token
    (or a peer posing as the worker that says so)."""


class UnprovenWorkerError(AuthenticationError):
    """The peer answering as the worker did not prove it knows the token: an impostor in the
    room (a peer holding only the signaling server's token) or a relay in between. The user's
    token is not in question; nothing was sent to it beyond the client's own proof."""


class StorageFullError(RtcxferError):
    """Writing failed because the storage is out of space (ENOSPC / EDQUOT)."""


class JobError(RtcxferError):
    """A job could not be run: a broken manifest, a failing command, a timeout."""


class PluginError(RtcxferError):
    """A plugin could not be loaded or broke its contract."""


class SignalingError(RtcxferError):
    """The signaling server refused a request or the connection to it failed."""


class SharedRoomsError(SignalingError):
    """A signaling server cannot use the shared store of its rooms (``rtcxfer signal --redis``):
    a malformed URL, a store that does not answer or refuses. The message says which (never a
    password in the URL)."""


class IceServerError(RtcxferError, ValueError):
    """An ICE server (STUN or TURN) that cannot be used: a malformed or unsupported URL, or
    credentials that cannot be made. The message names the URL (never a credential) and what is
    wrong. A ``ValueError`` too, as aiortc's own complaint about a URL is."""


class ConnectionClosedError(RtcxferError):
    """The peer connection or data channel closed before the operation completed."""


class IceFailedError(ConnectionClosedError):
    """No ICE candidate pair worked: the two peers could not reach each other. The message says
    what each side gathered, the likely cause and the remedy; ``failure`` is the
    :class:`rtcxfer.net.ice_paths.IceFailure` it was made from (None where not known)."""

    def __init__(self, message: str, failure: object = None) -> None:
        super().__init__(message)
        self.failure = failure


class NoWorkerError(SignalingError):
    """No worker of the room can take the job: none meets the requirements, or the one named
    is not there. The message lists what the room has."""


class WorkerWaitTimeoutError(NoWorkerError):
    """Every matching worker stayed busy or draining for the whole wait the client allowed; the
    message says what it waited for."""


class WorkerBusyError(RtcxferError):
    """A worker refused the session (``WORKER_BUSY``): every job slot is taken, or it drains."""

    def __init__(self, worker_id: str, reason: str) -> None:
        super().__init__(f"worker {worker_id} is busy: {reason}")
        self.worker_id = worker_id
        self.reason = reason


def describe(exc: BaseException) -> str:
    """A one-line description of ``exc`` fit for a log line or a user message."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
