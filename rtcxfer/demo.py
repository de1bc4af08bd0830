"""The local demo behind ``rtcxfer demo``; everything runs on 127.0.0.1."""

from __future__ import annotations

from rtcxfer import rtc
from rtcxfer.engine import FrameReceived, Session
from rtcxfer.frames import FileMeta, JobComplete, PathValidated, SharedInputPath, SharedOutputPath
from rtcxfer.plugins import PluginHost

PREVIEW_FRAMES = (
    ("client", SharedInputPath("jobs/demo/package.zip")),
    ("client", SharedOutputPath("jobs/demo/results")),
    ("worker", PathValidated("input")),
    ("client", FileMeta("0" * 32, "package.zip", 1024, "0" * 64, 65536)),
    ("worker", JobComplete("demo", "jobs/demo/results", 2, 0.01)),
)


async def run_frame_preview() -> list[str]:
    """Send each preview frame between two real aiortc peers; report who claimed what."""
    host = PluginHost()
    client_channel, worker_channel, close = await rtc.connect_pair_in_process()
    channels = {"client": client_channel, "worker": worker_channel}
    sessions = {side: Session(host.claim, catalogue=host.catalogue) for side in channels}
    lines = ["two aiortc peers connected on 127.0.0.1"]
    try:
        for sender, frame in PREVIEW_FRAMES:
            receiver = "worker" if sender == "client" else "client"
            await channels[sender].send_text(sessions[sender].send(frame))
            event = sessions[receiver].receive(await channels[receiver].recv())
            handler = event.handler if isinstance(event, FrameReceived) else "nobody"
            lines.append(f"{sender} -> {receiver}: {frame.encode()}  [claimed by {handler}]")
    finally:
        await close()
    return lines
