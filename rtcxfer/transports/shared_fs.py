"""The ``shared-fs`` transport: both peers mount the same storage, so only a relative path
crosses the wire (``SHARED_INPUT_PATH::jobs/123/data.zip``)."""

from __future__ import annotations

from rtcxfer.frames import Frame, PathErrorFrame, PathValidated, SharedInputPath, SharedOutputPath
from rtcxfer.hookspecs import hookimpl
from rtcxfer.transport import Transport


class SharedFsTransport(Transport):
    name = "shared-fs"
    rank = 100
    frame_types = (SharedInputPath, SharedOutputPath, PathValidated, PathErrorFrame)
    description = "a relative path on storage both peers mount; no bytes cross the data channel"


@hookimpl
def rtcxfer_register_transports(register) -> None:
    register(SharedFsTransport)


@hookimpl
def rtcxfer_claim_frame(frame: Frame) -> str | None:
    return SharedFsTransport.name if SharedFsTransport.claims(frame) else None
