"""Integration tests of the rtc-chunked transport: two real aiortc peers, connected through the
real signaling server on 127.0.0.1, moving real files.

pytest-asyncio is not used: each test runs its coroutine with ``asyncio.run`` under an overall
``wait_for`` bound, and every wait inside carries its own bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.files.receiving import part_name, transfer_id_for
from rtcxfer.net.aiortc_internals import MAX_PACKET_SIZE, tuning_supported, userdata_max_length
from rtcxfer.net.signaling import SignalingServer
from rtcxfer.protocol.errors import ConnectionClosedError, IntegrityError, LocalProtocolError, TransferError
from rtcxfer.protocol.frames import (
    CHUNK_HEADER_SIZE,
    FileAccept,
    FileAck,
    FileEnd,
    FileError,
    FileMeta,
    ProtocolErrorFrame,
    pack_chunk_header,
)
from rtcxfer.testing import LinkedPeers, linked_peers, run_async
from rtcxfer.transport.base import ReceivedFile, TransportContext
from rtcxfer.transports.rtc_chunked import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    RtcChunkedTransport,
    packet_filling_chunk_size,
)

STEP = 20.0  # seconds any single wait may take
MiB = 1024 * 1024
TID = "ab" * 16
SHA_ZERO = "0" * 64


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(MiB, remaining))
            digest.update(block)
            handle.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (partials included), relative, sorted."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@attrs.define
class Rig:
    peers: LinkedPeers
    transports: dict[str, RtcChunkedTransport]
    received: dict[str, list[ReceivedFile]]
    incoming: dict[str, Path]


@asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    server: SignalingServer | None = None,
    options: dict[str, dict] | None = None,
    max_file_bytes: int = 1 << 40,
    roles: tuple[str, ...] = ("worker", "client"),
) -> AsyncIterator[Rig]:
    """Linked peers with an rtc-chunked transport on each side named in ``roles``."""
    options = options or {}
    received: dict[str, list[ReceivedFile]] = {"worker": [], "client": []}
    incoming = {role: tmp_path / f"{role}-incoming" for role in ("worker", "client")}
    transports: dict[str, RtcChunkedTransport] = {}
    async with linked_peers(server=server, timeout=STEP) as peers:
        for side in peers.sides:
            if side.role not in roles:
                continue
            context = TransportContext(
                role=side.role,
                incoming_dir=incoming[side.role],
                on_file=received[side.role].append,
                max_file_bytes=max_file_bytes,
                options={"rtc-chunked": options.get(side.role, {})},
            )
            transports[side.role] = RtcChunkedTransport(side.link, context)
            side.link.add_handler("rtc-chunked", transports[side.role])
        yield Rig(peers, transports, received, incoming)


# --- unit-level properties ------------------------------------------------------------------


def test_transfer_id_is_deterministic_and_depends_on_direction_and_content():
    assert transfer_id_for("client", "a.bin", 10, SHA_ZERO) == transfer_id_for("client", "a.bin", 10, SHA_ZERO)
    assert transfer_id_for("client", "a.bin", 10, SHA_ZERO) != transfer_id_for("worker", "a.bin", 10, SHA_ZERO)
    assert transfer_id_for("client", "a.bin", 10, SHA_ZERO) != transfer_id_for("client", "a.bin", 11, SHA_ZERO)
    assert len(transfer_id_for("client", "a.bin", 10, SHA_ZERO)) == 32


def test_part_name_stays_within_the_file_name_limit():
    assert part_name("data.zip", TID) == f".data.zip.{TID}.part"
    assert len(part_name("é" * 127, TID).encode()) <= 255  # 254 bytes of name
    assert DEFAULT_CHUNK_SIZE + 27 == 262144 == MAX_CHUNK_SIZE


@given(chunk_size=st.integers(1, MAX_CHUNK_SIZE), per_packet=st.integers(1, 70_000))
def test_a_packet_filling_chunk_is_at_most_the_announced_one_and_fills_whole_packets(chunk_size, per_packet):
    piece = packet_filling_chunk_size(chunk_size, per_packet)
    assert 1 <= piece <= chunk_size
    if chunk_size + CHUNK_HEADER_SIZE >= per_packet:
        assert (piece + CHUNK_HEADER_SIZE) % per_packet == 0 or piece == 1
        assert piece > chunk_size - per_packet  # never a whole packet less than it could be
    else:  # smaller than one packet: as it was
        assert piece == chunk_size


def test_without_a_packet_size_chunks_stay_as_announced():
    assert packet_filling_chunk_size(DEFAULT_CHUNK_SIZE, None) == DEFAULT_CHUNK_SIZE
    # Two rtcxfer peers' 65024-byte packets: four full packets a chunk, not four and 2160 bytes.
    assert packet_filling_chunk_size(DEFAULT_CHUNK_SIZE, userdata_max_length(MAX_PACKET_SIZE)) == 259957


@pytest.mark.skipif(not tuning_supported(), reason="no large SCTP packets on this aiortc")
def test_each_chunk_fills_whole_sctp_packets_between_two_rtcxfer_peers(tmp_path):
    """aiortc sends each message in packets of its own: a chunk of 256 KiB would cost four full
    packets and a fifth of 2160 bytes. The receiver counts the packets that reach it."""
    chunks = 8
    per_packet = userdata_max_length(MAX_PACKET_SIZE)
    piece = packet_filling_chunk_size(DEFAULT_CHUNK_SIZE, per_packet)
    source = tmp_path / "eight.bin"
    digest = make_file(source, chunks * piece)

    async def main():
        async with rig(tmp_path) as r:
            await asyncio.gather(*(side.peer.packet_size_settled(STEP) for side in r.peers.sides))
            receiving = r.peers.worker.peer._sizer
            before = receiving.packets_to_acknowledge
            delivery = await r.transports["client"].send_file(source, "eight.bin")
            return r, delivery, receiving.packets_to_acknowledge - before

    r, delivery, packets = run_async(main(), timeout=60)
    assert (delivery.size, delivery.sha256) == (chunks * piece, digest)
    assert sha256_of(r.incoming["worker"] / "eight.bin") == digest
    # Four packets a chunk, and one each for FILE_META and FILE_END (256 KiB chunks: 5 a chunk).
    assert packets <= chunks * (piece + CHUNK_HEADER_SIZE) // per_packet + 2, packets


# --- whole files both ways, resumed, and corrupted ------------------------------------------------


# Slow: 128 MiB through the data channel (the smaller transfers below stay quick).
@pytest.mark.slow
def test_64_mib_each_way_verified_by_sha256(tmp_path):
    size = 64 * MiB
    up = tmp_path / "up.bin"
    down = tmp_path / "down.bin"
    up_sha = make_file(up, size)
    down_sha = make_file(down, size)

    async def main():
        async with rig(tmp_path) as r:
            to_worker, to_client = await asyncio.gather(
                r.transports["client"].send_file(up, "inputs/up.bin"),
                r.transports["worker"].send_file(down, "results/down.bin"),
            )
        return r, to_worker, to_client

    r, to_worker, to_client = run_async(main(), timeout=140)
    assert (to_worker.size, to_worker.sha256, to_worker.transport) == (size, up_sha, "rtc-chunked")
    assert (to_client.size, to_client.sha256) == (size, down_sha)
    assert sha256_of(r.incoming["worker"] / "inputs/up.bin") == up_sha
    assert sha256_of(r.incoming["client"] / "results/down.bin") == down_sha
    assert files_under(r.incoming["worker"]) == ["inputs/up.bin"]  # no partial left behind
    assert files_under(r.incoming["client"]) == ["results/down.bin"]
    [got] = r.received["worker"]
    assert (got.name, got.size, got.sha256, got.transfer_id) == ("inputs/up.bin", size, up_sha, to_worker.reference)


def test_transfer_cut_at_half_resumes_from_the_receivers_partial(tmp_path):
    size = 12 * MiB
    source = tmp_path / "big.bin"
    sha = make_file(source, size)
    tid = transfer_id_for("client", "big.bin", size, sha)
    partial = tmp_path / "worker-incoming" / part_name("big.bin", tid)

    async def main():
        async with SignalingServer("127.0.0.1", 0) as server:
            cut = asyncio.Event()

            async with rig(tmp_path, server=server) as r:
                client_side = r.peers.client

                def progress(name, done, total):
                    if done >= total // 2 and not cut.is_set():
                        cut.set()
                        asyncio.get_running_loop().create_task(client_side.peer.close())

                r.transports["client"].context.options["rtc-chunked"]["progress"] = progress
                with pytest.raises(ConnectionClosedError):
                    await r.transports["client"].send_file(source, "big.bin")
                await r.peers.wait_closed(STEP)
                first = r.transports["client"].reports[-1]
            held = partial.stat().st_size
            assert 0 < held < size
            assert not (tmp_path / "worker-incoming" / "big.bin").exists()

            # A new session, through the same signaling server, for the same file.
            async with rig(tmp_path, server=server) as r2:
                delivery = await r2.transports["client"].send_file(source, "big.bin")
                second = r2.transports["client"].reports[-1]
            return held, first, second, delivery, r2

    held, first, second, delivery, r2 = run_async(main(), timeout=90)
    assert first.offset == 0 and first.bytes_sent >= size // 2
    assert second.transfer_id == first.transfer_id == delivery.reference
    assert second.offset == held > 0
    assert second.bytes_sent == size - held < size
    assert delivery.sha256 == sha
    assert sha256_of(tmp_path / "worker-incoming" / "big.bin") == sha
    assert files_under(tmp_path / "worker-incoming") == ["big.bin"]
    assert [f.sha256 for f in r2.received["worker"]] == [sha]


def test_byte_flipped_on_the_receive_path_is_caught_by_the_hash(tmp_path):
    size = 3 * MiB + 123
    source = tmp_path / "src.bin"
    make_file(source, size)

    async def main():
        async with rig(tmp_path) as r:
            receiver = r.transports["worker"]
            original = receiver.on_chunk
            flipped = []

            async def corrupting(event):
                if event.offset >= MiB and not flipped:
                    data = bytearray(event.payload)
                    data[len(data) // 2] ^= 0x01
                    flipped.append(event.offset)
                    event = attrs.evolve(event, payload=memoryview(bytes(data)))
                await original(event)

            receiver.on_chunk = corrupting
            with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
                await r.transports["client"].send_file(source, "src.bin")
            assert flipped
            # The session keeps serving: the same file, uncorrupted, now arrives.
            receiver.on_chunk = original
            delivery = await r.transports["client"].send_file(source, "src.bin")
        return r, delivery

    r, delivery = run_async(main())
    assert files_under(r.incoming["worker"]) == ["src.bin"]
    assert sha256_of(r.incoming["worker"] / "src.bin") == delivery.sha256
    assert len(r.received["worker"]) == 1


# --- resume is never accepted on size alone -------------------------------------------------


@pytest.mark.parametrize(("held", "corrupt"), [("half", True), ("all", True), ("all", False), ("half", False)])
def test_a_kept_prefix_is_resumed_from_only_when_its_hash_is_the_senders(tmp_path, held, corrupt):
    """The receiver's FILE_ACCEPT carries the SHA-256 of the prefix it kept; the sender continues
    after it only when it is its own file's, and otherwise sends from byte 0, which the receiver
    takes as a start over. Bytes planted under a predictable transfer id (hardening round two,
    finding 9) cost a resend, not the transfer."""
    size = 2 * MiB + 7
    source = tmp_path / "f.bin"
    sha = make_file(source, size)
    content = source.read_bytes()
    length = size if held == "all" else size // 2
    prefix = bytearray(content[:length])
    if corrupt:
        prefix[length // 3] ^= 0xFF
    incoming = tmp_path / "worker-incoming"
    incoming.mkdir()
    partial = incoming / part_name("f.bin", transfer_id_for("client", "f.bin", size, sha))
    partial.write_bytes(prefix)

    async def main():
        async with rig(tmp_path) as r:
            worker = r.peers.worker.link
            sent = []
            send = worker.send

            async def recording_send(frame):
                sent.append(frame)
                await send(frame)

            worker.send = recording_send
            delivery = await r.transports["client"].send_file(source, "f.bin")
            (accept,) = [frame for frame in sent if isinstance(frame, FileAccept)]
            return accept, r.transports["client"].reports, delivery

    accept, reports, delivery = run_async(main())
    assert (accept.offset, accept.prefix_sha256) == (length, hashlib.sha256(prefix).hexdigest())
    assert len(reports) == 1, "one transfer: no failed attempt first"
    assert reports[0].offset == (0 if corrupt else length)
    assert reports[0].bytes_sent == size - reports[0].offset
    assert delivery.sha256 == sha == sha256_of(incoming / "f.bin")
    assert files_under(incoming) == ["f.bin"]


def test_a_resume_that_fails_the_check_at_a_receiver_proving_nothing_is_sent_again_whole(tmp_path):
    """A receiver that sends no prefix hash (a third party's) resumes on trust; when the whole
    file then fails its check, the sender tries once more, from byte 0."""
    source = tmp_path / "s.bin"
    sha = make_file(source, 300_000)
    content = source.read_bytes()

    class TrustingReceiver:
        """Accepts at offset 100000 without proving anything, then judges the whole file."""

        def __init__(self) -> None:
            self.first_offsets: list[int] = []
            self.data = bytearray()

        async def on_chunk(self, event) -> None:
            if len(self.first_offsets) < self.attempts:
                self.first_offsets.append(event.offset)
            self.data[event.offset : event.offset + len(event.payload)] = event.payload

        async def on_frame(self, frame) -> None:
            pass

        async def receive(self, link, *, verdict: str) -> None:
            meta = await link.wait_for(lambda f: isinstance(f, FileMeta), STEP)
            self.attempts = len(self.first_offsets) + 1
            link.engine.open_transfer(meta.transfer_id, "trusting")
            # What an earlier session kept: junk, as planted bytes would be.
            self.data = bytearray(b"j" * 100_000)
            await link.send(FileAccept(transfer_id=meta.transfer_id, offset=100_000))
            await link.wait_for(lambda f: isinstance(f, FileEnd), STEP)
            link.engine.close_transfer(meta.transfer_id)
            digest = hashlib.sha256(self.data).hexdigest()
            if verdict == "judge" and digest != meta.sha256:
                await link.send(FileError(transfer_id=meta.transfer_id, reason="SHA-256 mismatch"))
            else:
                await link.send(FileAck(transfer_id=meta.transfer_id, sha256=digest))

    async def main():
        async with rig(tmp_path, roles=("client",)) as r:
            link = r.peers.worker.link
            receiver = TrustingReceiver()
            link.add_handler("trusting", receiver)
            sending = asyncio.create_task(r.transports["client"].send_file(source, "s.bin"))
            await receiver.receive(link, verdict="judge")
            await receiver.receive(link, verdict="judge")
            delivery = await asyncio.wait_for(sending, STEP)
            return delivery, receiver, r.transports["client"].reports

    delivery, receiver, reports = run_async(main())
    assert receiver.first_offsets == [100_000, 0]
    assert [report.offset for report in reports] == [100_000, 0]
    assert bytes(receiver.data) == content and delivery.sha256 == sha


# --- hostile or broken senders --------------------------------------------------------------


def meta_text(tid=TID, name="x.bin", size=10, sha=SHA_ZERO, chunk=DEFAULT_CHUNK_SIZE) -> str:
    return f"FILE_META::{tid}::{name}::{size}::{sha}::{chunk}"


def chunk(tid: str, offset: int, payload: bytes) -> bytes:
    return pack_chunk_header(tid, offset) + payload


PAYLOAD = b"0123456789"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
GOOD_META = meta_text(size=len(PAYLOAD), sha=PAYLOAD_SHA)

# Each case: messages the raw peer sends (a FileAccept is awaited after each FILE_META that
# should be accepted, marked by a leading "+"), then the reply expected and part of its text.
BAD_INPUT = {
    "name-dotdot": ([meta_text(name="../x")], FileError, "escapes"),
    "name-dotdot-inside": ([meta_text(name="a/../../x")], FileError, "escapes"),
    "name-absolute": ([meta_text(name="/etc/passwd")], FileError, "escapes"),
    "name-backslash": ([meta_text(name="..\\x")], FileError, "unsafe name"),
    "name-reserved": ([meta_text(name=f".x.{TID}.part")], FileError, "reserved"),
    "size-negative": ([meta_text().replace("::10::", "::-10::")], ProtocolErrorFrame, "size"),
    "size-over-limit": ([meta_text(size=2 * MiB)], FileError, "exceeds the limit"),
    "size-absurd": ([meta_text(size=10**19)], FileError, "exceeds the limit"),
    "chunk-size-zero": ([meta_text(chunk=0)], FileError, "chunk size"),
    "chunk-size-huge": ([meta_text(chunk=MAX_CHUNK_SIZE + 1)], FileError, "chunk size"),
    "chunk-beyond-size": (["+" + GOOD_META, chunk(TID, 0, PAYLOAD + b"!")], FileError, "beyond"),
    "chunk-wrong-offset": (["+" + GOOD_META, chunk(TID, 3, PAYLOAD[3:])], FileError, "expected 0"),
    "chunk-over-chunk-size": (
        ["+" + meta_text(size=len(PAYLOAD), sha=PAYLOAD_SHA, chunk=4), chunk(TID, 0, PAYLOAD)],
        FileError,
        "chunk size",
    ),
    "chunk-unknown-transfer": ([chunk("cd" * 16, 0, PAYLOAD)], FileError, "unknown transfer"),
    "binary-not-a-chunk": ([b"garbage that is not a chunk header"], ProtocolErrorFrame, "not an rtcxfer chunk"),
    "binary-frame-text": ([GOOD_META.encode()], ProtocolErrorFrame, "not an rtcxfer chunk"),
    "duplicate-meta": (["+" + GOOD_META, GOOD_META], FileError, "already open"),
    "end-before-all-bytes": (
        ["+" + GOOD_META, chunk(TID, 0, PAYLOAD[:4]), f"FILE_END::{TID}"],
        FileError,
        "received 4 of 10",
    ),
    "end-unknown-transfer": ([f"FILE_END::{TID}"], FileError, "unknown transfer"),
    "end-wrong-hash": (
        ["+" + meta_text(size=len(PAYLOAD)), chunk(TID, 0, PAYLOAD), f"FILE_END::{TID}"],
        FileError,
        "SHA-256",
    ),
    "stray-accept": ([f"FILE_ACCEPT::{TID}::0"], ProtocolErrorFrame, "unexpected FILE_ACCEPT"),
    "stray-ack": ([f"FILE_ACK::{TID}::{SHA_ZERO}"], ProtocolErrorFrame, "unexpected FILE_ACK"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_an_error_and_the_receiver_keeps_serving(tmp_path, case):
    messages, reply_type, reason = BAD_INPUT[case]

    async def main():
        async with rig(tmp_path, max_file_bytes=MiB) as r:
            raw = r.peers.client
            link = raw.link
            reply = None
            for index, message in enumerate(messages):
                last = index == len(messages) - 1
                accepted = isinstance(message, str) and message.startswith("+")
                predicate = (
                    (lambda f: isinstance(f, FileAccept))
                    if accepted
                    else (lambda f: isinstance(f, (FileError, ProtocolErrorFrame)))
                )
                waiter = asyncio.create_task(link.wait_for(predicate, STEP)) if accepted or last else None
                await asyncio.sleep(0)  # the waiter is registered before anything can answer
                if isinstance(message, bytes):
                    await raw.channel.send_bytes(message)
                else:
                    await raw.channel.send_text(message.lstrip("+"))
                if waiter is not None:
                    reply = await waiter
            assert isinstance(reply, reply_type), reply
            text = reply.reason
            assert reason in text, text
            # Nothing of the refused transfer is left behind, nothing escaped.
            assert files_under(r.incoming["worker"]) == []
            assert not (tmp_path / "x").exists() and not (tmp_path / "x.bin").exists()
            # The receiver keeps serving on the same session.
            source = tmp_path / "ok.bin"
            sha = make_file(source, 100_000)
            delivery = await r.transports["client"].send_file(source, "ok.bin")
            assert delivery.sha256 == sha == sha256_of(r.incoming["worker"] / "ok.bin")
            assert r.peers.worker.engine.open_transfers == {}

    run_async(main())


def test_receiver_asking_for_an_offset_beyond_the_file_is_refused_by_the_sender(tmp_path):
    source = tmp_path / "s.bin"
    make_file(source, 1000)

    async def main():
        async with rig(tmp_path, roles=("client",)) as r:
            worker = r.peers.worker.link
            metas = asyncio.create_task(worker.wait_for(lambda f: isinstance(f, FileMeta), STEP))
            sending = asyncio.create_task(r.transports["client"].send_file(source, "s.bin"))
            meta = await metas
            errors = asyncio.create_task(worker.wait_for(lambda f: isinstance(f, FileError), STEP))
            await worker.send(FileAccept(transfer_id=meta.transfer_id, offset=1001))
            with pytest.raises(TransferError, match="beyond"):
                await asyncio.wait_for(sending, STEP)
            assert (await errors).transfer_id == meta.transfer_id
            assert r.peers.client.engine.open_transfers == {}

    run_async(main())


def test_sender_stops_when_the_receiver_abandons_mid_file(tmp_path):
    source = tmp_path / "s.bin"
    size = 4 * MiB
    make_file(source, size)

    async def main():
        async with rig(tmp_path, roles=("client",)) as r:
            worker = r.peers.worker
            metas = asyncio.create_task(worker.link.wait_for(lambda f: isinstance(f, FileMeta), STEP))
            sending = asyncio.create_task(r.transports["client"].send_file(source, "s.bin"))
            meta = await metas
            await worker.link.send(FileAccept(transfer_id=meta.transfer_id, offset=0))
            await worker.link.send(FileError(transfer_id=meta.transfer_id, reason="disk on fire"))
            with pytest.raises(TransferError, match="disk on fire"):
                await asyncio.wait_for(sending, STEP)
            report = r.transports["client"].reports[-1]
            assert report.bytes_sent < size

    run_async(main())


def test_sending_an_unsafe_name_is_refused_locally(tmp_path):
    source = tmp_path / "s.bin"
    make_file(source, 10)

    async def main():
        async with rig(tmp_path) as r:
            with pytest.raises(LocalProtocolError):
                await r.transports["client"].send_file(source, "../s.bin")

    run_async(main())


# --- several transfers on one channel -------------------------------------------------------


def test_concurrent_transfers_share_one_channel_both_ways(tmp_path):
    sizes = {"a.bin": 2 * MiB + 1, "b.bin": MiB, "c/d.bin": 1, "e.bin": 0}
    shas = {}
    for name, size in sizes.items():
        shas[name] = make_file(tmp_path / "src" / name, size)
    back = tmp_path / "src" / "back.bin"
    back_sha = make_file(back, MiB + 5)

    async def main():
        async with rig(tmp_path) as r:
            # Small chunks make the transfers interleave on the wire.
            r.transports["client"].context.options["rtc-chunked"]["chunk_size"] = 16 * 1024
            sends = [r.transports["client"].send_file(tmp_path / "src" / name, name) for name in sizes]
            sends.append(r.transports["worker"].send_file(back, "back.bin"))
            return r, await asyncio.gather(*sends)

    r, deliveries = run_async(main())
    assert [d.sha256 for d in deliveries] == [*shas.values(), back_sha]
    for name, sha in shas.items():
        assert sha256_of(r.incoming["worker"] / name) == sha
    assert sha256_of(r.incoming["client"] / "back.bin") == back_sha
    assert files_under(r.incoming["worker"]) == sorted(sizes)
    assert sorted(f.name for f in r.received["worker"]) == sorted(sizes)


def test_completed_file_of_the_same_name_is_replaced(tmp_path):
    first = tmp_path / "one.bin"
    second = tmp_path / "two.bin"
    make_file(first, 5000)
    sha2 = make_file(second, 7000)

    async def main():
        async with rig(tmp_path) as r:
            await r.transports["client"].send_file(first, "same.bin")
            await r.transports["client"].send_file(second, "same.bin")
        return r

    r = run_async(main())
    assert sha256_of(r.incoming["worker"] / "same.bin") == sha2
    assert files_under(r.incoming["worker"]) == ["same.bin"]


def test_cancelled_send_closes_the_transfer_on_both_sides_and_a_retry_works(tmp_path):
    source = tmp_path / "s.bin"
    size = 6 * MiB
    sha = make_file(source, size)

    async def main():
        async with rig(tmp_path) as r:
            sender = r.transports["client"]
            started = asyncio.Event()
            sender.context.options["rtc-chunked"]["progress"] = lambda name, done, total: done and started.set()
            sending = asyncio.create_task(sender.send_file(source, "s.bin"))
            await asyncio.wait_for(started.wait(), STEP)
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            # The receiver hears FILE_ERROR, closes the transfer and keeps its partial: a sender
            # stopped by its user (Ctrl-C) comes back with the same file.
            for _ in range(200):
                if not r.peers.worker.engine.open_transfers:
                    break
                await asyncio.sleep(0.05)
            assert r.peers.worker.engine.open_transfers == {}
            kept = [name for name in files_under(r.incoming["worker"]) if name.endswith(".part")]
            assert len(kept) == 1 and files_under(r.incoming["worker"]) == kept
            del sender.context.options["rtc-chunked"]["progress"]
            delivery = await sender.send_file(source, "s.bin")
        return r, delivery

    r, delivery = run_async(main())
    assert delivery.sha256 == sha == sha256_of(r.incoming["worker"] / "s.bin")
    resumed = r.transports["client"].reports[-1]
    assert 0 < resumed.offset < size and resumed.bytes_sent == size - resumed.offset


def test_a_new_session_takes_a_partial_over_from_one_that_has_not_noticed_its_peer_left(tmp_path):
    size = 2 * MiB
    source = tmp_path / "f.bin"
    sha = make_file(source, size)
    content = source.read_bytes()
    tid = transfer_id_for("client", "f.bin", size, sha)
    held = 3 * DEFAULT_CHUNK_SIZE

    async def main():
        async with SignalingServer("127.0.0.1", 0) as server:
            # Session 1: a raw sender opens the transfer, sends three chunks and goes quiet.
            async with rig(tmp_path, server=server, roles=("worker",)) as old:
                raw = old.peers.client
                accepted = asyncio.create_task(raw.link.wait_for(lambda f: isinstance(f, FileAccept), STEP))
                await asyncio.sleep(0)
                await raw.link.send(FileMeta(tid, "f.bin", size, sha, DEFAULT_CHUNK_SIZE))
                assert (await accepted).offset == 0
                for offset in range(0, held, DEFAULT_CHUNK_SIZE):
                    await raw.channel.send_bytes(chunk(tid, offset, content[offset : offset + DEFAULT_CHUNK_SIZE]))
                for _ in range(200):  # until the receiver has written them
                    if old.transports["worker"]._incoming[tid].received == held:
                        break
                    await asyncio.sleep(0.05)

                # Session 2, while session 1 is still up: the same file resumes where it stopped.
                async with rig(tmp_path, server=server) as new:
                    delivery = await new.transports["client"].send_file(source, "f.bin")
                    report = new.transports["client"].reports[-1]

                # Session 1's sender wakes up: its transfer now belongs to the other session.
                refused = asyncio.create_task(raw.link.wait_for(lambda f: isinstance(f, FileError), STEP))
                await asyncio.sleep(0)
                await raw.channel.send_bytes(chunk(tid, held, content[held : held + 10]))
                error = await refused
            return delivery, report, error

    delivery, report, error = run_async(main())
    assert report.offset == held and report.bytes_sent == size - held
    assert delivery.sha256 == sha == sha256_of(tmp_path / "worker-incoming" / "f.bin")
    assert "another session" in error.reason
    assert files_under(tmp_path / "worker-incoming") == ["f.bin"]
