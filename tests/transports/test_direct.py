"""The direct transport: its listener against strangers, the pinned certificate, one-time tokens,
the role swap and the give-up when neither peer reaches the other, resume, and its record parser.

Everything here runs on 127.0.0.1 (two real aiortc peers through a real signaling server where a
session is needed). Unreachability is made real with a "black hole": a TCP socket that listens
but never answers, so a connection attempt waits as it would behind a firewall that drops
packets. Across two network namespaces with nftables the same cases run in
``tests/transports/test_direct_two_hosts.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.files import receiving as partial
from rtcxfer.net.peer import PeerConnection, PeerOptions, connect_pair_in_process
from rtcxfer.protocol.errors import IntegrityError, TransferError
from rtcxfer.testing.contract import _wait_for_received, contract_pair, make_file, run_async, sha256_of
from rtcxfer.transport.base import TransportContext
from rtcxfer.transport.host import PluginHost
from rtcxfer.transports import direct, direct_tls
from rtcxfer.transports.direct import listen_addresses, parse_meta, reachable_addresses
from rtcxfer.transports.direct_tls import (
    DATA,
    END,
    META,
    TOKEN_ACCEPTED,
    DirectOffer,
    Listener,
    parse_record_header,
)
from rtcxfer.worker.legacy_session import ReplayChannel

MiB = 1024 * 1024
HOST = PluginHost(autoload=False)


def contexts(tmp_path: Path, **options) -> tuple[TransportContext, TransportContext]:
    return (
        TransportContext("client", tmp_path / "client-in", options={"direct": dict(options)}),
        TransportContext("worker", tmp_path / "worker-in", options={"direct": dict(options)}),
    )


def tls_stranger(port: int, timeout: float = 5.0) -> ssl.SSLSocket:
    """A client that completes TLS with the listener (trusting anything) and sends nothing yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(raw)


def answer_of(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the listener sends until it closes (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data


def is_at_most_a_tls_alert(data: bytes) -> bool:
    """Nothing, or TLS records of type alert (21) / handshake (22): never application data."""
    while data:
        if len(data) < 5 or data[0] not in (21, 22):
            return False
        data = data[5 + int.from_bytes(data[3:5], "big") :]
    return True


# --- the record parser, fuzzed --------------------------------------------------------------


@given(st.binary(max_size=512))
def test_any_meta_bytes_parse_or_raise_transfer_error(payload):
    try:
        meta = parse_meta(payload)
    except TransferError:
        return
    assert isinstance(meta.name, str) and meta.size >= 0


@given(
    st.dictionaries(
        st.sampled_from(["transfer_id", "name", "size", "sha256", "extra"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70), st.lists(st.integers(), max_size=2)),
    )
)
def test_any_meta_object_parses_or_raises_transfer_error(fields):
    try:
        meta = parse_meta(json.dumps(fields).encode())
    except TransferError:
        return
    assert set(fields) == {"transfer_id", "name", "size"}
    assert meta.size == fields["size"] and not isinstance(fields["size"], bool)


@given(st.binary(min_size=9, max_size=9))
def test_any_record_header_parses_within_limits_or_raises(header):
    try:
        kind, length = parse_record_header(header, (DATA, END), 4 * MiB)
    except TransferError:
        return
    assert kind in (DATA, END) and 0 <= length <= 4 * MiB


# --- the listener against strangers ---------------------------------------------------------


@attrs.define
class ListenerRig:
    listener: Listener
    offer: DirectOffer


async def listening() -> ListenerRig:
    listener = Listener(["127.0.0.1"], asyncio.get_running_loop(), "worker")
    return ListenerRig(listener, listener.offer())


def test_a_token_is_accepted_once_and_only_with_the_pinned_certificate(tmp_path):
    async def scenario() -> None:
        rig = await listening()
        try:
            offer, deadline = rig.offer, time.monotonic() + 2
            token = bytes.fromhex(offer.client_token)
            # The connecting side pins the fingerprint: a wrong one means no token is sent.
            with pytest.raises(ssl.SSLError, match="fingerprint"):
                await asyncio.to_thread(direct_tls._connect_one, "127.0.0.1", offer.port, "0" * 64, token, deadline)
            connection = await asyncio.to_thread(
                direct_tls._connect_one, "127.0.0.1", offer.port, offer.fingerprint, token, deadline
            )
            arrived = await asyncio.wait_for(rig.listener.arrived["client"], 2)
            assert arrived.peer.startswith("127.0.0.1:")
            # The same token again: refused, and the connection closed without a byte.
            with pytest.raises((ConnectionRefusedError, ConnectionError, OSError)):
                await asyncio.to_thread(
                    direct_tls._connect_one, "127.0.0.1", offer.port, offer.fingerprint, token, deadline
                )
            connection.close()
            arrived.close()
        finally:
            rig.listener.close()

    run_async(scenario(), 30)


@pytest.mark.parametrize(
    "behaviour",
    ["plain text", "garbage", "tls, wrong token", "tls, short token then close", "tls, silent", "tcp, silent"],
)
def test_a_stranger_gets_nothing(behaviour, monkeypatch):
    monkeypatch.setattr(direct_tls, "HANDSHAKE_TIMEOUT", 0.5)

    def stranger(port: int) -> bytes:
        if behaviour.startswith("tls"):
            with closing(tls_stranger(port)) as sock:
                if behaviour == "tls, wrong token":
                    sock.sendall(b"\x00" * direct_tls.TOKEN_BYTES)
                elif behaviour == "tls, short token then close":
                    sock.sendall(b"\x01" * 5)
                    return answer_of(sock, 1)
                return answer_of(sock)
        with closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
            if behaviour == "plain text":
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            elif behaviour == "garbage":
                sock.sendall(bytes(range(256)) * 4)
            return answer_of(sock)

    async def scenario() -> None:
        rig = await listening()
        try:
            started = time.monotonic()
            answer = await asyncio.to_thread(stranger, rig.offer.port)
            elapsed = time.monotonic() - started
            if behaviour.startswith("tls"):
                assert answer == b"", answer  # TLS done, then silence and a close: no accept byte
            else:
                assert is_at_most_a_tls_alert(answer), answer
            assert elapsed < 5, "the listener must close a silent stranger after its handshake timeout"
            # Both tokens are still unused: the legitimate peer is unaffected.
            assert set(rig.listener.tokens) == {"client", "worker"}
            assert not any(future.done() for future in rig.listener.arrived.values())
        finally:
            rig.listener.close()

    run_async(scenario(), 30)


def test_only_tls_1_3_is_spoken():
    def tls12_client(port: int) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as raw:
            context.wrap_socket(raw).close()

    async def scenario() -> None:
        rig = await listening()
        try:
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(tls12_client, rig.offer.port)
            assert set(rig.listener.tokens) == {"client", "worker"}
        finally:
            rig.listener.close()

    run_async(scenario(), 30)


def test_a_closed_listener_refuses_connections():
    async def scenario() -> int:
        rig = await listening()
        rig.listener.close()
        await asyncio.sleep(0)
        return rig.offer.port

    port = run_async(scenario(), 10)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# --- whole sessions --------------------------------------------------------------------------


# Slow: strangers at the listener for the whole of several transfers (test_a_stranger_gets_nothing stays quick).
@pytest.mark.slow
def test_strangers_disturb_nothing_while_files_move(tmp_path, monkeypatch):
    """100 strangers at once on the worker's listening port (silent, plain text, garbage, TLS
    without a token, a wrong token) while files move both ways: every file arrives verified, no
    stranger gets a byte of data, and the port is closed when the session ends."""
    monkeypatch.setattr(direct_tls, "HANDSHAKE_TIMEOUT", 1.0)
    source = make_file(tmp_path / "out" / "payload.bin", 24 * MiB + 3, seed=3)
    expected = sha256_of(source)
    answers: list[bytes] = []

    def one_stranger(port: int, index: int) -> bytes:
        try:
            kind = index % 5
            if kind in (3, 4):
                with closing(tls_stranger(port)) as sock:
                    if kind == 4:
                        sock.sendall(b"\x07" * direct_tls.TOKEN_BYTES)
                    return answer_of(sock, 5)
            with closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
                if kind == 1:
                    sock.sendall(b"HELLO worker, give me the files\n")
                elif kind == 2:
                    sock.sendall(bytes(range(256)) * 64)
                return answer_of(sock, 5)
        except OSError:
            return b""  # refused at the door (more than the listener handles at once)

    async def scenario() -> int:
        async with contract_pair(HOST, "direct", *contexts(tmp_path)) as pair:
            assert await pair.client.negotiate()
            listener = pair.worker.listener
            assert pair.client.mode == "client-connects" and listener is not None
            port = listener.port
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(max_workers=100) as strangers:
                flooding = asyncio.gather(
                    *(loop.run_in_executor(strangers, one_stranger, port, index) for index in range(100))
                )
                rounds = 0
                # Files keep moving, both ways, for as long as the strangers are at it.
                while not flooding.done() or rounds < 2:
                    await pair.client.send_file(source, f"up-{rounds}.bin")
                    await pair.worker.send_file(source, f"down-{rounds}.bin")
                    rounds += 1
                answers.extend(await flooding)
            for role in ("worker", "client"):
                await _wait_for_received(pair, role, rounds, 10)
            assert len(pair.received["worker"]) == len(pair.received["client"]) == rounds
            for file in pair.received["worker"] + pair.received["client"]:
                assert file.transport == "direct" and sha256_of(file.path) == expected
        return port

    port = run_async(scenario(), 120)
    assert len(answers) == 100
    assert all(answer == b"" or is_at_most_a_tls_alert(answer) for answer in answers)
    assert not any(TOKEN_ACCEPTED in answer and len(answer) == 1 for answer in answers)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


class BlackHole:
    """A listening socket that never accepts: connecting works (the kernel's backlog), TLS
    never answers, as behind a firewall that drops replies."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def unreachable(monkeypatch):
    """``unreachable(role)``: the offers that ``role``'s listener makes name a black hole."""
    holes: list[BlackHole] = []
    roles: set[str] = set()
    real_offer = Listener.offer

    def offer(self: Listener) -> DirectOffer:
        made = real_offer(self)
        if self.role not in roles:
            return made
        hole = BlackHole()
        holes.append(hole)
        return attrs.evolve(made, port=hole.port)

    monkeypatch.setattr(Listener, "offer", offer)
    yield roles.add
    for hole in holes:
        hole.close()


# Slow: it waits out the connect timeout before the roles swap.
@pytest.mark.slow
def test_roles_swap_when_the_client_cannot_reach_the_worker(tmp_path, unreachable):
    unreachable("worker")
    source = make_file(tmp_path / "out" / "both-ways.bin", 3 * MiB + 1, seed=5)

    async def scenario() -> None:
        async with contract_pair(HOST, "direct", *contexts(tmp_path)) as pair:
            started = time.monotonic()
            assert await pair.client.negotiate()
            assert time.monotonic() - started < 3.0
            await pair.worker.wait_settled(5)
            assert pair.client.mode == pair.worker.mode == "worker-connects"
            assert pair.client.listener is not None and pair.worker.listener is not None
            await pair.client.send_file(source, "up.bin")
            await pair.worker.send_file(source, "down.bin")
            for role in ("worker", "client"):
                # The receiver confirms before it hands the file on: wait for the hand-over.
                file = await _wait_for_received(pair, role, 1, 10)
                assert file.sha256 == sha256_of(source) and file.transport == "direct"

    run_async(scenario(), 60)


# Slow: it waits out the connect timeout, both ways.
@pytest.mark.slow
def test_neither_side_reachable_gives_up_within_the_connect_timeout_and_says_why(tmp_path, unreachable):
    unreachable("worker")
    unreachable("client")

    async def scenario() -> None:
        async with contract_pair(HOST, "direct", *contexts(tmp_path)) as pair:
            started = time.monotonic()
            with pytest.raises(TransferError) as raised:
                await pair.client.negotiate()
            assert time.monotonic() - started < 3.0
            await pair.worker.wait_settled(5)
            message = str(raised.value)
            assert "the client cannot reach the worker" in message
            assert "the worker cannot reach the client" in message
            assert "within 2 s" in message or "timed out" in message
            # Both listeners are gone once direct was given up.
            await asyncio.sleep(0.2)
            for side in (pair.client, pair.worker):
                port = side.listener.port
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()

    run_async(scenario(), 60)


def test_a_partial_file_is_resumed_from_its_length_and_the_hash_covers_the_whole(tmp_path):
    size = 5 * MiB + 11
    source = make_file(tmp_path / "out" / "resume.bin", size, seed=9)
    digest = sha256_of(source)
    client_context, worker_context = contexts(tmp_path)
    tid, _ = direct.transfer_id_of("client", source, "resume.bin")
    incoming = Path(worker_context.incoming_dir)
    incoming.mkdir(parents=True)
    prefix = source.read_bytes()[: 2 * MiB + 5]
    (incoming / partial.part_name("resume.bin", tid)).write_bytes(prefix)
    corrupt_source = make_file(tmp_path / "out" / "corrupt.bin", size, seed=10)
    corrupt_tid, _ = direct.transfer_id_of("client", corrupt_source, "corrupt.bin")
    (incoming / partial.part_name("corrupt.bin", corrupt_tid)).write_bytes(b"\xff" * MiB)

    async def scenario() -> None:
        async with contract_pair(HOST, "direct", client_context, worker_context) as pair:
            assert await pair.client.negotiate()
            await pair.client.send_file(source, "resume.bin")
            report = pair.client.reports[-1]
            assert (report.offset, report.bytes_sent) == (len(prefix), size - len(prefix))
            # A partial whose prefix is not the file's: the whole-file hash catches it.
            with pytest.raises(IntegrityError):
                await pair.client.send_file(corrupt_source, "corrupt.bin")
            # The failed partial is gone, so the next try starts afresh and succeeds.
            await pair.client.send_file(corrupt_source, "corrupt.bin")
            assert pair.client.reports[-1].offset == 0

    run_async(scenario(), 60)
    assert sha256_of(incoming / "resume.bin") == digest
    assert sorted(p.name for p in incoming.iterdir()) == ["corrupt.bin", "resume.bin"]


def test_a_file_refused_by_the_receiver_leaves_the_connection_usable(tmp_path):
    source = make_file(tmp_path / "out" / "small.bin", 1000)
    client_context, worker_context = contexts(tmp_path)
    worker_context.max_file_bytes = 999

    async def scenario() -> None:
        async with contract_pair(HOST, "direct", client_context, worker_context) as pair:
            assert await pair.client.negotiate()
            with pytest.raises(TransferError, match="exceeds the limit"):
                await pair.client.send_file(source, "too-big.bin")
            await pair.worker.send_file(source, "fine.bin")
            assert (await _wait_for_received(pair, "client", 1, 10)).name == "fine.bin"

    run_async(scenario(), 60)
    assert not any(Path(worker_context.incoming_dir).rglob("*"))


def test_a_peer_that_breaks_the_record_protocol_loses_the_connection_not_the_session(tmp_path):
    """An authenticated but misbehaving peer: a DATA record before META closes that connection;
    the session (and the data channel) go on, and a later send says the connection is gone."""
    source = make_file(tmp_path / "out" / "small.bin", 1000)

    async def scenario() -> None:
        async with contract_pair(HOST, "direct", *contexts(tmp_path), also=("rtc-chunked",)) as pair:
            assert await pair.client.negotiate()
            await pair.worker.wait_settled(5)
            connection = pair.client._send_connection
            await asyncio.to_thread(connection.send_record, DATA, b"x" * 10)
            for _ in range(200):
                if pair.worker._receive_connection.closed:
                    break
                await asyncio.sleep(0.01)
            assert pair.worker._receive_connection.closed
            with pytest.raises(TransferError, match="direct connection"):
                await pair.client.send_file(source, "after.bin")
            # The other transport of the session still works.
            await pair.attached["client"]["rtc-chunked"].send_file(source, "after.bin")
            assert (await _wait_for_received(pair, "worker", 1, 10)).transport == "rtc-chunked"

    run_async(scenario(), 60)


def test_meta_records_round_trip():
    meta = direct.DirectMeta("ab" * 16, "a/b.bin", 3)
    assert parse_meta(meta.encode()) == meta
    assert parse_record_header(direct_tls.RECORD_HEADER.pack(META, 5), (META,), 10) == (META, 5)


def test_a_job_whose_direct_connection_broke_falls_back_to_rtc_chunked(tmp_path):
    """The client's direct connection dies after the session chose direct: the job is sent
    again over rtc-chunked in the same session, and the user is told."""
    from rtcxfer.client.rtc_client import RTCClient
    from rtcxfer.client.sample import build_sample_package
    from tests.support.worker_harness import TOKEN, assert_sample_results, attached_client, make_worker

    package = build_sample_package(tmp_path / "p.zip")
    events = []
    client = RTCClient(
        token=TOKEN, results_dir=tmp_path / "results", on_event=events.append, detect_shared_storage=False
    )

    async def scenario():
        async with attached_client(make_worker(None, tmp_path / "work"), client):
            assert client.session_transports[0] == "direct"
            client.transports["direct"]._send_connection.close()
            return await client.submit(package)

    result = run_async(scenario(), 120)
    assert_sample_results(result)
    assert (result.input_transport, result.results_transport) == ("rtc-chunked", "rtc-chunked")
    notices = [e.data["message"] for e in events if e.kind == "notice"]
    assert any(n.startswith("direct failed") and "retrying over rtc-chunked" in n for n in notices), notices


def test_an_offered_address_that_is_not_a_peer_candidate_is_never_connected_to(tmp_path, monkeypatch):
    """A peer cannot point this side at another host and port: only its ICE candidates'
    addresses are tried (here 127.0.0.2, a loopback address the worker's ICE never used)."""
    bystander = socket.socket()
    bystander.bind(("127.0.0.2", 0))
    bystander.listen(8)
    bystander.settimeout(0.5)
    real_offer = Listener.offer

    def offer(self: Listener) -> DirectOffer:
        made = real_offer(self)
        if self.role != "worker":
            return made
        return attrs.evolve(made, port=bystander.getsockname()[1], addresses="127.0.0.2")

    monkeypatch.setattr(Listener, "offer", offer)

    async def scenario() -> None:
        async with contract_pair(HOST, "direct", *contexts(tmp_path)) as pair:
            started = time.monotonic()
            assert await pair.client.negotiate()
            assert time.monotonic() - started < 1.5  # nothing to wait for: no address to try
            await pair.worker.wait_settled(5)
            assert pair.client.mode == "worker-connects"

    try:
        run_async(scenario(), 60)
        with pytest.raises(socket.timeout):
            bystander.accept()
    finally:
        bystander.close()


def test_the_addresses_follow_the_connection_not_the_process(tmp_path):
    """A loopback-only connection listens on and accepts 127.0.0.1 only; an any-interface one in
    the same process listens on its own ICE host addresses and accepts any unicast address (the
    peer's candidates narrow that down before connecting); the ``addresses`` option overrides
    both. The any-interface peer only gathers (no STUN server: nothing is sent), never connects."""
    client, _ = contexts(tmp_path)
    configured, _ = contexts(tmp_path, addresses=["127.0.0.1", "fd00::9"])
    offered = "127.0.0.1,192.0.2.9,fd00::9,fe80::1,224.0.0.1,0.0.0.0,not-an-address"

    async def scenario() -> None:
        loopback, _, close = await connect_pair_in_process()
        anywhere = PeerConnection(PeerOptions(loopback_only=False))
        try:
            await anywhere.create_offer()
            assert anywhere.channel is not None
            own = anywhere.channel.local_host_addresses()
            assert own and "127.0.0.1" not in own
            for channel in (loopback, ReplayChannel("first message", loopback), object()):
                assert listen_addresses(client, channel) == ["127.0.0.1"]
                assert reachable_addresses(client, offered, channel) == ["127.0.0.1"]
            for channel in (anywhere.channel, ReplayChannel("first message", anywhere.channel)):
                assert listen_addresses(client, channel) == list(own)
                assert reachable_addresses(client, offered, channel) == ["127.0.0.1", "192.0.2.9", "fd00::9"]
                assert listen_addresses(configured, channel) == ["127.0.0.1", "fd00::9"]
                assert reachable_addresses(configured, offered, channel) == ["127.0.0.1", "fd00::9"]
        finally:
            await anywhere.close()
            await close()

    run_async(scenario(), 60)
