"""Drive a real RTCWorkerClient through frames over two real aiortc peers on loopback.

The test side holds the raw data channel, so every frame it sends and receives is the exact
wire text; the worker side runs ``RTCWorkerClient.serve_channel`` as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

from rtcxfer import auth, rtc
from rtcxfer.frames import DEFAULT_CATALOGUE, Frame, unpack_chunk
from rtcxfer.worker import RTCWorkerClient

TOKEN = "test-token"
WAIT = 30.0


class WorkerPeer:
    """The test's end of a session with a worker."""

    def __init__(self, channel: rtc.DataChannel) -> None:
        self.channel = channel
        #: Every message received from the worker, in order (text as text, bytes as bytes).
        self.received: list[str | bytes] = []
        #: What this session's proofs cover, once :meth:`hello` got a challenge.
        self.transcript: auth.Transcript | None = None

    async def send(self, message: str | bytes | Frame) -> None:
        if isinstance(message, Frame):
            message = DEFAULT_CATALOGUE.encode(message)
        if isinstance(message, str):
            await self.channel.send_text(message)
        else:
            await self.channel.send_bytes(message)

    async def next_text(self, timeout: float = WAIT) -> str:
        """The next text message from the worker (binary messages are recorded and skipped)."""
        while True:
            message = await asyncio.wait_for(self.channel.recv(), timeout)
            self.received.append(message)
            if isinstance(message, str):
                return message

    async def expect(self, *prefixes: str, timeout: float = WAIT) -> str:
        """The next text message that starts with one of ``prefixes``; others are skipped
        (job status and log lines)."""
        while True:
            text = await self.next_text(timeout)
            if text.startswith(prefixes):
                return text

    async def finish_job(self, timeout: float = WAIT) -> tuple[str, dict[str, bytes]]:
        """Wait for the job's end, acting as an rtc-chunked receiver for streamed results.

        Returns the final frame's text and the result files received as bytes, by name.
        """
        names: dict[str, str] = {}
        parts: dict[str, bytearray] = {}
        files: dict[str, bytes] = {}
        while True:
            message = await asyncio.wait_for(self.channel.recv(), timeout)
            self.received.append(message)
            if isinstance(message, bytes):
                transfer_id, offset, payload = unpack_chunk(message)
                assert offset == len(parts[transfer_id])
                parts[transfer_id] += payload
                continue
            if message.startswith(("JOB_COMPLETE::", "JOB_FAILED::", "PATH_ERROR::")):
                return message, files
            if message.startswith("FILE_META::"):
                meta = DEFAULT_CATALOGUE.decode(message)
                names[meta.transfer_id] = meta.name
                parts[meta.transfer_id] = bytearray()
                await self.send(f"FILE_ACCEPT::{meta.transfer_id}::0")
            elif message.startswith("FILE_END::"):
                transfer_id = message.split("::")[1]
                data = bytes(parts.pop(transfer_id))
                files[names[transfer_id]] = data
                await self.send(f"FILE_ACK::{transfer_id}::{hashlib.sha256(data).hexdigest()}")

    async def hello(self, token: str = TOKEN, transports: str = "shared-fs,rtc-chunked") -> str:
        """Authenticate as a client would; returns the worker's last reply (WELCOME or AUTH_FAILED)."""
        client_nonce = auth.new_nonce()
        await self.send(f"HELLO::2::{client_nonce}::{transports}")
        challenge = await self.next_text()
        if not challenge.startswith("AUTH_CHALLENGE::"):
            return challenge
        local, remote = auth.channel_fingerprints(self.channel)
        self.transcript = auth.Transcript(client_nonce, challenge.split("::")[1], local, remote, transports)
        await self.send(f"AUTH_PROOF::{auth.client_proof(token, self.transcript)}")
        return await self.next_text()


@contextlib.asynccontextmanager
async def worker_session(worker: RTCWorkerClient, *, authenticate: bool = True):
    """A connected (and by default authenticated) session with ``worker``."""
    test_end, worker_end, close = await rtc.connect_pair_in_process()
    serving = asyncio.create_task(worker.serve_channel(worker_end, name="spec-session"))
    peer = WorkerPeer(test_end)
    try:
        if authenticate:
            welcome = await peer.hello()
            assert welcome.startswith("WELCOME::2::"), welcome
        yield peer
    finally:
        await close()
        await asyncio.wait_for(serving, WAIT)


def make_worker(shared_root: Path | None, work_dir: Path, **options) -> RTCWorkerClient:
    return RTCWorkerClient(token=TOKEN, shared_storage_root=shared_root, work_dir=work_dir, **options)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))
