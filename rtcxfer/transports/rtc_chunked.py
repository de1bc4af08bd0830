"""The ``rtc-chunked`` transport: the file's bytes in chunks over the data channel itself,
announced by ``FILE_META`` and confirmed by ``FILE_ACK`` after a SHA-256 check."""

from __future__ import annotations

from rtcxfer.frames import FileAccept, FileAck, FileEnd, FileError, FileMeta, Frame
from rtcxfer.hookspecs import hookimpl
from rtcxfer.transport import Transport


class RtcChunkedTransport(Transport):
    name = "rtc-chunked"
    rank = 10
    frame_types = (FileMeta, FileAccept, FileEnd, FileAck, FileError)
    description = "chunks over the WebRTC data channel, verified by SHA-256, resumable"


@hookimpl
def rtcxfer_register_transports(register) -> None:
    register(RtcChunkedTransport)


@hookimpl
def rtcxfer_claim_frame(frame: Frame) -> str | None:
    return RtcChunkedTransport.name if RtcChunkedTransport.claims(frame) else None
