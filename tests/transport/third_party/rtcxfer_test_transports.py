"""Three transports written as a third party would, installed by the tests with pip (entry
point group ``rtcxfer.transports``) to show that what a transport can do is declared, never
inferred from a built-in's name:

* ``flaky`` (rank 200, so chosen first): refuses every file, so the client falls back;
* ``stash`` declares itself the fallback (``fallback = True``): it moves the bytes as base64
  text frames over the data channel, so it works wherever the session does. Installed after
  the built-ins, it takes the role over from ``rtc-chunked``;
* ``dropbox`` delivers results in place (``delivers_results_in_place = True``): both machines
  see the directory ``$DROPBOX_DIR`` (a stand-in for any storage both reach); the worker writes
  the results there and the client copies them out, so no result byte crosses the session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from rtcxfer.files import paths, results
from rtcxfer.protocol import frames
from rtcxfer.protocol.errors import TransferError
from rtcxfer.transport.base import Delivery, ReceivedFile, Transport
from rtcxfer.transport.hookspecs import hookimpl

STASH_BLOCK = 30_000  # bytes per frame: base64 keeps it well under the 64 KiB frame limit
ACK_TIMEOUT = 60.0


@frames.frame_type("STASH_PART")
class StashPart(frames.Frame):
    transfer_id: str = frames.hex_digits(32)
    data: str = frames.text(greedy=True)


@frames.frame_type("STASH_END")
class StashEnd(frames.Frame):
    transfer_id: str = frames.hex_digits(32)
    size: int = frames.integer()
    sha256: str = frames.hex_digits(64)
    name: str = frames.text(greedy=True)


@frames.frame_type("STASH_ACK")
class StashAck(frames.Frame):
    transfer_id: str = frames.hex_digits(32)
    verdict: str = frames.text(greedy=True)


@frames.frame_type("DROPBOX_INPUT")
class DropboxInput(frames.Frame):
    relative_path: str = frames.text(greedy=True)


@frames.frame_type("DROPBOX_ACK")
class DropboxAck(frames.Frame):
    verdict: str = frames.text(greedy=True)


class FlakyTransport(Transport):
    name = "flaky"
    rank = 200
    description = "a test transport that refuses every file"

    async def send_file(self, path: Path, name: str) -> Delivery:
        raise TransferError("flaky refuses every file")


class StashTransport(Transport):
    name = "stash"
    rank = 1
    fallback = True
    frame_types = (StashPart, StashEnd, StashAck)
    description = "a test transport: base64 text frames over the data channel"

    def __init__(self, link, context) -> None:
        super().__init__(link, context)
        self._parts: dict[str, bytearray] = {}

    async def send_file(self, path: Path, name: str) -> Delivery:
        transfer_id = secrets.token_hex(16)
        data = await asyncio.to_thread(path.read_bytes)
        for start in range(0, len(data), STASH_BLOCK):
            chunk = base64.b64encode(data[start : start + STASH_BLOCK]).decode()
            await self.link.send(StashPart(transfer_id, chunk))
        sha256 = hashlib.sha256(data).hexdigest()
        waiting = asyncio.ensure_future(
            self.link.wait_for(lambda f: isinstance(f, StashAck) and f.transfer_id == transfer_id, ACK_TIMEOUT)
        )
        await asyncio.sleep(0)
        await self.link.send(StashEnd(transfer_id, len(data), sha256, name))
        ack = await waiting
        if ack.verdict != "ok":
            raise TransferError(f"the peer refused {name}: {ack.verdict}")
        return Delivery(name=name, size=len(data), transport=self.name, sha256=sha256, reference=transfer_id)

    async def on_frame(self, frame: frames.Frame) -> None:
        if isinstance(frame, StashPart):
            self._parts.setdefault(frame.transfer_id, bytearray()).extend(base64.b64decode(frame.data))
        elif isinstance(frame, StashEnd):
            data = bytes(self._parts.pop(frame.transfer_id, b""))
            if len(data) != frame.size or hashlib.sha256(data).hexdigest() != frame.sha256:
                await self.link.send(StashAck(frame.transfer_id, "size or SHA-256 differs"))
                return
            relative = paths.check_relative_text(frame.name)
            incoming = Path(self.context.incoming_dir)
            parent = paths.makedirs_beneath(incoming, relative.parent.as_posix()) if relative.parent.parts else incoming
            target = parent / relative.name
            await asyncio.to_thread(target.write_bytes, data)
            await self.link.send(StashAck(frame.transfer_id, "ok"))
            await self.context.deliver(ReceivedFile(frame.name, target, len(data), self.name, frame.sha256))


def _dropbox_root() -> Path | None:
    configured = os.environ.get("DROPBOX_DIR")
    return Path(configured).resolve() if configured else None


class DropboxTransport(Transport):
    name = "dropbox"
    rank = 150
    delivers_results_in_place = True
    frame_types = (DropboxInput, DropboxAck)
    description = "a test transport: a directory both machines see ($DROPBOX_DIR), results in place"

    @classmethod
    def usable(cls, context) -> bool:
        return _dropbox_root() is not None

    def __init__(self, link, context) -> None:
        super().__init__(link, context)
        self.root = _dropbox_root()

    async def send_file(self, path: Path, name: str) -> Delivery:
        assert self.root is not None
        relative = f"inputs/{secrets.token_hex(8)}/{Path(name).name}"
        await asyncio.to_thread(paths.makedirs_beneath, self.root, str(Path(relative).parent))
        await asyncio.to_thread(shutil.copyfile, path, self.root / relative)
        waiting = asyncio.ensure_future(self.link.wait_for(lambda f: isinstance(f, DropboxAck), ACK_TIMEOUT))
        await asyncio.sleep(0)
        await self.link.send(DropboxInput(relative))
        ack = await waiting
        if ack.verdict != "ok":
            raise TransferError(f"the peer refused {name}: {ack.verdict}")
        return Delivery(name=name, size=path.stat().st_size, transport=self.name, reference=relative)

    async def on_frame(self, frame: frames.Frame) -> None:
        if not isinstance(frame, DropboxInput) or self.root is None:
            return
        root, relative = self.root, frame.relative_path
        path = paths.resolve_peer_path(relative, root)
        await self.link.send(DropboxAck("ok"))
        received = ReceivedFile(
            relative, path, path.stat().st_size, self.name, opener=lambda: paths.open_peer_path(relative, root)
        )
        await self.context.deliver(received)

    # Results in place: the worker writes them into the dropbox, the client copies them out.

    async def send_results(self, job_id: str, output_dir: Path, files: Sequence[tuple[str, int]]) -> str:
        assert self.root is not None
        relative = f"results/{job_id}"
        await asyncio.to_thread(results.publish_beneath, self.root, output_dir, files, relative, "dropbox")
        return relative

    async def collect_results(self, job_id: str, reference: str, destination: Path) -> None:
        assert self.root is not None
        await asyncio.to_thread(results.copy_out_of, self.root, reference, destination)
        # Evidence for the test that the results came this way, not over the channel.
        (self.root / "collected").mkdir(exist_ok=True)
        (self.root / "collected" / job_id).write_text(reference)

    async def discard_results(self, job_id: str) -> None:
        if self.root is not None:
            await asyncio.to_thread(shutil.rmtree, self.root / "results" / job_id, True)


@hookimpl
def rtcxfer_frame_types():
    return (StashPart, StashEnd, StashAck, DropboxInput, DropboxAck)


@hookimpl
def rtcxfer_register_transports(register) -> None:
    register(FlakyTransport)
    register(StashTransport)
    register(DropboxTransport)


@hookimpl
def rtcxfer_claim_frame(frame: frames.Frame) -> str | None:
    for transport in (StashTransport, DropboxTransport):
        if transport.claims(frame):
            return transport.name
    return None
