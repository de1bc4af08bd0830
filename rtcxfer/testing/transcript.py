"""A transcript of everything one real job puts on the wire: signaling messages and data-channel
messages, in order, as ``docs/protocol.md`` shows them in its worked examples.

:func:`record_job` runs a whole job on 127.0.0.1 (a real signaling server, a real worker, a
real client over real aiortc peers) with two taps:

* a WebSocket relay between both peers and the signaling server, which records every JSON
  message in both directions;
* a wrapper around the client's data channel, which records every text frame and the header of
  every binary chunk, both directions (the client sees all of a session's traffic).

``python -m rtcxfer.testing.transcript [rtc-chunked|shared-fs]`` prints one, to refresh the
document's examples from a real run. The test that keeps the document true uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from rtcxfer.client.rtc_client import JobResult, RTCClient
from rtcxfer.client.sample import build_sample_package
from rtcxfer.net import peer as rtc
from rtcxfer.net.signaling import SignalingClient, SignalingServer, connect_directly
from rtcxfer.net.signaling.messages import MalformedMessage, Register, decode_request
from rtcxfer.protocol.auth import signaling_token
from rtcxfer.protocol.frames import CHUNK_HEADER_SIZE
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

__all__ = ["Transcript", "record_job"]

LOOPBACK = "127.0.0.1"


@attrs.define
class Transcript:
    """What crossed the wire, as ``(direction, message)`` lines in order.

    Directions: ``SIG peer->server`` / ``SIG server->peer`` (peer being ``C`` or ``W``) for
    signaling, where the message is the JSON object; ``C->W`` / ``W->C`` for the data channel,
    where it is the frame text, or for a binary chunk the bytes (header, then payload).
    """

    lines: list[tuple[str, object]] = attrs.field(factory=list)
    result: JobResult | None = None

    def frames(self) -> list[str]:
        """Every text frame on the data channel, both directions."""
        return [m for d, m in self.lines if not d.startswith("SIG") and isinstance(m, str)]

    def chunks(self) -> list[bytes]:
        return [m for d, m in self.lines if not d.startswith("SIG") and isinstance(m, bytes)]

    def signaling(self) -> list[dict]:
        return [m for d, m in self.lines if d.startswith("SIG")]

    def render(self, sdp_chars: int = 40) -> str:
        """The transcript as ``docs/protocol.md`` prints it (SDP shortened, chunks as headers)."""
        out = []
        for direction, message in self.lines:
            if isinstance(message, dict):
                payload = message.get("payload")
                if isinstance(payload, dict) and isinstance(payload.get("sdp"), str):
                    message = {**message, "payload": {**payload, "sdp": payload["sdp"][:sdp_chars] + "..."}}
                out.append(f"{direction} {json.dumps(message)}")
            elif isinstance(message, bytes):
                out.append(f"{direction} <binary {len(message)} bytes: {message[:CHUNK_HEADER_SIZE].hex()}...>")
            else:
                out.append(f"{direction} {message}")
        return "\n".join(out)


class _RecordingChannel:
    """The client's data channel, recording what passes (everything else is delegated)."""

    def __init__(self, channel: rtc.DataChannel, transcript: Transcript) -> None:
        self._channel = channel
        self._transcript = transcript

    def __getattr__(self, name: str):
        return getattr(self._channel, name)

    async def send_text(self, text: str) -> None:
        self._transcript.lines.append(("C->W", text))
        await self._channel.send_text(text)

    async def send_bytes(self, data) -> None:
        self._transcript.lines.append(("C->W", bytes(data)))
        await self._channel.send_bytes(data)

    async def recv(self):
        message = await self._channel.recv()
        self._transcript.lines.append(("W->C", message if isinstance(message, str) else bytes(message)))
        return message


@asynccontextmanager
async def _signaling_tap(upstream_url: str, transcript: Transcript) -> AsyncIterator[str]:
    """A WebSocket relay on 127.0.0.1 in front of ``upstream_url`` that records every message.

    Each peer is told apart by the role in its ``register`` message (``C`` or ``W``)."""

    async def pump(source, sink, label: list[str], outward: bool) -> None:
        async for raw in source:
            message = json.loads(raw)
            if outward:
                with contextlib.suppress(MalformedMessage):
                    request = decode_request(raw)
                    if isinstance(request, Register):
                        label[0] = "W" if request.role == "worker" else "C"
            arrow = f"{label[0]}->S" if outward else f"S->{label[0]}"
            transcript.lines.append((f"SIG {arrow}", message))
            await sink.send(raw)

    async def handle(peer: ServerConnection) -> None:
        label = ["?"]
        async with connect_directly(upstream_url) as server:
            tasks = [
                asyncio.create_task(pump(peer, server, label, True)),
                asyncio.create_task(pump(server, peer, label, False)),
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def guarded(peer: ServerConnection) -> None:
        try:
            await handle(peer)
        except ConnectionClosed:
            pass

    async with serve(guarded, LOOPBACK, 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://{LOOPBACK}:{port}"


async def record_job(transport: str = "rtc-chunked", directory: Path | None = None) -> Transcript:
    """Run the sample job once over ``transport`` and return its transcript."""
    directory = Path(directory or tempfile.mkdtemp(prefix="rtcxfer-transcript-"))
    shared = directory / "shared"
    package = build_sample_package(shared / "jobs" / "sample-package.zip")
    # As `rtcxfer signal --token` and the other commands do: the server sees only an HMAC of the
    # room secret (rtcxfer.protocol.auth.signaling_token), never the secret.
    room_token, worker_token = signaling_token("ROOMSECRET"), secrets.token_urlsafe(16)
    transcript = Transcript()
    async with SignalingServer(LOOPBACK, 0, default_token=room_token) as server, _signaling_tap(
        server.url, transcript
    ) as url:
        worker = RTCWorkerClient(token=worker_token, shared_storage_root=shared, work_dir=directory / "worker")
        ready = asyncio.Event()
        serving = asyncio.create_task(worker.serve(url, "lab", signaling_token=room_token, on_ready=ready.set))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            signaling = SignalingClient(url, "lab", "client", "client-1", room_token)
            await signaling.connect()
            try:
                worker_id = await signaling.wait_for_peer(role="worker", timeout=30)
                send, receive = rtc.signaling_adapter(signaling, worker_id)
                peer, channel = await rtc.connect_via(send, receive, "offerer", None, 30)
                client = RTCClient(
                    token=worker_token,
                    shared_storage_root=shared,
                    results_dir=directory / "results",
                    transport=transport,
                )
                try:
                    await client.attach(_RecordingChannel(channel, transcript))
                    transcript.result = await client.submit(package, job_id="job-1")
                finally:
                    await client.close()
                    await peer.close()
            finally:
                await signaling.close()
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    return transcript


def main(argv: list[str]) -> int:
    transport = argv[0] if argv else "rtc-chunked"
    transcript = asyncio.run(record_job(transport))
    sys.stdout.write(transcript.render() + "\n")
    return 0 if transcript.result is not None and transcript.result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
