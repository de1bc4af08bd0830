"""Integration tests of rtcxfer.net.peer: two real aiortc peers on 127.0.0.1 in one process.

pytest-asyncio is not used: each test runs its coroutine with ``asyncio.run`` under an overall
``wait_for`` bound, and the awaits that could block (recv, opening) carry their own bound, so a
failure reports where it stuck instead of hanging.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from pathlib import Path

import aioice.ice
import aiortc.rtcsctptransport
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from rtcxfer.net import aiortc_internals
from rtcxfer.net.aiortc_internals import (
    ATTRIBUTE,
    MAX_PACKET_SIZE,
    SACK_DELAY,
    SOCKET_RECEIVE_BUFFER,
    STOCK_PACKET_SIZE,
    PacketSizer,
    UnsupportedAiortcError,
    host_restriction_unsupported_reason,
    remote_packet_size,
    restrict_host_candidates,
    tuning_supported,
    tuning_unsupported_reason,
)
from rtcxfer.net.peer import (
    CHANNEL_LABEL,
    DEFAULT_HIGH_WATERMARK,
    DataChannel,
    PeerConnection,
    PeerOptions,
    connect_pair_in_process,
    connect_via,
    install_uvloop_if_available,
    signaling_adapter,
    strip_non_loopback_candidates,
)
from rtcxfer.net.signaling.messages import PeerJoined, PeerLeft, Relay
from rtcxfer.protocol.errors import (
    ConnectionClosedError,
    LocalProtocolError,
    RemoteProtocolError,
)
from rtcxfer.testing import run_async

STEP = 10.0  # seconds any single await may take before the test fails

# The SCTP packet size mechanism rewrites aiortc internals (those of 1.9 to 1.16); an aiortc whose
# internals differ runs at stock size (test_an_aiortc_without_the_tuned_internals_runs_stock_packets_and_says_why).
needs_sctp_tuning = pytest.mark.skipif(
    not tuning_supported(), reason=f"no large SCTP packets on this aiortc: {tuning_unsupported_reason()}"
)


async def recv(channel: DataChannel, timeout: float = STEP):
    return await asyncio.wait_for(channel.recv(), timeout)


def candidate_addresses(sdp: str) -> list[str]:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


# --------------------------------------------------------------------------- loopback mode


def test_default_options_use_no_ice_server():
    assert PeerOptions().loopback_only is True
    assert PeerOptions().rtc_configuration().iceServers == []


def test_ice_servers_refused_in_loopback_mode_and_kept_otherwise():
    with pytest.raises(ValueError):
        PeerOptions(ice_servers=("stun:127.0.0.1:3478",))
    options = PeerOptions(loopback_only=False, ice_servers=["stun:127.0.0.1:3478"])
    servers = options.rtc_configuration().iceServers
    assert [s.urls for s in servers] == [["stun:127.0.0.1:3478"]]
    assert all(isinstance(s, RTCIceServer) for s in servers)
    assert PeerOptions(loopback_only=False).rtc_configuration().iceServers == []


def test_this_aioice_can_restrict_one_connection():
    assert host_restriction_unsupported_reason() is None


def test_loopback_and_any_interface_peers_in_one_process_each_gather_what_they_asked_for():
    """The restriction is per connection: any-interface peers made before and after
    loopback-only ones (offerer and answerer), and a plain aiortc peer, still gather on every
    interface aioice finds, and aioice's module is left as it was. The any-interface peers only
    gather (no STUN server: nothing is sent) and never connect."""
    real_host_addresses = aioice.ice.get_host_addresses
    everywhere = set(real_host_addresses(use_ipv4=True, use_ipv6=True))

    async def any_interface_offer() -> None:
        peer = PeerConnection(PeerOptions(loopback_only=False))
        try:
            sdp = await peer.create_offer()
            assert peer.channel is not None and not peer.channel.loopback_only
            assert set(peer.channel.local_host_addresses()) == everywhere == set(candidate_addresses(sdp))
        finally:
            await peer.close()

    async def loopback_pair() -> None:
        offerer, answerer = PeerConnection(), PeerConnection()
        try:
            offer = await offerer.create_offer()
            answer = await answerer.accept_offer(offer)
            for sdp in (offer, answer):
                assert set(candidate_addresses(sdp)) == {"127.0.0.1"}
            # (The answerer's channel exists once the peers connect; they need not, here.)
            assert offerer.channel is not None and offerer.channel.loopback_only
            assert offerer.channel.local_host_addresses() == ("127.0.0.1",)
        finally:
            await asyncio.gather(offerer.close(), answerer.close())

    async def stock_offer() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.createDataChannel(CHANNEL_LABEL)
            await pc.setLocalDescription(await pc.createOffer())
            assert set(candidate_addresses(pc.localDescription.sdp)) == everywhere
        finally:
            await pc.close()

    async def main():
        await any_interface_offer()
        await loopback_pair()
        await any_interface_offer()
        await stock_offer()
        await loopback_pair()
        assert aioice.ice.get_host_addresses is real_host_addresses

    assert "127.0.0.1" not in everywhere  # aioice's own gathering skips loopback
    run_async(main())


def test_restricting_twice_is_harmless_and_after_gathering_refused():
    async def main():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.createDataChannel(CHANNEL_LABEL)
            restrict_host_candidates(pc, ["127.0.0.1"])
            restrict_host_candidates(pc, ["127.0.0.1"])
            await pc.setLocalDescription(await pc.createOffer())
            assert set(candidate_addresses(pc.localDescription.sdp)) == {"127.0.0.1"}
            restrict_host_candidates(pc, ["127.0.0.1"])  # the same: nothing to do
            with pytest.raises(UnsupportedAiortcError, match="gathered them already"):
                restrict_host_candidates(pc, ["127.0.0.1", "::1"])
        finally:
            await pc.close()

    run_async(main())


def test_an_aioice_that_cannot_be_restricted_per_connection_gets_no_loopback_peer(monkeypatch):
    """Fail closed: no loopback-only peer at all (and nothing gathered) rather than one that
    gathers on every interface."""

    async def gather_candidates(self) -> None:  # reads no module global: cannot be redirected
        raise AssertionError("a loopback-only peer gathered")

    monkeypatch.setattr(aioice.ice.Connection, "gather_candidates", gather_candidates)
    reason = host_restriction_unsupported_reason()
    assert reason is not None and "get_host_addresses" in reason
    with pytest.raises(UnsupportedAiortcError, match="get_host_addresses"):
        PeerConnection()


def test_a_loopback_peer_whose_restriction_failed_sends_no_sdp(monkeypatch):
    """The check after gathering: if aioice gathered elsewhere all the same, the offer never
    leaves and the connection is closed."""
    if not set(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)):
        pytest.skip("this machine has no address but loopback")
    monkeypatch.setattr(aiortc_internals, "restrict_host_candidates", lambda pc, addresses: None)

    async def main():
        peer = PeerConnection()
        with pytest.raises(UnsupportedAiortcError, match="loopback-only, yet"):
            await peer.create_offer()
        assert peer.connection_state == "closed"

    run_async(main())


def test_remote_candidates_off_loopback_are_dropped():
    sdp = (
        "v=0\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"
        "a=candidate:2 1 udp 2130706431 192.0.2.7 5000 typ host\r\n"
        "a=candidate:3 1 udp 2130706431 0b1c2d3e-aaaa.local 5000 typ host\r\n"
        "a=candidate:4 1 udp 1694498815 203.0.113.9 6000 typ srflx raddr 127.0.0.1 rport 5000\r\n"
        "a=end-of-candidates\r\n"
    )
    kept = strip_non_loopback_candidates(sdp)
    assert candidate_addresses(kept) == ["127.0.0.1"]
    assert kept.endswith("a=end-of-candidates\r\n")


def test_local_sdp_candidates_are_all_loopback():
    async def main():
        offerer, answerer = PeerConnection(), PeerConnection()
        try:
            offer = await offerer.create_offer()
            answer = await answerer.accept_offer(offer)
            await offerer.accept_answer(answer)
            for sdp in (offer, answer, offerer.local_sdp, answerer.local_sdp):
                addresses = candidate_addresses(sdp)
                assert addresses, "aiortc should put its candidates in the SDP"
                assert set(addresses) == {"127.0.0.1"}
            await asyncio.gather(offerer.wait_channel_open(STEP), answerer.wait_channel_open(STEP))
        finally:
            await asyncio.gather(offerer.close(), answerer.close())

    run_async(main())


def test_an_open_channel_tells_its_connection():
    """What the direct transport asks of a channel, and the DTLS certificates both sides saw."""

    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            for channel, remote in ((a, close.answerer), (b, close.offerer)):
                assert channel.loopback_only
                assert channel.local_host_addresses() == ("127.0.0.1",)
                assert channel.remote_candidate_addresses() == frozenset({"127.0.0.1"})
                # What the remote advertises: 262144 from aiortc 1.16 (aiortc 1.9 says 65536).
                advertised = [line for line in remote.local_sdp.splitlines() if line.startswith("a=max-message-size:")]
                assert [f"a=max-message-size:{channel.max_message_size}"] == advertised
            a_local, a_remote = a.dtls_fingerprints()
            b_local, b_remote = b.dtls_fingerprints()
            assert (a_local, a_remote) == (b_remote, b_local) and a_local != b_local
            offer_fingerprints = {
                line.split()[1].upper()
                for line in close.offerer.local_sdp.splitlines()
                if line.startswith("a=fingerprint:sha-256 ")
            }
            assert offer_fingerprints == {a_local}
        finally:
            await close()

    run_async(main())


# --------------------------------------------------------------------------- messages


def test_text_and_binary_both_ways_in_order():
    messages = []
    for i in range(100):
        messages.append(f"text {i} ünïcødé")
        messages.append(os.urandom(i * 37))
    # aiortc sends empty messages with payload protocol ids of their own.
    messages += ["", b""]

    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            assert a.label == b.label == CHANNEL_LABEL
            for sender, receiver in ((a, b), (b, a)):
                for message in messages:
                    if isinstance(message, str):
                        await sender.send_text(message)
                    else:
                        await sender.send_bytes(message)
                received = [await recv(receiver) for _ in messages]
                assert received == messages
                assert [type(m) for m in received] == [type(m) for m in messages]
        finally:
            await close()

    run_async(main())


def test_memoryview_and_bytearray_are_sent():
    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            payload = bytes(range(256)) * 10
            await a.send_bytes(memoryview(payload)[10:1000])
            await a.send_bytes(bytearray(b"abc"))
            assert await recv(b) == payload[10:1000]
            assert await recv(b) == b"abc"
        finally:
            await close()

    run_async(main())


def test_message_sent_right_after_open_is_not_lost():
    async def main():
        offerer, answerer = PeerConnection(), PeerConnection()
        try:
            await offerer.accept_answer(await answerer.accept_offer(await offerer.create_offer()))
            # Only the offerer waits: the answerer's application is "busy" and asks for its
            # channel late, after the messages have arrived.
            channel = await offerer.wait_channel_open(STEP)
            await channel.send_text("first")
            await channel.send_bytes(b"second")
            await channel.drain(STEP)
            await asyncio.sleep(0.3)
            late = await answerer.wait_channel_open(STEP)
            assert await recv(late) == "first"
            assert await recv(late) == b"second"
        finally:
            await asyncio.gather(offerer.close(), answerer.close())

    run_async(main())


def test_large_transfer_with_backpressure():
    total = 32 * 1024 * 1024
    chunk_size = 64 * 1024

    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            assert a.high_watermark == DEFAULT_HIGH_WATERMARK
            block = os.urandom(chunk_size)
            sent_digest = hashlib.sha256()
            peak = 0

            async def send():
                nonlocal peak
                for i in range(total // chunk_size):
                    # Vary the chunks cheaply so reordering or duplication would be detected.
                    chunk = i.to_bytes(8, "big") + block[8:]
                    sent_digest.update(chunk)
                    await a.send_bytes(chunk)
                    peak = max(peak, a.buffered_amount)

            async def receive():
                digest = hashlib.sha256()
                received = 0
                while received < total:
                    chunk = await recv(b)
                    assert isinstance(chunk, bytes)
                    digest.update(chunk)
                    received += len(chunk)
                assert received == total
                return digest.hexdigest()

            _, received_digest = await asyncio.gather(send(), receive())
            assert received_digest == sent_digest.hexdigest()
            assert peak <= a.high_watermark + chunk_size
            assert peak > a.high_watermark // 2, "backpressure never engaged"
            await a.drain(STEP)
            assert a.buffered_amount == 0
        finally:
            await close()

    run_async(main(), timeout=45.0)


def test_oversize_message_is_refused_before_sending():
    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            limit = a.max_message_size
            # The remote's a=max-message-size: 262144 for aiortc >= 1.16, 65536 before.
            assert limit in (65536, 262144)
            with pytest.raises(LocalProtocolError):
                await a.send_bytes(b"x" * (limit + 1))
            with pytest.raises(LocalProtocolError):
                await a.send_bytes(memoryview(b"x" * (limit + 1)))
            with pytest.raises(LocalProtocolError):
                # Fits in characters, not in UTF-8 bytes.
                await a.send_text("é" * (limit // 2 + 1))
            # The channel is still usable, and a message of exactly the limit goes through.
            await a.send_bytes(b"y" * limit)
            assert await recv(b) == b"y" * limit
        finally:
            await close()

    run_async(main())


# --------------------------------------------------------------------------- closing


def test_closing_one_peer_wakes_the_other():
    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            await a.send_text("before close")
            await a.drain(STEP)
            assert await recv(b) == "before close"
            waiting = asyncio.ensure_future(b.recv())
            await asyncio.sleep(0.05)
            await close.offerer.close()
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(waiting, STEP)
            with pytest.raises(ConnectionClosedError):
                await recv(b)  # and every later call
            assert a.closed and b.closed
            with pytest.raises(ConnectionClosedError):
                await a.send_text("after close")
            with pytest.raises(ConnectionClosedError):
                await b.send_bytes(b"after close")
        finally:
            await close()

    run_async(main())


def test_queued_messages_are_delivered_before_the_close_error():
    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            for i in range(5):
                await a.send_text(str(i))
            await a.drain(STEP)
            # Let them all arrive without reading, then close the receiving side's peer.
            await asyncio.sleep(0.2)
            await close.answerer.close()
            assert [await recv(b) for _ in range(5)] == [str(i) for i in range(5)]
            with pytest.raises(ConnectionClosedError):
                await recv(b)
        finally:
            await close()

    run_async(main())


def test_channel_close_wakes_a_blocked_sender():
    async def main():
        options = PeerOptions(high_watermark=64 * 1024)
        a, _b, close = await connect_pair_in_process(options)
        try:
            block = b"z" * 60_000

            async def flood():
                while True:
                    await a.send_bytes(block)

            sender = asyncio.ensure_future(flood())
            await asyncio.sleep(0.1)
            assert not sender.done()
            a.close()
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(sender, STEP)
        finally:
            await close()

    run_async(main())


def test_connection_failure_wakes_the_waiters():
    async def main():
        async with PeerConnection() as offerer, PeerConnection() as answerer:
            answer = await answerer.accept_offer(await offerer.create_offer())
            # Loopback mode drops candidates that are not 127.0.0.1, so ICE has no pair
            # to try and fails at once (and nothing is ever sent to 192.0.2.1).
            await offerer.accept_answer(answer.replace(" 127.0.0.1 ", " 192.0.2.1 "))
            with pytest.raises(ConnectionClosedError):
                await offerer.wait_channel_open(STEP)
            assert offerer.connection_state == "failed"
            assert offerer.channel is not None and offerer.channel.closed
            with pytest.raises(ConnectionClosedError):
                await recv(offerer.channel)

    run_async(main())


def test_cancelling_a_close_while_aiortc_closes_by_itself_leaves_no_failed_task(caplog):
    """The client leaves: aiortc starts closing the worker's connection in a task of its own,
    the worker's close() joins it, and the worker's session task is then cancelled (peer-left).
    The cancel must not reach aiortc's internal future, or aiortc's task fails with
    ``InvalidStateError`` and asyncio prints "Task exception was never retrieved"."""
    import gc
    import logging

    async def scenario():
        for _ in range(3):
            _, _, close = await connect_pair_in_process()
            await close.offerer.close()  # the client is gone
            aiortc_peer = close.answerer._pc
            for _ in range(1000):  # until aiortc's own close task has begun (its private flag)
                if aiortc_peer._RTCPeerConnection__isClosed:
                    break
                await asyncio.sleep(0.001)
            closing = asyncio.create_task(close.answerer.close())
            await asyncio.sleep(0)
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
            await asyncio.sleep(0.3)
            gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_async(scenario())
        gc.collect()
    assert not [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


# --------------------------------------------------------------------------- signaling glue


def test_connect_via_queues():
    async def main():
        to_answerer: asyncio.Queue = asyncio.Queue()
        to_offerer: asyncio.Queue = asyncio.Queue()
        (pc_a, a), (pc_b, b) = await asyncio.gather(
            connect_via(to_answerer.put, to_offerer.get, "offerer", timeout=STEP),
            connect_via(to_offerer.put, to_answerer.get, "answerer", timeout=STEP),
        )
        try:
            await a.send_text("ping")
            assert await recv(b) == "ping"
            await b.send_bytes(b"pong")
            assert await recv(a) == b"pong"
        finally:
            await asyncio.gather(pc_a.close(), pc_b.close())

    run_async(main())


def test_connect_via_rejects_wrong_message():
    async def main():
        async def send(payload):
            pass

        async def receive():
            return {"kind": "offer", "sdp": "v=0"}  # an offerer expects an answer

        with pytest.raises(RemoteProtocolError):
            await connect_via(send, receive, "offerer", timeout=STEP)
        with pytest.raises(ValueError):
            await connect_via(send, receive, "observer", timeout=STEP)

    run_async(main())


class FakeSignalingClient:
    """Duck-types SignalingClient: relays wrapped in events, peer events interleaved."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.other: FakeSignalingClient | None = None

    async def send_to(self, peer_id: str, payload) -> None:
        assert self.other is not None and peer_id == self.other.peer_id
        await self.other.inbox.put(Relay(self.peer_id, payload))

    async def receive(self):
        return await self.inbox.get()


def test_connect_via_signaling_adapter():
    async def main():
        alice, bob = FakeSignalingClient("alice"), FakeSignalingClient("bob")
        alice.other, bob.other = bob, alice
        # Noise the adapter must skip: a join and a relay from a stranger.
        await bob.inbox.put(PeerJoined("alice", "client"))
        await bob.inbox.put(Relay("eve", {"kind": "answer"}))
        (pc_a, a), (pc_b, b) = await asyncio.gather(
            connect_via(*signaling_adapter(alice, "bob"), "offerer", timeout=STEP),
            connect_via(*signaling_adapter(bob, "alice"), "answerer", timeout=STEP),
        )
        try:
            await a.send_text("hello bob")
            assert await recv(b) == "hello bob"
        finally:
            await asyncio.gather(pc_a.close(), pc_b.close())

        carol = FakeSignalingClient("carol")
        await carol.inbox.put(PeerLeft("dave", "worker"))
        _, receive = signaling_adapter(carol, "dave")
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(receive(), STEP)

    run_async(main())


# --------------------------------------------------------------------------- uvloop


def test_uvloop_policy_and_pair_under_uvloop():
    uvloop = pytest.importorskip("uvloop")
    previous = asyncio.get_event_loop_policy()
    try:
        assert install_uvloop_if_available() is True
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)

        async def main():
            assert "uvloop" in type(asyncio.get_running_loop()).__module__
            a, b, close = await connect_pair_in_process()
            try:
                await a.send_bytes(b"fast")
                assert await recv(b) == b"fast"
            finally:
                await close()

        run_async(main())
    finally:
        asyncio.set_event_loop_policy(previous)


# --------------------------------------------------------------------------- loopback SCTP tuning

STOCK_USERDATA = aiortc.rtcsctptransport.USERDATA_MAX_LENGTH


@needs_sctp_tuning
def test_large_packets_are_offered_in_both_modes_unless_disabled():
    async def main():
        peers = [PeerConnection(), PeerConnection(PeerOptions(loopback_only=False))]
        stock = PeerConnection(PeerOptions(large_packets=False))
        try:
            line = f"a={ATTRIBUTE}:{MAX_PACKET_SIZE}"
            for peer in peers:
                sdp = await peer.create_offer()
                assert sdp.count(line) == 1
                assert sdp.index("m=application") < sdp.index(line)
            assert ATTRIBUTE not in await stock.create_offer()
        finally:
            await asyncio.gather(*(peer.close() for peer in peers), stock.close())

    run_async(main())


def test_remote_packet_size_reads_only_a_sane_attribute():
    assert remote_packet_size(f"v=0\r\na={ATTRIBUTE}:16384\r\n") == 16384
    assert remote_packet_size(f"a={ATTRIBUTE}:abc") is None
    assert remote_packet_size(f"a={ATTRIBUTE}:100") is None
    assert remote_packet_size("v=0\r\n") is None


def test_malformed_pieces_from_the_peer_are_dropped():
    sizer = PacketSizer()
    header = b"\x00\x00rx"
    assert sizer._join(header) is None
    assert sizer._join(header + bytes(6)) is None  # count 0
    assert sizer._join(header + b"\x00\x00\x00\x01" + bytes([3, 2]) + b"x") is None  # index >= count
    first = header + b"\x00\x00\x00\x07" + bytes([0, 2]) + b"ab"
    second = header + b"\x00\x00\x00\x07" + bytes([1, 2]) + b"cd"
    assert sizer._join(first) is None
    assert sizer._join(second) == b"abcd"
    # Many unfinished packets: only the newest few are kept.
    for number in range(1000):
        sizer._join(header + number.to_bytes(4, "big") + bytes([0, 2]) + b"z")
    assert len(sizer._joining) <= 32


@given(st.lists(st.binary(max_size=64), max_size=80), st.integers(0, 3), st.integers(0, 80))
def test_pieces_from_a_hostile_peer_never_raise_and_stay_bounded(bodies, number, count):
    sizer = PacketSizer()
    for index, body in enumerate(bodies):
        piece = b"\x00\x00rx" + number.to_bytes(4, "big") + bytes([index % 256, count]) + body
        joined = sizer._join(piece)
        assert joined is None or len(joined) <= 65536
    assert len(sizer._joining) <= 32
    assert all(len(parts) <= 64 for parts in sizer._joining.values())


def _send_and_check(total: int = 2 * 1024 * 1024, size: int = 65536):
    async def transfer(a: DataChannel, b: DataChannel) -> None:
        payload = os.urandom(total)
        pieces = [payload[i : i + size] for i in range(0, total, size)]

        async def send():
            for piece in pieces:
                await a.send_bytes(piece)

        async def receive():
            return [await recv(b) for _ in pieces]

        _, received = await asyncio.gather(send(), receive())
        assert b"".join(received) == payload

    return transfer


@needs_sctp_tuning
def test_two_rtcxfer_peers_probe_and_use_large_sctp_packets_on_loopback():
    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            for peer in (close.offerer, close.answerer):
                settled = await peer.packet_size_settled(STEP)
                assert settled.size == settled.datagram == MAX_PACKET_SIZE
                assert settled.reason == "path probe confirmed"
            sctp = close.offerer._pc.sctp
            assert sctp._send.__globals__["USERDATA_MAX_LENGTH"] > STOCK_USERDATA
            # Room for many 16 KiB datagrams: what we ask for, as far as rmem_max allows (Linux
            # reports twice the size asked for; aioice alone asks for 256 KiB).
            cap = int(Path("/proc/sys/net/core/rmem_max").read_text())
            for protocol in sctp.transport.transport._connection._protocols:
                udp = protocol.transport.get_extra_info("socket")
                assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * min(SOCKET_RECEIVE_BUFFER, cap)
            # Per connection: aiortc's module constant, used by every other peer, is untouched.
            assert aiortc.rtcsctptransport.USERDATA_MAX_LENGTH == STOCK_USERDATA
            await _send_and_check()(a, b)
            # Messages of many packets, up to what the peer takes (65536 bytes before aiortc 1.16).
            await _send_and_check(size=min(200_000, b.max_message_size or 200_000))(b, a)
            await a.send_text("after the bulk")
            assert await recv(b) == "after the bulk"
        finally:
            await close()

    run_async(main())


@needs_sctp_tuning
def test_two_rtcxfer_peers_acknowledge_every_second_packet_and_a_lone_one_soon():
    """RFC 9260 section 6.2: a SACK for at least every second packet, none later than 200 ms; aiortc
    sends one per packet, and between two rtcxfer peers half as many cross (a gap or a duplicate
    is answered at once)."""

    async def main():
        a, b, close = await connect_pair_in_process()
        try:
            await close.answerer.packet_size_settled(STEP)
            receiver = close.answerer._sizer
            before = (receiver.packets_to_acknowledge, receiver.sacks_sent)
            await _send_and_check(total=4 * 1024 * 1024)(a, b)
            packets = receiver.packets_to_acknowledge - before[0]
            sacks = receiver.sacks_sent - before[1]
            assert packets >= 4 * 1024 * 1024 // MAX_PACKET_SIZE, packets
            assert sacks <= packets // 2 + 8, (sacks, packets)
            # A lone packet is acknowledged too, within SACK_DELAY (not 200 ms).
            await asyncio.sleep(2 * SACK_DELAY)
            sent = receiver.sacks_sent
            await a.send_text("one packet")
            assert await recv(b) == "one packet"
            deadline = time.monotonic() + STEP
            while receiver.sacks_sent == sent and time.monotonic() < deadline:
                await asyncio.sleep(SACK_DELAY / 4)
            assert receiver.sacks_sent == sent + 1
        finally:
            await close()

    run_async(main())


def test_large_packets_are_off_unless_both_peers_offer_them():
    async def main():
        fast = PeerConnection()
        stock = PeerConnection(PeerOptions(large_packets=False))
        try:
            answer = await stock.accept_offer(await fast.create_offer())
            await fast.accept_answer(answer)
            a, b = await asyncio.gather(fast.wait_channel_open(STEP), stock.wait_channel_open(STEP))
            assert (await fast.packet_size_settled(STEP)).size == STOCK_PACKET_SIZE
            # An older aiortc never offers large packets (see the test below): ours is stock too.
            ours_is_stock = "stock WebRTC endpoint" if tuning_supported() else "large packets off: in aiortc"
            assert ours_is_stock in fast.packet_size.reason
            assert stock.packet_size.size == STOCK_PACKET_SIZE
            assert "disabled" in stock.packet_size.reason
            assert "USERDATA_MAX_LENGTH" in vars(type(fast._pc.sctp))["_send"].__code__.co_names
            assert "_send" not in vars(fast._pc.sctp)
            await _send_and_check()(a, b)
            await _send_and_check()(b, a)
        finally:
            await asyncio.gather(fast.close(), stock.close())

    run_async(main())


def test_an_aiortc_without_the_tuned_internals_runs_stock_packets_and_says_why(monkeypatch):
    """On an aiortc whose internals differ from the ones the tuning rewrites (here a method that
    no longer reads USERDATA_MAX_LENGTH stands for a future aiortc), two rtcxfer peers offer
    nothing, rewrite nothing, log why, and still work."""
    sctp_class = aiortc.rtcsctptransport.RTCSctpTransport
    t3_expired = sctp_class._t3_expired

    def _t3_expired(self):
        t3_expired(self)

    monkeypatch.setattr(sctp_class, "_t3_expired", _t3_expired)
    why = tuning_unsupported_reason()
    assert why is not None
    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")

    async def main():
        offerer, answerer = PeerConnection(), PeerConnection()
        try:
            offer = await offerer.create_offer()
            answer = await answerer.accept_offer(offer)
            assert ATTRIBUTE not in offer and ATTRIBUTE not in answer
            await offerer.accept_answer(answer)
            a, b = await asyncio.gather(offerer.wait_channel_open(STEP), answerer.wait_channel_open(STEP))
            for peer in (offerer, answerer):
                settled = await peer.packet_size_settled(STEP)
                assert settled.size == settled.datagram == STOCK_PACKET_SIZE
                assert f"large packets off: in aiortc {aiortc.__version__}, {why}" in settled.reason
                assert "_send" not in vars(peer._pc.sctp) and "_recv_next" not in vars(peer._pc.sctp.transport)
            await _send_and_check(total=512 * 1024)(a, b)
            await _send_and_check(total=512 * 1024)(b, a)
        finally:
            await asyncio.gather(offerer.close(), answerer.close())

    try:
        run_async(main())
    finally:
        logger.remove(handler)
    said = [line for line in lines if line.startswith(f"SCTP packets {STOCK_PACKET_SIZE} bytes (large packets off")]
    assert len(said) == 2, lines


@needs_sctp_tuning
def test_plain_aiortc_peer_interoperates_with_a_large_packet_peer():
    """A stock aiortc peer (no rtcxfer code) ignores the attribute; both keep 1160-byte
    packets, and large messages pass both ways."""

    async def main():
        ours = PeerConnection()
        theirs = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        opened = asyncio.get_running_loop().create_future()

        received: asyncio.Queue = asyncio.Queue()

        @theirs.on("datachannel")
        def on_datachannel(channel):
            channel.on("message", received.put_nowait)
            opened.set_result(channel)

        try:
            offer = await ours.create_offer()
            assert ATTRIBUTE in offer
            await theirs.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            # Its host candidates on 127.0.0.1 too (nothing else changes: its SCTP and DTLS stay stock).
            restrict_host_candidates(theirs, ["127.0.0.1"])
            await theirs.setLocalDescription(await theirs.createAnswer())
            await ours.accept_answer(theirs.localDescription.sdp)
            channel = await ours.wait_channel_open(STEP)
            raw = await asyncio.wait_for(opened, STEP)
            assert (await ours.packet_size_settled(STEP)).size == STOCK_PACKET_SIZE
            payload = os.urandom(1024 * 1024)
            for start in range(0, len(payload), 65536):
                await channel.send_bytes(payload[start : start + 65536])
            got = b""
            while len(got) < len(payload):
                got += await asyncio.wait_for(received.get(), STEP)
            assert got == payload
            raw.send(payload[:200_000])
            assert await recv(channel) == payload[:200_000]
        finally:
            await ours.close()
            await theirs.close()

    run_async(main())


def test_only_a_whole_echo_of_a_probe_confirms_its_size():
    from aiortc.rtcsctptransport import HeartbeatAckChunk

    from rtcxfer.net.aiortc_internals import _PROBE_TAG

    async def main():
        sizer = PacketSizer()
        future = asyncio.get_running_loop().create_future()
        nonce = b"n" * 8
        sizer._probes[nonce] = (4096, future)
        ack = HeartbeatAckChunk()
        ack.params = [(1, b"someone else's heartbeat")]
        assert sizer._probe_answered(ack) is False  # not ours: aiortc handles it
        ack.params = [(1, _PROBE_TAG + nonce)]  # ours, cut short on the way back
        assert sizer._probe_answered(ack) is True and not future.done()
        ack.params = [(1, (_PROBE_TAG + nonce).ljust(4096 - 20, b"\0"))]
        assert sizer._probe_answered(ack) is True and future.result() == 4096

    run_async(main())
