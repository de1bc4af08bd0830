"""The s3 transport's control frames.

Only names cross the data channel: the agreed ``s3://bucket/prefix``, object keys, sizes and
SHA-256 digests. Credentials and endpoint URLs never do; each peer uses its own.
"""

from __future__ import annotations

from rtcxfer.protocol.frames import Frame, frame_type, hex_digits, integer, text, token

#: Verdicts of :class:`S3ReachResult`.
REACHABLE = "reachable"
DIFFERENT = "different"
UNREACHABLE = "unreachable"
UNCONFIGURED = "unconfigured"
INVALID = "invalid"
VERDICTS = (REACHABLE, DIFFERENT, UNREACHABLE, UNCONFIGURED, INVALID)


@frame_type("S3_REACH")
class S3Reach(Frame):
    """Either side: "I reach this ``s3://bucket/prefix``; do you reach the same one?"."""

    url: str = text(greedy=True)


@frame_type("S3_REACH_RESULT")
class S3ReachResult(Frame):
    """The answer to :class:`S3Reach`: one of :data:`VERDICTS`."""

    verdict: str = token()


@frame_type("S3_OBJECT")
class S3Object(Frame):
    """Sender -> receiver: the file lies in the agreed bucket as ``key``
    (``<prefix>/<transfer_id>/<name>``), ``size`` bytes with this SHA-256."""

    transfer_id: str = hex_digits(32)
    size: int = integer()
    sha256: str = hex_digits(64)
    key: str = text(greedy=True)


@frame_type("S3_ACK")
class S3Ack(Frame):
    """Receiver -> sender: downloaded, size and SHA-256 verified, in place under its name."""

    transfer_id: str = hex_digits(32)
    sha256: str = hex_digits(64)


@frame_type("S3_ERROR")
class S3Error(Frame):
    """Receiver -> sender: the transfer failed; ``reason`` starts with a short code
    (``integrity:``, ``not-found:``, ``unsafe-key:``...) followed by text for a person."""

    transfer_id: str = hex_digits(32)
    reason: str = text(greedy=True)


S3_FRAME_TYPES: tuple[type[Frame], ...] = (S3Reach, S3ReachResult, S3Object, S3Ack, S3Error)
