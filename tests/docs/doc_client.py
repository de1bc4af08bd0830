"""A minimal rtcxfer client written from ``docs/protocol.md`` alone.

It is the document's test: it uses only aiortc (and cryptography, in which aiortc hands out
certificates), websockets and the standard library, never ``rtcxfer`` itself, so anything it
needs that the document does not say shows up here as a failure (the comments cite the section
each step follows). Transports: ``rtc-chunked`` and ``shared-fs`` (section 3.2); ``direct`` is
not offered.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import os
import re
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from cryptography.hazmat.primitives import hashes
from websockets.asyncio.client import connect as websocket_connect

PROTOCOL_VERSION = 2
#: Section 2: the channel's label.
CHANNEL_LABEL = "rtcxfer"
#: Section 3.1: what every proof's transcript starts with.
TRANSCRIPT_PREFIX = b"rtcxfer-auth-v2"
#: Section 1.2: the message of the room-token HMAC.
ROOM_TOKEN_MESSAGE = b"rtcxfer-auth-v2/signaling"
#: Section 5.1: magic ``RX`` and chunk format version 1.
CHUNK_MAGIC = b"RX\x01"
CHUNK_HEADER = struct.Struct(">3s16sQ")
#: Section 5: rtcxfer's own choice, so that header plus payload is 64 KiB.
CHUNK_PAYLOAD = 65509
#: Section 1.4: give up on a worker that does not answer the offer.
ANSWER_TIMEOUT = 30.0
#: Hang guard for each awaited frame; generous for a loaded machine, never a speed check.
FRAME_TIMEOUT = 60.0
#: Backpressure on the data channel: stop queueing chunks above this many buffered bytes.
SEND_BUFFER_HIGH = 4 * 1024 * 1024
SEND_BUFFER_LOW = 1024 * 1024

#: Straight to the signaling server: websockets >= 15 would use a proxy named in the environment,
#: and older ones have no such option.
NO_PROXY = {"proxy": None} if "proxy" in inspect.signature(websocket_connect.__init__).parameters else {}

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX32 = re.compile(r"[0-9a-f]{32}")
INTEGER = re.compile(r"0|[1-9][0-9]{0,19}")
TOKEN = re.compile(r"[A-Za-z0-9._,+=@-]{1,128}")
PARTIAL_NAME = re.compile(r"\.[^/]*\.[0-9a-f]{32}\.part")


class ProtocolViolation(Exception):
    """The worker sent something section 4 does not allow, or not what the protocol expects next."""


class WorkerRefused(Exception):
    """The worker ended the exchange with an error frame (``AUTH_FAILED``, ``JOB_FAILED``, ...)."""

    def __init__(self, frame: str) -> None:
        super().__init__(frame)
        self.frame = frame


class ImpostorWorker(Exception):
    """The worker's proof in ``WELCOME`` does not verify (section 3.1)."""


# --- section 1.2 and 3.1: the cryptography -------------------------------------------------


def room_token(room_secret: str) -> str:
    """Section 1.2: what ``register`` carries, admitting to the room and proving nothing else."""
    return hmac.new(room_secret.encode(), ROOM_TOKEN_MESSAGE, hashlib.sha256).hexdigest()


def transcript(
    role: str,
    client_nonce: str,
    worker_nonce: str,
    client_fingerprint: str,
    worker_fingerprint: str,
    client_transports: str,
    worker_transports: str | None = None,
) -> bytes:
    """Section 3.1: ``rtcxfer-auth-v2`` then each field as a 4-byte big-endian length and its UTF-8."""
    fields = [role, client_nonce, worker_nonce, client_fingerprint, worker_fingerprint, client_transports]
    if worker_transports is not None:
        fields.append(worker_transports)
    out = bytearray(TRANSCRIPT_PREFIX)
    for value in fields:
        encoded = value.encode()
        out += struct.pack(">I", len(encoded)) + encoded
    return bytes(out)


def proof(token: str, transcript_bytes: bytes) -> str:
    return hmac.new(token.encode(), transcript_bytes, hashlib.sha256).hexdigest()


def sdp_sha256_fingerprints(sdp: str) -> set[str]:
    """Every ``a=fingerprint:sha-256`` value of an SDP, uppercase (section 3.1's fallback)."""
    return {m.group(1).upper() for m in re.finditer(r"^a=fingerprint:sha-256 ([0-9A-Fa-f:]{95})\s*$", sdp, re.M)}


# --- section 4: frames ---------------------------------------------------------------------

#: For each frame type the client receives: (field count without the optional ones, index of
#: the greedy field or None, number of optional trailing fields).
RECEIVED_FRAMES: dict[str, tuple[int, int | None, int]] = {
    "AUTH_CHALLENGE": (1, None, 0),
    "WELCOME": (3, None, 0),
    "AUTH_FAILED": (1, 0, 0),
    "SHARED_PROBE_RESULT": (1, None, 0),
    "JOB_ACCEPTED": (1, None, 0),
    "JOB_STATUS": (2, None, 0),
    "JOB_LOG": (2, 1, 0),
    "JOB_PROGRESS": (3, None, 0),
    "JOB_COMPLETE": (2, 1, 2),
    "JOB_FAILED": (1, 0, 0),
    "PATH_VALIDATED": (1, None, 0),
    "PATH_ERROR": (1, 0, 0),
    "FILE_META": (5, 1, 0),
    "FILE_ACCEPT": (2, None, 0),
    "FILE_END": (1, None, 0),
    "FILE_ACK": (2, None, 0),
    "FILE_ERROR": (2, 1, 0),
    "PROTOCOL_ERROR": (1, 0, 0),
}
ERROR_FRAMES = ("AUTH_FAILED", "JOB_FAILED", "PATH_ERROR", "FILE_ERROR", "PROTOCOL_ERROR")


def encode(frame_type: str, *fields: object) -> str:
    return "::".join([frame_type, *(str(f) for f in fields)])


def _split(parts: list[str], count: int, greedy: int | None) -> list[str] | None:
    if greedy is None:
        return parts if len(parts) == count else None
    if len(parts) < count:
        return None
    after = count - greedy - 1
    return [*parts[:greedy], "::".join(parts[greedy : len(parts) - after]), *parts[len(parts) - after :]]


def decode(text: str) -> tuple[str, list[str]]:
    """Section 4.1: a frame's type and fields, the greedy field rejoined."""
    frame_type, _, rest = text.partition("::")
    if frame_type not in RECEIVED_FRAMES:
        raise ProtocolViolation(f"unexpected frame type {frame_type!r}: {text[:200]!r}")
    count, greedy, optional = RECEIVED_FRAMES[frame_type]
    parts = rest.split("::")
    fields = None
    if optional:
        # Section 4.1/4.2 leave open how a greedy field and optional trailing ones are told
        # apart; this reads the optional ones when the last parts have their kinds.
        with_optional = _split(parts, count + optional, greedy)
        if with_optional is not None and INTEGER.fullmatch(with_optional[-2]) and _is_float(with_optional[-1]):
            fields = with_optional
    if fields is None:
        fields = _split(parts, count, greedy)
    if fields is None or any(f == "" for f in fields):
        raise ProtocolViolation(f"wrong fields for {frame_type}: {text[:200]!r}")
    return frame_type, fields


def _is_float(text: str) -> bool:
    try:
        return float(text) >= 0 and repr(float(text)) == text
    except ValueError:
        return False


def safe_relative(name: str) -> PurePosixPath:
    """Section 5/7: a peer's file name, refused unless a plain relative POSIX path."""
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or any(part in ("", ".", "..") for part in name.split("/"))
        or ":" in path.parts[0]
        or PARTIAL_NAME.fullmatch(path.name)
    ):
        raise ProtocolViolation(f"unsafe file name from the worker: {name[:200]!r}")
    return path


# --- the client ----------------------------------------------------------------------------


@dataclass
class JobResult:
    job_id: str
    #: The ``relative_path`` of ``JOB_COMPLETE``.
    relative_path: str
    file_count: int | None
    total_mb: float | None
    #: Every other frame the worker sent about the job (status, logs, progress), in order.
    reports: list[str] = field(default_factory=list)
    #: rtc-chunked results: the files received, relative name -> path on this machine.
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Incoming:
    name: PurePosixPath
    size: int
    sha256: str
    chunk_size: int
    partial: Path
    final: Path
    received: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class DocClient:
    """One authenticated session with a worker, jobs run one at a time (section 6.1)."""

    def __init__(self, *, transports: tuple[str, ...] = ("shared-fs", "rtc-chunked")) -> None:
        self.transports = ",".join(transports) if transports else "none"
        self.worker_transports: list[str] = []
        self.usable_transports: list[str] = []
        self.log: list[str] = []
        self._pc: RTCPeerConnection | None = None
        self._channel = None
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._websocket = None

    # Section 1: signaling ------------------------------------------------------------------

    async def connect(self, signal_url: str, room: str, room_secret: str | None) -> None:
        """Register as a client, find the worker, offer, and wait for the channel to open."""
        self._websocket = await websocket_connect(signal_url, open_timeout=10, **NO_PROXY)
        peer_id = f"client-{secrets.token_hex(4)}"
        register = {"type": "register", "room": room, "role": "client", "peer_id": peer_id}
        if room_secret is not None:
            register["token"] = room_token(room_secret)
        await self._signal_send(register)
        registered = await self._signal_recv()
        if registered.get("type") != "registered":
            raise WorkerRefused(json.dumps(registered))
        worker_id = next((p["peer_id"] for p in registered["peers"] if p.get("role") == "worker"), None)
        while worker_id is None:
            message = await self._signal_recv()
            if message.get("type") == "peer-joined" and message.get("role") == "worker":
                worker_id = message["peer_id"]

        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        opened = asyncio.get_running_loop().create_future()
        # Section 2: created before the offer, ordered and reliable, not negotiated.
        channel = self._pc.createDataChannel(CHANNEL_LABEL, ordered=True)
        channel.bufferedAmountLowThreshold = SEND_BUFFER_LOW
        self._channel = channel
        channel.on("open", lambda: opened.done() or opened.set_result(None))
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", lambda: self._inbox.put_nowait(None))

        # Section 1.4: no trickle, so the local description holds every candidate.
        await self._pc.setLocalDescription(await self._pc.createOffer())
        await self._signal_send(
            {"type": "relay", "to": worker_id, "payload": {"kind": "offer", "sdp": self._pc.localDescription.sdp}}
        )
        answer_sdp = await asyncio.wait_for(self._await_answer(worker_id), ANSWER_TIMEOUT)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        await asyncio.wait_for(opened, FRAME_TIMEOUT)

    async def _await_answer(self, worker_id: str) -> str:
        while True:
            message = await self._signal_recv()
            if message.get("type") == "relay" and message.get("from") == worker_id:
                payload = message["payload"]
                if payload.get("kind") == "answer":
                    return payload["sdp"]
                raise WorkerRefused(f"worker answered the offer with {payload!r}")
            if message.get("type") == "peer-left" and message.get("peer_id") == worker_id:
                raise WorkerRefused("the worker left the room")

    async def _signal_send(self, message: dict) -> None:
        await self._websocket.send(json.dumps(message))

    async def _signal_recv(self) -> dict:
        message = json.loads(await asyncio.wait_for(self._websocket.recv(), FRAME_TIMEOUT))
        if message.get("type") == "error" and message.get("code") in ("bad-token", "server-full"):
            raise WorkerRefused(json.dumps(message))
        return message

    # Section 3.1: authentication -----------------------------------------------------------

    def dtls_fingerprints(self) -> tuple[str, str]:
        """(client's, worker's) certificate SHA-256, as this side's DTLS handshake saw them."""
        dtls = self._pc.sctp.transport
        local = next(f.value for f in dtls.getLocalParameters().fingerprints if f.algorithm == "sha-256")
        # aiortc exposes the peer's certificate only on its (private) OpenSSL connection; the
        # document's alternative, the answer's a=fingerprint, is what that handshake checked.
        peer_certificate = dtls._ssl.get_peer_certificate(as_cryptography=True)
        # Not aiortc's certificate_digest: its signature changed between aiortc releases.
        digest = peer_certificate.fingerprint(hashes.SHA256()).hex().upper()
        remote = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
        if remote.upper() not in sdp_sha256_fingerprints(self._pc.remoteDescription.sdp):
            raise ProtocolViolation("the worker's certificate is not the one its SDP announced")
        return local.upper(), remote.upper()

    async def authenticate(self, token: str) -> str:
        """HELLO, AUTH_CHALLENGE, AUTH_PROOF, WELCOME; checks the worker's proof. Returns WELCOME."""
        client_nonce = secrets.token_hex(32)
        await self.send_text(encode("HELLO", PROTOCOL_VERSION, client_nonce, self.transports))
        challenge = await self.next_frame()
        frame_type, fields = decode(challenge)
        if frame_type != "AUTH_CHALLENGE" or not HEX64.fullmatch(fields[0]):
            raise WorkerRefused(challenge)
        worker_nonce = fields[0]
        client_fp, worker_fp = self.dtls_fingerprints()
        mine = transcript("client", client_nonce, worker_nonce, client_fp, worker_fp, self.transports)
        await self.send_text(encode("AUTH_PROOF", proof(token, mine)))
        welcome = await self.next_frame()
        frame_type, fields = decode(welcome)
        if frame_type != "WELCOME":
            raise WorkerRefused(welcome)
        version, worker_transports, worker_proof = fields
        if version != str(PROTOCOL_VERSION):
            raise ProtocolViolation(f"WELCOME with version {version}")
        expected = proof(
            token,
            transcript("worker", client_nonce, worker_nonce, client_fp, worker_fp, self.transports, worker_transports),
        )
        if not hmac.compare_digest(worker_proof.encode(), expected.encode()):
            raise ImpostorWorker(welcome)
        self.worker_transports = [] if worker_transports == "none" else worker_transports.split(",")
        self.usable_transports = [t for t in self.transports.split(",") if t in self.worker_transports]
        return welcome

    # Section 3.3: the probe ----------------------------------------------------------------

    async def probe_shared_storage(self, shared_root: Path) -> str:
        """Write a random probe under the shared root and ask the worker to hash it; returns the verdict."""
        relative = f".rtcxfer/probes/{secrets.token_hex(16)}.probe"
        probe_path = shared_root / relative
        probe_path.parent.mkdir(parents=True, exist_ok=True)
        # Section 3.3 sets no size, but the worker hashes only a probe's first 65 bytes
        # (a 66-byte probe gets `mismatch`): found by experiment, see the report of issue 17.
        content = secrets.token_bytes(32)
        probe_path.write_bytes(content)
        try:
            await self.send_text(encode("SHARED_PROBE", hashlib.sha256(content).hexdigest(), relative))
            frame_type, fields = decode(await self.next_frame())
            if frame_type != "SHARED_PROBE_RESULT":
                raise ProtocolViolation(f"expected SHARED_PROBE_RESULT, got {frame_type}")
            verdict = fields[0]
        finally:
            probe_path.unlink(missing_ok=True)
        if verdict != "verified" and "shared-fs" in self.usable_transports:
            self.usable_transports.remove("shared-fs")
        return verdict

    # Section 6: jobs -----------------------------------------------------------------------

    def new_job_id(self) -> str:
        return f"job-{secrets.token_hex(4)}"

    async def run_job_rtc_chunked(self, package: Path, results_root: Path) -> JobResult:
        """Send the package in chunks, receive each result file into ``results_root/<job id>/``."""
        if "rtc-chunked" not in self.usable_transports:
            raise ProtocolViolation("rtc-chunked is not usable in this session")
        job_id = self.new_job_id()
        await self._submit(job_id, "rtc-chunked")
        await self.send_file(package, package.name)
        return await self._finish_job(job_id, results_root / job_id)

    async def run_job_shared_fs(self, relative_package: str, relative_output: str) -> JobResult:
        """The package already lies at ``relative_package`` under the shared root; results go to
        ``relative_output`` there."""
        if "shared-fs" not in self.usable_transports:
            raise ProtocolViolation("shared-fs is not usable in this session (no verified probe?)")
        job_id = self.new_job_id()
        await self._submit(job_id, "shared-fs")
        await self.send_text(encode("SHARED_OUTPUT_PATH", relative_output))
        await self._expect_path_validated("output")
        await self.send_text(encode("SHARED_INPUT_PATH", relative_package))
        await self._expect_path_validated("input")
        return await self._finish_job(job_id, None)

    async def run_spec_only_job(self, relative_package: str) -> JobResult:
        """Section 6.1's implicit job: only the specification's ``SHARED_INPUT_PATH``, no
        ``JOB_SUBMIT`` and no ``SHARED_OUTPUT_PATH``; the worker chooses the job id (its first
        ``JOB_STATUS`` says which) and names the results' directory in ``JOB_COMPLETE``."""
        if "shared-fs" not in self.usable_transports:
            raise ProtocolViolation("shared-fs is not usable in this session (no verified probe?)")
        await self.send_text(encode("SHARED_INPUT_PATH", relative_package))
        await self._expect_path_validated("input")
        first = await self.next_frame()
        frame_type, fields = decode(first)
        if frame_type != "JOB_STATUS":
            raise WorkerRefused(first)
        result = await self._finish_job(fields[0], None)
        result.reports.insert(0, first)
        return result

    async def run_job_shared_fs_else_bytes(
        self, relative_package: str, package: Path, relative_output: str, results_root: Path
    ) -> tuple[JobResult, str | None]:
        """A shared-fs job; if the worker finds the package corrupted where it lies, the bytes
        over rtc-chunked instead (section 3.2). The job's result, and the refusal if there was one."""
        try:
            return await self.run_job_shared_fs(relative_package, relative_output), None
        except WorkerRefused as refused:
            if not refused.frame.startswith("PATH_ERROR::File corrupted or invalid format: "):
                raise
            # That PATH_ERROR ended the job (6.3): a new JOB_SUBMIT, the package as bytes.
            return await self.run_job_rtc_chunked(package, results_root), refused.frame

    async def _submit(self, job_id: str, results_via: str) -> None:
        await self.send_text(encode("JOB_SUBMIT", job_id, results_via))
        reply = await self.next_frame()
        frame_type, fields = decode(reply)
        if frame_type != "JOB_ACCEPTED" or fields[0] != job_id:
            raise WorkerRefused(reply)

    async def _expect_path_validated(self, which: str) -> None:
        reply = await self.next_frame()
        if reply != encode("PATH_VALIDATED", which):
            raise WorkerRefused(reply)

    async def _finish_job(self, job_id: str, results_dir: Path | None) -> JobResult:
        """Until JOB_COMPLETE: reports are collected, result files received (section 6.1 step 5)."""
        reports: list[str] = []
        files: dict[str, Path] = {}
        incoming: dict[str, _Incoming] = {}
        while True:
            message = await self.next_message()
            if isinstance(message, bytes):
                await self._receive_chunk(message, incoming)
                continue
            frame_type, fields = decode(message)
            if frame_type in ("JOB_STATUS", "JOB_LOG", "JOB_PROGRESS"):
                if fields[0] != job_id:
                    raise ProtocolViolation(f"a report about another job: {message[:200]!r}")
                reports.append(message)
            elif frame_type == "FILE_META":
                if results_dir is None:
                    raise ProtocolViolation("a result file in a shared-fs job")
                await self._start_incoming(fields, results_dir, incoming)
            elif frame_type == "FILE_END":
                transfer_id = fields[0]
                files_entry = await self._finish_incoming(transfer_id, incoming)
                files[files_entry[0]] = files_entry[1]
            elif frame_type == "JOB_COMPLETE":
                if fields[0] != job_id or incoming:
                    raise ProtocolViolation(f"JOB_COMPLETE with transfers open or for another job: {message!r}")
                count = int(fields[2]) if len(fields) == 4 else None
                total = float(fields[3]) if len(fields) == 4 else None
                return JobResult(job_id, fields[1], count, total, reports, files)
            elif frame_type in ERROR_FRAMES:
                for entry in incoming.values():
                    entry.partial.unlink(missing_ok=True)
                raise WorkerRefused(message)
            else:
                raise ProtocolViolation(f"unexpected during a job: {message[:200]!r}")

    # Section 5: files in chunks ------------------------------------------------------------

    async def send_file(self, path: Path, name: str) -> None:
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        transfer_id = secrets.token_hex(16)
        await self.send_text(encode("FILE_META", transfer_id, name, len(data), sha256, CHUNK_PAYLOAD))
        reply = await self.next_frame()
        frame_type, fields = decode(reply)
        if frame_type != "FILE_ACCEPT" or fields[0] != transfer_id or not INTEGER.fullmatch(fields[1]):
            raise WorkerRefused(reply)
        offset = int(fields[1])
        if offset > len(data):
            raise ProtocolViolation(f"FILE_ACCEPT offset {offset} past the file's {len(data)} bytes")
        header_id = bytes.fromhex(transfer_id)
        while offset < len(data):
            payload = data[offset : offset + CHUNK_PAYLOAD]
            await self.send_bytes(CHUNK_HEADER.pack(CHUNK_MAGIC, header_id, offset) + payload)
            offset += len(payload)
        await self.send_text(encode("FILE_END", transfer_id))
        reply = await self.next_frame()
        if reply != encode("FILE_ACK", transfer_id, sha256):
            raise WorkerRefused(reply)

    async def _start_incoming(self, fields: list[str], results_dir: Path, incoming: dict[str, _Incoming]) -> None:
        transfer_id, name, size, sha256, chunk_size = fields
        if not (
            HEX32.fullmatch(transfer_id)
            and HEX64.fullmatch(sha256)
            and INTEGER.fullmatch(size)
            and INTEGER.fullmatch(chunk_size)
            and 1 <= int(chunk_size) <= 262144
        ):
            raise ProtocolViolation(f"bad FILE_META fields: {fields!r}")
        relative = safe_relative(name)
        final = results_dir / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".{relative.name}.{transfer_id}.part"
        partial.write_bytes(b"")
        incoming[transfer_id] = _Incoming(relative, int(size), sha256, int(chunk_size), partial, final)
        await self.send_text(encode("FILE_ACCEPT", transfer_id, 0))

    async def _receive_chunk(self, chunk: bytes, incoming: dict[str, _Incoming]) -> None:
        if len(chunk) <= CHUNK_HEADER.size:
            raise ProtocolViolation("a binary message too short to be a chunk")
        magic, raw_id, offset = CHUNK_HEADER.unpack_from(chunk)
        payload = chunk[CHUNK_HEADER.size :]
        entry = incoming.get(raw_id.hex())
        if magic != CHUNK_MAGIC or entry is None:
            raise ProtocolViolation("a chunk of no open transfer")
        if offset != entry.received or len(payload) > entry.chunk_size or offset + len(payload) > entry.size:
            raise ProtocolViolation("a chunk out of order, too long or past the file's size")
        with entry.partial.open("ab") as out:
            out.write(payload)
        entry.digest.update(payload)
        entry.received += len(payload)

    async def _finish_incoming(self, transfer_id: str, incoming: dict[str, _Incoming]) -> tuple[str, Path]:
        entry = incoming.pop(transfer_id, None)
        if entry is None:
            raise ProtocolViolation(f"FILE_END of no open transfer {transfer_id}")
        digest = entry.digest.hexdigest()
        if entry.received != entry.size or digest != entry.sha256:
            entry.partial.unlink(missing_ok=True)
            await self.send_text(
                encode("FILE_ERROR", transfer_id, f"SHA-256 mismatch: the received bytes hash to {digest}")
            )
            raise ProtocolViolation(f"result {entry.name} arrived damaged")
        with entry.partial.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(entry.partial, entry.final)
        await self.send_text(encode("FILE_ACK", transfer_id, digest))
        return str(entry.name), entry.final

    # The channel ---------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        self.log.append(f"C->W {text}")
        self._channel.send(text)

    async def send_bytes(self, data: bytes) -> None:
        self.log.append(f"C->W <binary {len(data)} bytes>")
        if self._channel.bufferedAmount > SEND_BUFFER_HIGH:
            drained = asyncio.Event()
            self._channel.once("bufferedamountlow", drained.set)
            await asyncio.wait_for(drained.wait(), FRAME_TIMEOUT)
        self._channel.send(data)

    async def next_message(self) -> str | bytes:
        message = await asyncio.wait_for(self._inbox.get(), FRAME_TIMEOUT)
        if message is None:
            raise WorkerRefused("the worker closed the channel")
        self.log.append(f"W->C {message if isinstance(message, str) else f'<binary {len(message)} bytes>'}")
        return message

    async def next_frame(self) -> str:
        message = await self.next_message()
        if not isinstance(message, str):
            raise ProtocolViolation("a chunk where a control frame was expected")
        return message

    async def close(self) -> None:
        if self._pc is not None:
            await self._pc.close()
        if self._websocket is not None:
            await self._websocket.close()
