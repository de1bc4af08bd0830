"""Typed errors of the s3 transport, rooted in rtcxfer's own hierarchy.

Every failure a transfer can meet is a :class:`rtcxfer.protocol.errors.TransferError`, so a client that
falls back to another transport on ``TransferError`` needs nothing s3-specific. Each class
has a short ``code`` that leads the ``reason`` of an ``S3_ERROR`` frame, so the sender can
raise the same class the receiver met. Messages name buckets and keys, never credentials.
"""

from __future__ import annotations

from rtcxfer.protocol.errors import IntegrityError, RtcxferError, TransferError, UnsafePathError


class S3ConfigError(RtcxferError, ValueError):
    """This side's s3 settings are unusable (a malformed URL, a bad option value)."""


class S3TransportError(TransferError):
    """Base of the s3 transport's transfer failures."""

    code = "failed"

    def wire_reason(self) -> str:
        """The ``reason`` field of an ``S3_ERROR`` frame for this error."""
        return f"{self.code}: {self}"


class S3NotAgreedError(S3TransportError):
    """The peers do not share a reachable bucket/prefix in this session: use another transport."""

    code = "not-agreed"


class S3StorageError(S3TransportError):
    """The object store refused or failed a request."""

    code = "storage"


class S3BucketNotFoundError(S3StorageError):
    """The configured bucket does not exist."""

    code = "no-bucket"


class S3ObjectNotFoundError(S3StorageError):
    """The announced object is not there (deleted, or never uploaded to this store)."""

    code = "not-found"


class S3AccessDeniedError(S3StorageError):
    """The store refused this side's credentials or their permissions."""

    code = "access-denied"


class S3UnreachableError(S3StorageError):
    """The store could not be reached or the connection broke during a request."""

    code = "unreachable"


class S3IntegrityError(S3TransportError, IntegrityError):
    """The object's size or SHA-256 is not what was announced (changed or replaced)."""

    code = "integrity"


class S3NoSpaceError(S3TransportError):
    """The receiver has not enough free disk space for the object (once the space promised to
    the files it is already receiving is set aside)."""

    code = "no-space"


class S3PeerRefusedError(S3TransportError):
    """The peer refused or failed the transfer for a reason without a more specific class."""

    code = "refused"


class S3UnsafeKeyError(UnsafePathError):
    """An object key from the peer lies outside the agreed prefix or is not a plain path."""

    code = "unsafe-key"

    def wire_reason(self) -> str:
        return f"{self.code}: {self}"


_BY_CODE: dict[str, type[S3TransportError]] = {
    cls.code: cls
    for cls in (
        S3TransportError,
        S3NotAgreedError,
        S3StorageError,
        S3BucketNotFoundError,
        S3ObjectNotFoundError,
        S3AccessDeniedError,
        S3UnreachableError,
        S3IntegrityError,
        S3NoSpaceError,
        S3PeerRefusedError,
    )
}


def error_from_reason(reason: str, key: str) -> RtcxferError:
    """The typed error for the ``reason`` of an ``S3_ERROR`` the peer sent about ``key``."""
    code = reason.partition(": ")[0]
    message = f"peer could not take s3 object {key!r}: {reason}"
    if code == S3UnsafeKeyError.code:
        return S3UnsafeKeyError(message, peer_path=key)
    return _BY_CODE.get(code, S3PeerRefusedError)(message)
