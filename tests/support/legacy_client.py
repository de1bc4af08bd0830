"""A client that speaks only sleap-rtc's legacy data-channel protocol, written from
``shared/spec/legacy-protocol.md`` (not from rtcxfer's code): its own aiortc peer, the channel
labelled ``my-data-channel``, raw 64 KiB chunks with the 16 MiB ``bufferedAmount`` wait,
``b"KEEP_ALIVE"`` between them, and results assembled the way sleap-rtc's client does (bytes
appended to the file the last ``FILE_META`` announced, written out at ``END_OF_FILE``).

sleap-rtc's own signaling (Cognito sign-in, its WebSocket messages) is not rtcxfer's, so the
peer is found through rtcxfer's signaling server; everything on the data channel is legacy.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import zipfile
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from rtcxfer.net import peer as rtc
from rtcxfer.net.aiortc_internals import restrict_host_candidates
from rtcxfer.net.signaling import SignalingClient

CHANNEL_LABEL = "my-data-channel"
CHUNK_SIZE = 64 * 1024
BUFFER_LIMIT = 16 * 1024 * 1024
KEEP_ALIVE = b"KEEP_ALIVE"
WAIT = 60.0


class LegacyClient:
    """The client's end of one data channel.

    ``channel`` is anything with ``send_text``, ``send_bytes``, ``recv`` and ``buffered_amount``
    (an :class:`AiortcChannel`, or rtcxfer's ``DataChannel`` in in-process tests).
    """

    def __init__(self, channel) -> None:
        self.channel = channel
        #: Every text message received, in order.
        self.texts: list[str] = []
        #: Files received completely (FILE_META ... END_OF_FILE), by name.
        self.files: dict[str, bytes] = {}
        self._receiving: tuple[str, bytearray] | None = None

    # --- sending ----------------------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self.channel.send_text(message)
        else:
            while self.channel.buffered_amount > BUFFER_LIMIT:
                await asyncio.sleep(0.1)
            await self.channel.send_bytes(message)

    async def upload(
        self,
        data: bytes,
        name: str,
        *,
        package_type: str = "train",
        output_dir: str = "models",
        keep_alive_every: int = 2,
        announced_size: int | None = None,
    ) -> None:
        """Section 2's client side: settings, FILE_META, raw chunks, END_OF_FILE."""
        await self.send(f"PACKAGE_TYPE::{package_type}")
        await self.send(f"OUTPUT_DIR::{output_dir}")
        size = len(data) if announced_size is None else announced_size
        await self.send(f"FILE_META::{name}:{size}:False")
        for index, start in enumerate(range(0, len(data), CHUNK_SIZE)):
            await self.send(data[start : start + CHUNK_SIZE])
            if keep_alive_every and index % keep_alive_every == 0:
                await self.send(KEEP_ALIVE)
        await self.send("END_OF_FILE")

    async def start_shared_job(self, name: str, size: int, job_id: str, relative_input: str, output: str) -> None:
        """Section 4's client side, sent back to back as sleap-rtc's client does."""
        await self.send(f"FILE_META::{name}:{size}:False")
        await self.send(f"JOB_ID::{job_id}")
        await self.send(f"SHARED_INPUT_PATH::{relative_input}")
        await self.send(f"SHARED_OUTPUT_PATH::{output}")
        await self.send("SHARED_STORAGE_JOB::start")

    # --- receiving --------------------------------------------------------------------

    async def next_text(self, timeout: float = WAIT) -> str:
        """The next text message; bytes received meanwhile go to the file being received."""
        while True:
            message = await asyncio.wait_for(self.channel.recv(), timeout)
            if isinstance(message, bytes):
                if message != KEEP_ALIVE:
                    assert self._receiving is not None, "result bytes before FILE_META"
                    self._receiving[1].extend(message)
                continue
            self.texts.append(message)
            if message.startswith("FILE_META::"):
                name, size, _ = message.split("FILE_META::", 1)[1].split(":")
                self._receiving = (name, bytearray())
            elif message == "END_OF_FILE":
                assert self._receiving is not None, "END_OF_FILE before FILE_META"
                name, data = self._receiving
                self.files[name] = bytes(data)
                self._receiving = None
            return message

    async def wait_for(self, *prefixes: str, timeout: float = WAIT) -> str:
        """The next text that equals or starts with one of ``prefixes``."""
        while True:
            text = await self.next_text(timeout)
            if text.startswith(prefixes):
                return text

    async def wait_for_file(self, timeout: float = WAIT) -> tuple[str, bytes]:
        await self.wait_for("END_OF_FILE", timeout=timeout)
        name = next(reversed(self.files))
        return name, self.files[name]

    async def run_rtc_job(self, data: bytes, name: str, **options) -> tuple[list[str], str, bytes]:
        """Upload, then read until the result file is complete: (texts, result name, bytes)."""
        first = len(self.texts)
        await self.upload(data, name, **options)
        result_name, result = await self.wait_for_file()
        return self.texts[first:], result_name, result


class AiortcChannel:
    """An aiortc data channel with the four methods :class:`LegacyClient` uses."""

    def __init__(self, channel) -> None:
        self.raw = channel
        self.queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        channel.on("message", self.queue.put_nowait)
        channel.on("open", self.opened.set)
        channel.on("close", self._on_close)

    def _on_close(self) -> None:
        self.closed.set()
        self.queue.put_nowait(None)

    @property
    def buffered_amount(self) -> int:
        return self.raw.bufferedAmount

    async def send_text(self, text: str) -> None:
        self.raw.send(text)

    async def send_bytes(self, data: bytes) -> None:
        self.raw.send(bytes(data))

    async def recv(self) -> str | bytes:
        message = await self.queue.get()
        if message is None:
            self.queue.put_nowait(None)
            raise ConnectionError("data channel closed")
        return message


class LegacyConnection:
    """A legacy client's peer connection to a worker found through rtcxfer's signaling."""

    def __init__(self, url: str, room: str, token: str, label: str = CHANNEL_LABEL) -> None:
        self.url, self.room, self.token, self.label = url, room, token, label
        self.signaling: SignalingClient | None = None
        self.pc: RTCPeerConnection | None = None
        self.channel: AiortcChannel | None = None

    async def __aenter__(self) -> LegacyConnection:
        self.signaling = SignalingClient(self.url, self.room, "client", f"legacy-{secrets.token_hex(4)}", self.token)
        await self.signaling.connect()
        worker_id = await self.signaling.wait_for_peer(role="worker", timeout=WAIT)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        # sleap-rtc's client creates the channel, with default options, before its offer.
        self.channel = AiortcChannel(self.pc.createDataChannel(self.label))
        # Loopback only, as every test: no ICE server, host candidates on 127.0.0.1.
        restrict_host_candidates(self.pc, ["127.0.0.1"])
        await self.pc.setLocalDescription(await self.pc.createOffer())
        send, receive = rtc.signaling_adapter(self.signaling, worker_id)
        await send({"kind": "offer", "sdp": self.pc.localDescription.sdp})
        answer = await asyncio.wait_for(receive(), WAIT)
        sdp = rtc.strip_non_loopback_candidates(answer["sdp"])
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        return self

    async def wait_open(self, timeout: float = WAIT) -> bool:
        """True once the channel is open; False if it closed first."""
        assert self.channel is not None
        opened = asyncio.ensure_future(self.channel.opened.wait())
        closed = asyncio.ensure_future(self.channel.closed.wait())
        done, pending = await asyncio.wait({opened, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        assert done, f"the data channel neither opened nor closed within {timeout} s"
        return opened in done and not self.channel.closed.is_set()

    async def client(self) -> LegacyClient:
        assert self.channel is not None
        assert await self.wait_open(), "the worker closed the data channel"
        return LegacyClient(self.channel)

    async def __aexit__(self, *exc_info: object) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self.signaling is not None:
            await self.signaling.close()


# --- packages as sleap-rtc builds them: one top-level folder named like the ZIP ----------------

TRAIN_SCRIPT = """set -e
echo "training on $(wc -l < data.txt) lines"
mkdir -p models/run1
sha256sum data.txt | cut -d' ' -f1 > models/run1/sha256.txt
cp data.txt models/copy.txt
echo "training done"
"""


def legacy_package(
    name: str, data: bytes, *, script: str = TRAIN_SCRIPT, script_name: str = "train-script.sh", flat: bool = False
) -> bytes:
    """The bytes of a ZIP named ``name`` holding ``{stem}/{script_name}`` and ``{stem}/data.txt``."""
    stem = name[: -len(".zip")]
    prefix = "" if flat else f"{stem}/"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        if not flat:
            bundle.writestr(prefix, "")
        bundle.writestr(f"{prefix}{script_name}", script)
        bundle.writestr(f"{prefix}data.txt", data)
    return buffer.getvalue()


def expected_results(data: bytes) -> dict[str, bytes]:
    """What TRAIN_SCRIPT writes under models/, computed independently of it."""
    return {"copy.txt": data, "run1/sha256.txt": f"{hashlib.sha256(data).hexdigest()}\n".encode()}


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        return {info.filename: bundle.read(info) for info in bundle.infolist() if not info.is_dir()}


def files_under(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def sample_data(tag: str, lines: int = 3000) -> bytes:
    return "".join(f"{tag} line {i} {secrets.token_hex(8)}\n" for i in range(lines)).encode()
