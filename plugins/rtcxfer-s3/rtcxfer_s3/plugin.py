"""The pluggy hook implementations rtcxfer finds through the ``rtcxfer.transports`` entry point.

Importing this module must stay cheap (every ``rtcxfer`` command loads it): s3fs and botocore
are imported only when a transfer needs them.
"""

from __future__ import annotations

from rtcxfer.protocol.frames import Frame
from rtcxfer.transport.hookspecs import hookimpl
from rtcxfer_s3.frames import S3_FRAME_TYPES
from rtcxfer_s3.transport import S3Transport


@hookimpl
def rtcxfer_frame_types():
    return S3_FRAME_TYPES


@hookimpl
def rtcxfer_register_transports(register) -> None:
    register(S3Transport)


@hookimpl
def rtcxfer_claim_frame(frame: Frame) -> str | None:
    return S3Transport.name if S3Transport.claims(frame) else None
