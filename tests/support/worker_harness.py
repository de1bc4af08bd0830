"""Drive a real RTCWorkerClient over two real aiortc peers on loopback, in this process.

With :func:`worker_session` the test side holds the raw data channel, so every frame it sends
and receives is the exact wire text; with :func:`attached_client` a real ``RTCClient`` is the
other side. The worker runs ``RTCWorkerClient.serve_channel`` as in production, or
``RTCWorkerClient.serve`` through a real signaling server (:func:`start_serving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from rtcxfer.client.rtc_client import JobResult, RTCClient
from rtcxfer.client.sample import sample_text
from rtcxfer.net import peer as rtc
from rtcxfer.net.signaling import connect_directly
from rtcxfer.protocol import auth
from rtcxfer.protocol.frames import DEFAULT_CATALOGUE, Frame, unpack_chunk
from rtcxfer.testing.job_files import sample_summary
from rtcxfer.worker.rtc_worker_client import RTCWorkerClient

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


@contextlib.asynccontextmanager
async def attached_client(worker: RTCWorkerClient, client: RTCClient, name: str = "client-test"):
    """``client`` attached to ``worker`` (raising what a refused client hears); both ends closed
    afterwards."""
    client_end, worker_end, close = await rtc.connect_pair_in_process()
    serving_channel = asyncio.create_task(worker.serve_channel(worker_end, name=name))
    try:
        await client.attach(client_end)
        yield client
    finally:
        await client.close()
        await close()
        await asyncio.wait_for(serving_channel, WAIT)


async def start_serving(worker: RTCWorkerClient, url: str, room: str = "r", **serve_options) -> asyncio.Task:
    """``worker`` serving ``room`` of the signaling server at ``url``, once it is registered
    there; :func:`stop_serving` ends it."""
    ready = asyncio.Event()
    task = asyncio.create_task(worker.serve(url, room, on_ready=ready.set, **serve_options))
    await asyncio.wait_for(ready.wait(), WAIT)
    return task


async def stop_serving(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def make_worker(shared_root: Path | None, work_dir: Path, **options) -> RTCWorkerClient:
    return RTCWorkerClient(token=TOKEN, shared_storage_root=shared_root, work_dir=work_dir, **options)


def assert_sample_results(result: JobResult, data: bytes = sample_text()) -> None:
    """The sample job's results arrived whole, and nothing half-written is left beside them."""
    assert result.ok, result.failure
    assert (result.results_dir / "summary.txt").read_text() == sample_summary(data)
    assert (result.results_dir / "copy" / "data.txt").read_bytes() == data
    siblings = [p.name for p in result.results_dir.parent.iterdir()]
    assert not [name for name in siblings if name.endswith(".partial")]


async def run_shared_job(peer: WorkerPeer, relative_input: str, relative_output: str) -> str:
    """One job by the specification's messages alone: output path, input path, the end frame."""
    await peer.send(f"SHARED_OUTPUT_PATH::{relative_output}")
    assert await peer.next_text() == "PATH_VALIDATED::output"
    await peer.send(f"SHARED_INPUT_PATH::{relative_input}")
    assert await peer.next_text() == "PATH_VALIDATED::input"
    return await peer.expect("JOB_COMPLETE::", "JOB_FAILED::", "PATH_ERROR::")


async def hold_sockets(url: str, host: str, count: int) -> tuple[int, list]:
    """Open ``count`` bare sockets from ``host`` and never register: how many the server
    refused at once (``server-full``), and the sockets (the caller closes them)."""
    held = [await raw_websocket(url, host) for _ in range(count)]
    refused = 0
    for ws in held:
        with contextlib.suppress(asyncio.TimeoutError):
            try:
                refused += '"server-full"' in await asyncio.wait_for(ws.recv(), 0.3)
            except ConnectionClosed as closed:
                # The server closed right after its error message, before this read: websockets
                # before 14.1 drops a message it buffered once the connection is closed. The
                # close frame names the same refusal.
                refused += closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1013, "server-full")
    return refused, held


async def raw_websocket(url: str, host: str = "127.0.0.1"):
    """A bare WebSocket to ``url`` from the loopback address ``host`` (never through a proxy)."""
    return await connect_directly(url, open_timeout=5, local_addr=(host, 0))
