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
import ipaddress
import json
import select
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
from rtcxfer.protocol.errors import TransferError
from rtcxfer.testing.contract import _wait_for_received, contract_pair, make_file, run_async, sha256_of
from rtcxfer.transport.base import TransportContext
from rtcxfer.transport.host import PluginHost
from rtcxfer.transports import direct, direct_tls
from rtcxfer.transports.direct import connect_endpoints, listen_addresses, parse_meta
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


def client_hello() -> bytes:
    """The first flight of a real TLS 1.3 client: a stranger that starts its handshake properly."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def trickle(port: int, hello: bytes, pause: float, most: int) -> int:
    """Send ``hello`` a byte at a time, ``pause`` seconds apart, until the listener hangs up or
    ``most`` bytes went; how many went."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        for sent, byte in enumerate(hello[:most]):
            try:
                sock.sendall(bytes([byte]))
                if select.select([sock], [], [], pause)[0] and sock.recv(1) == b"":
                    return sent + 1
            except OSError:
                return sent
        return most


def test_a_stranger_trickling_its_handshake_is_cut_off_at_the_whole_handshakes_deadline(monkeypatch):
    """A per-read limit let a stranger sending its TLS hello a byte at a time hold a handshake
    place for as long as it liked; 16 of them turned the real peer away (hardening round two,
    finding 7). The limit is for the whole handshake now: the tricklers are cut off after a few
    bytes each, and the real peer gets in."""
    monkeypatch.setattr(direct_tls, "HANDSHAKE_TIMEOUT", 1.0)
    hello = client_hello()
    pause, most = 0.25, 40  # a byte each 0.25 s: each read well within the limit, 40 bytes 10 s

    async def scenario() -> tuple[list[int], bool]:
        rig = await listening()
        try:
            strangers = [
                asyncio.to_thread(trickle, rig.offer.port, hello, pause, most)
                for _ in range(direct_tls.MAX_PENDING_HANDSHAKES)
            ]
            sent = await asyncio.gather(*strangers)
            token = bytes.fromhex(rig.offer.client_token)
            connection = await asyncio.to_thread(
                direct_tls._connect_one, "127.0.0.1", rig.offer.port, rig.offer.fingerprint, token,
                time.monotonic() + 5,
            )
            arrived = await asyncio.wait_for(rig.listener.arrived["client"], 5)
            connection.close()
            arrived.close()
            return sent, True
        finally:
            rig.listener.close()

    sent, admitted = run_async(scenario(), 60)
    assert len(hello) > most
    assert all(count < most for count in sent), sent
    assert admitted


def test_the_listener_closes_once_both_connections_are_handed_over(tmp_path):
    """Strangers have nothing to knock on for the rest of the session."""
    source = make_file(tmp_path / "out" / "after.bin", MiB, seed=7)

    async def scenario() -> None:
        client_context, worker_context = contexts(tmp_path)
        async with contract_pair(HOST, "direct", client_context, worker_context) as pair:
            assert await pair.client.negotiate()
            await pair.worker.wait_settled(5)
            port = pair.worker.listener.port
            with pytest.raises(ConnectionRefusedError):
                await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 2)
            await pair.client.send_file(source, "after.bin")  # the session goes on
            file = await _wait_for_received(pair, "worker", 1, 10)
            assert file.sha256 == sha256_of(source)

    run_async(scenario(), 60)


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
            # A partial whose prefix is not the file's: the whole-file hash catches it, and the
            # sender at once sends the file again, whole (the failed partial is gone).
            await pair.client.send_file(corrupt_source, "corrupt.bin")
            assert [(r.offset, r.bytes_sent) for r in pair.client.reports[-2:]] == [(MiB, size - MiB), (0, size)]

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


def test_an_offered_address_off_the_ice_path_is_never_connected_to(tmp_path, monkeypatch):
    """A peer cannot point this side at another host and port: of the addresses it offers, only
    its own on the ICE path is tried (here it offers only 127.0.0.2, which its ICE never used)."""
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


@attrs.define
class PathStandIn:
    """What a data channel tells about its connection (``ConnectionAddresses``), made up: a
    connection that is not loopback-only, the peer at ``peer`` on the ICE path."""

    peer: str | None = "198.51.100.3"
    own: frozenset[str] = frozenset({"10.1.0.2", "198.51.100.2"})
    host: tuple[str, ...] = ("10.1.0.2",)
    loopback_only: bool = False

    def local_host_addresses(self) -> tuple[str, ...]:
        return self.host

    def remote_candidate_addresses(self) -> frozenset[str]:
        return frozenset({"10.2.0.2", "198.51.100.3", "198.51.100.1"})

    def peer_path_address(self) -> str | None:
        return self.peer

    def local_candidate_addresses(self) -> frozenset[str]:
        return self.own


def offer_of(addresses: str, port: int = 40000) -> DirectOffer:
    return DirectOffer(port, "a" * 64, "b" * 64, "c" * 64, addresses)


def test_only_the_peers_ice_path_address_and_advertised_endpoints_may_be_connected_to(tmp_path):
    client, _ = contexts(tmp_path)
    path = PathStandIn()
    offered = offer_of(
        "10.2.0.2,198.51.100.3,198.51.100.3:9000,[2001:db8::5]:443,127.0.0.1:22,127.0.0.1,198.51.100.2:8080,"
        "10.1.0.2:5000,0.0.0.0:1,224.0.0.1:5,[fe80::1]:7,198.51.100.3:0,nonsense,1.2.3.4:99999"
    )
    found = connect_endpoints(client, offered, path)
    assert [str(each) for each in found.allowed] == ["198.51.100.3:40000", "198.51.100.3:9000", "[2001:db8::5]:443"]
    why = "\n".join(found.refused)
    for refused, reason in [
        ("10.2.0.2:40000", "not the peer's address on the ICE path"),
        ("127.0.0.1:22", "a loopback address"),
        ("127.0.0.1:40000", "not the peer's address on the ICE path"),
        ("198.51.100.2:8080", "an address of this machine"),  # this side's own NAT
        ("10.1.0.2:5000", "an address of this machine"),
        ("0.0.0.0:1", "unspecified"),
        ("224.0.0.1:5", "multicast"),
        ("[fe80::1]:7", "link-local"),
        ("'198.51.100.3:0'", "not a TCP port"),
        ("'nonsense'", "is not IPv4:PORT or [IPv6]:PORT"),
        ("'1.2.3.4:99999'", "not a TCP port"),
    ]:
        assert any(line.startswith(refused) and reason in line for line in found.refused), (refused, why)

    # Relayed (the peer's side of the pair is a TURN relay): only advertised endpoints.
    relayed = connect_endpoints(client, offer_of("198.51.100.3,198.51.100.3:9000"), PathStandIn(peer=None))
    assert [str(each) for each in relayed.allowed] == ["198.51.100.3:9000"]
    # The addresses option narrows further.
    configured, _ = contexts(tmp_path, addresses=["10.1.0.2", "203.0.113.0/24"])
    narrowed = connect_endpoints(configured, offer_of("198.51.100.3,203.0.113.9:9000"), path)
    assert [str(each) for each in narrowed.allowed] == ["203.0.113.9:9000"]


def test_a_loopback_only_connection_connects_to_loopback_only(tmp_path):
    client, _ = contexts(tmp_path)
    offered = offer_of("127.0.0.1,127.0.0.2,10.0.0.9,127.0.0.1:9000,10.0.0.9:9000")
    for path in (PathStandIn(peer="127.0.0.1", loopback_only=True), PathStandIn(peer=None, loopback_only=True), None):
        found = connect_endpoints(client, offered, path if path is not None else object())
        assert [str(each) for each in found.allowed] == ["127.0.0.1:40000", "127.0.0.1:9000"], found


@given(st.lists(st.one_of(
    st.from_regex(r"\A(\d{1,3}\.){3}\d{1,3}(:\d{1,6})?\Z"),
    st.from_regex(r"\A\[[0-9a-f:]{2,20}\]:\d{1,6}\Z"),
    st.sampled_from(["127.0.0.1", "127.0.0.1:1", "198.51.100.3", "198.51.100.2:9", "10.1.0.2", "[::1]:5"]),
    st.text(max_size=30),
), max_size=8), st.integers(1, 65535))
def test_whatever_a_peer_offers_only_its_path_address_and_advertised_endpoints_pass(entries, port):
    context = TransportContext("client", Path("unused"), options={})
    path = PathStandIn()
    offer = offer_of(",".join(entry.replace(",", "") for entry in entries), port)
    found = connect_endpoints(context, offer, path)
    advertised = set()
    for entry in offer.addresses.split(","):
        try:
            advertised.add(direct_tls.Endpoint.parse(entry))
        except ValueError:
            pass
    for endpoint in found.allowed:
        assert endpoint == direct_tls.Endpoint("198.51.100.3", port) or endpoint in advertised
        address = ipaddress.ip_address(endpoint.address)
        assert not (address.is_loopback or address.is_unspecified or address.is_multicast or address.is_link_local)
        assert endpoint.address not in path.own and 0 < endpoint.port < 65536


@given(st.text(max_size=60))
def test_any_endpoint_text_parses_to_one_that_prints_back_or_raises_value_error(text):
    try:
        endpoint = direct_tls.Endpoint.parse(text)
    except ValueError:
        return
    assert direct_tls.Endpoint.parse(str(endpoint)) == endpoint
    assert 0 < endpoint.port < 65536


def test_a_peer_that_offers_loopback_or_this_machines_address_is_refused_without_connecting(tmp_path, monkeypatch):
    """The worker advertises 127.0.0.1 (a service of the client's machine) and then the client's
    own public address, on a connection that is not loopback-only: the client connects to
    neither (no connection attempt is made at all), and all the worker hears is "unreachable"."""
    bystander = socket.socket()
    bystander.bind(("127.0.0.1", 0))
    bystander.listen(8)
    bystander.settimeout(0.2)
    port = bystander.getsockname()[1]
    attempts: list = []

    def connect_pair(endpoints, offer, deadline):
        attempts.append(list(endpoints))
        raise ConnectionRefusedError("the test forbids connecting")

    monkeypatch.setattr(direct, "connect_pair", connect_pair)
    # Both sides' connections are told to be between two machines, the worker at 198.51.100.3.
    monkeypatch.setattr(direct, "connection_addresses", lambda channel: PathStandIn(host=("127.0.0.1",)))
    told: list[tuple[str, str, str]] = []
    real_on_frame = direct.DirectTransport.on_frame

    async def on_frame(self, frame):
        if isinstance(frame, direct.DirectResult):
            told.append((self.context.role, frame.outcome, frame.reason))
        await real_on_frame(self, frame)

    monkeypatch.setattr(direct.DirectTransport, "on_frame", on_frame)

    async def scenario(advertise: str) -> str:
        client_context, worker_context = contexts(tmp_path)
        worker_context.options["direct"]["advertise"] = advertise
        async with contract_pair(HOST, "direct", client_context, worker_context) as pair:
            with pytest.raises(TransferError) as raised:
                await pair.client.negotiate()
            await pair.worker.wait_settled(5)
            return str(raised.value)

    try:
        loopback = run_async(scenario(f"127.0.0.1:{port}"), 60)
        own = run_async(scenario("198.51.100.2:8080"), 60)
        with pytest.raises(socket.timeout):
            bystander.accept()
    finally:
        bystander.close()
    assert attempts == []
    assert f"127.0.0.1:{port}: a loopback address" in loopback, loopback
    assert "198.51.100.2:8080: an address of this machine" in own, own
    # What crossed the data channel about the attempts: "unreachable", nothing else.
    assert {(role, reason) for role, _, reason in told} == {("client", "unreachable"), ("worker", "unreachable")}, told


def test_sessions_setting_up_at_once_share_a_fixed_port_that_is_free_again_afterwards(tmp_path):
    """Two sessions of one worker with a fixed direct port (``--direct-port``), set up at once:
    each gets its own connections through the one port, and the port is free once they have them."""
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = make_file(tmp_path / "out" / "shared-port.bin", MiB + 3, seed=4)

    async def session(number: int) -> int:
        client_context, worker_context = contexts(tmp_path / str(number))
        worker_context.options["direct"].update(port=port, advertise=f"127.0.0.1:{port}")
        async with contract_pair(HOST, "direct", client_context, worker_context) as pair:
            assert await pair.client.negotiate()
            await pair.worker.wait_settled(5)
            assert pair.worker.listener.port == port
            await pair.client.send_file(source, "up.bin")
            file = await _wait_for_received(pair, "worker", 1, 10)
            assert file.sha256 == sha256_of(source) and file.transport == "direct"
            return pair.worker.listener.port

    async def scenario() -> None:
        assert await asyncio.gather(session(1), session(2)) == [port, port]

    run_async(scenario(), 60)
    with closing(socket.socket()) as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_the_addresses_follow_the_connection_not_the_process(tmp_path):
    """A loopback-only connection listens on 127.0.0.1 only; an any-interface one in the same
    process listens on its own ICE host addresses; the ``addresses`` option overrides both. The
    any-interface peer only gathers (no STUN server: nothing is sent), never connects."""
    client, _ = contexts(tmp_path)
    configured, _ = contexts(tmp_path, addresses=["127.0.0.1", "fd00::9"])

    async def scenario() -> None:
        loopback, _, close = await connect_pair_in_process()
        anywhere = PeerConnection(PeerOptions(loopback_only=False))
        try:
            await anywhere.create_offer()
            assert anywhere.channel is not None
            own = anywhere.channel.local_host_addresses()
            assert own and "127.0.0.1" not in own
            assert anywhere.channel.peer_path_address() is None  # no ICE yet
            assert set(own) <= anywhere.channel.local_candidate_addresses()
            for channel in (loopback, ReplayChannel("first message", loopback), object()):
                assert listen_addresses(client, channel) == ["127.0.0.1"]
            assert loopback.peer_path_address() == "127.0.0.1"
            for channel in (anywhere.channel, ReplayChannel("first message", anywhere.channel)):
                assert listen_addresses(client, channel) == list(own)
                assert listen_addresses(configured, channel) == ["127.0.0.1", "fd00::9"]
        finally:
            await anywhere.close()
            await close()

    run_async(scenario(), 60)
