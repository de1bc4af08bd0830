"""The transport contract suite: the tests every transport, built-in or third-party, must pass.

A transport author subclasses :class:`TransportContract` in a test module of their own and
tells it which transport to test and how to configure the two sides::

    from rtcxfer.testing.contract import TransportContract

    class TestMyTransportContract(TransportContract):
        @pytest.fixture
        def transport_name(self):
            return "my-transport"

        @pytest.fixture
        def make_contexts(self, my_server):
            def make(tmp_path):
                client = TransportContext("client", tmp_path / "client-in", options={...})
                worker = TransportContext("worker", tmp_path / "worker-in", options={...})
                return client, worker
            return make

The suite checks the class attributes and the plugin's registration (name, frame types in the
host's catalogue, ``claims``), then runs transfers between two *real* aiortc peers connected
through a real signaling server on 127.0.0.1 (:func:`rtcxfer.testing.peers.linked_peers`):
files of several sizes (0 bytes to a few MiB) in both directions arrive byte-identical with
their SHA-256; hostile names (and any hostile frames the author supplies) are refused with a
typed error while the session goes on; and a session that ends mid-transfer leaves no file
under its final name that is incomplete.

Fixtures to override (all have defaults except ``transport_name``):

* ``transport_name``: the transport's name as registered.
* ``host``: the :class:`~rtcxfer.transport.host.PluginHost` (default: built-ins and entry points).
* ``make_contexts``: ``make(tmp_path) -> (client_context, worker_context)``; the suite sets
  ``on_file`` itself.
* ``sizes``: file sizes to send each way.
* ``hostile_names``: names ``send_file`` must refuse.
* ``hostile_frames``: ``frames(transfer_id) -> [Frame, ...]``, raw frames a hostile peer could
  send to the worker's transport; each must be answered by an error frame (see
  ``is_refusal``) and must write nothing.

pytest is needed to use this module (it is a test helper), not to use rtcxfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from rtcxfer.protocol.errors import RtcxferError
from rtcxfer.protocol.frames import Frame, ProtocolErrorFrame
from rtcxfer.testing.coroutines import run_async
from rtcxfer.testing.peers import LinkedPeers, PeerSide, linked_peers
from rtcxfer.transport.base import Delivery, ReceivedFile, Transport, TransportContext
from rtcxfer.transport.host import PluginHost

__all__ = [
    "HOSTILE_NAMES",
    "ContractPair",
    "TransportContract",
    "contract_pair",
    "make_file",
    "run_async",
    "sample_frame",
    "sha256_of",
]

#: Names no transport may accept from a caller or a peer.
HOSTILE_NAMES: tuple[str, ...] = (
    "../escape.bin",
    "a/../../escape.bin",
    "/etc/passwd",
    "C:\\escape.bin",
    "s3://bucket/escape.bin",
    "a\x00b",
    "",
)


def make_file(path: Path, size: int, *, seed: int = 0) -> Path:
    """Write ``size`` deterministic, incompressible-looking bytes to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(f"rtcxfer-contract-{seed}".encode()).digest() * 2048  # 64 KiB
    with open(path, "wb") as handle:
        remaining = size
        counter = 0
        while remaining:
            # Vary each block so that a misplaced block changes the hash.
            chunk = counter.to_bytes(8, "big") + block[8:]
            handle.write(chunk[:remaining])
            remaining -= min(remaining, len(chunk))
            counter += 1
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _sample_value(spec: Any) -> Any:
    if spec.kind == "int":
        return 0
    if spec.kind == "float":
        return 0.0
    if spec.kind == "hex":
        return "0" * (spec.length or 0)
    if spec.kind == "token":
        return "t"
    return "x"


def sample_frame(frame_class: type[Frame]) -> Frame:
    """An instance of ``frame_class`` with placeholder values in its required fields."""
    values = {spec.name: _sample_value(spec) for spec in frame_class.FIELDS if not spec.optional}
    return frame_class(**values)


@attrs.define(eq=False)
class ContractPair:
    """Two linked peers, each with its per-session object of the transport under test."""

    peers: LinkedPeers
    client: Transport
    worker: Transport
    #: Files each side received, by role.
    received: dict[str, list[ReceivedFile]]
    #: Every transport object attached, by role and transport name (``also`` included).
    attached: dict[str, dict[str, Transport]] = attrs.field(factory=dict)

    def transport(self, role: str) -> Transport:
        return self.client if role == "client" else self.worker

    def side(self, role: str) -> PeerSide:
        return self.peers.client if role == "client" else self.peers.worker


@asynccontextmanager
async def contract_pair(
    host: PluginHost,
    name: str,
    client_context: TransportContext,
    worker_context: TransportContext,
    *,
    also: Iterable[str] = (),
) -> AsyncIterator[ContractPair]:
    """Connect two real peers and attach a ``name`` transport object to each side's link.

    ``also`` names more transports to attach to both sides (to test falling back to them).

    ``on_file`` of each context is wrapped so that every received file is also recorded in
    :attr:`ContractPair.received`.
    """
    names = [name, *also]
    classes = {each: host.transport(each).transport for each in names}
    contexts = {"client": client_context, "worker": worker_context}
    received: dict[str, list[ReceivedFile]] = {"client": [], "worker": []}
    attached: dict[str, dict[str, Transport]] = {"client": {}, "worker": {}}

    for role, context in contexts.items():
        inner = context.on_file

        async def record(file: ReceivedFile, role: str = role, inner: Any = inner) -> None:
            received[role].append(file)
            if inner is not None:
                result = inner(file)
                if asyncio.iscoroutine(result):
                    await result

        context.on_file = record

    def prepare(side: PeerSide) -> None:
        # Before the link starts receiving, so that the very first frame has its handler.
        for each in names:
            transport = classes[each](side.link, contexts[side.role])
            side.link.add_handler(each, transport)
            attached[side.role][each] = transport

    async with linked_peers(host=host, prepare=prepare) as peers:
        yield ContractPair(peers, attached["client"][name], attached["worker"][name], received, attached)


async def _wait_for_received(pair: ContractPair, role: str, count: int, timeout: float) -> ReceivedFile:
    async def wait() -> ReceivedFile:
        while len(pair.received[role]) < count:
            await asyncio.sleep(0.01)
        return pair.received[role][count - 1]

    return await asyncio.wait_for(wait(), timeout)


def _read(file: ReceivedFile) -> bytes:
    opener = getattr(file, "open", None)
    handle = opener() if callable(opener) else open(file.path, "rb")
    with handle:
        return handle.read()


def _files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file() or path.is_symlink()}


class TransportContract:
    """The contract suite; subclass it as ``Test...`` and override the fixtures."""

    #: Seconds one test may take, connection set-up included.
    timeout: float = 120.0
    #: Seconds to wait for the receiver to report a file after the sender's confirmation.
    receive_timeout: float = 30.0

    # --- fixtures an author overrides ---------------------------------------------------

    @pytest.fixture
    def transport_name(self) -> str:
        pytest.fail("override the transport_name fixture with the name of the transport to test")

    @pytest.fixture
    def host(self) -> PluginHost:
        return PluginHost(autoload=True, environ={})

    @pytest.fixture
    def make_contexts(self) -> Callable[[Path], tuple[TransportContext, TransportContext]]:
        def make(tmp_path: Path) -> tuple[TransportContext, TransportContext]:
            return (
                TransportContext("client", tmp_path / "client-incoming"),
                TransportContext("worker", tmp_path / "worker-incoming"),
            )

        return make

    @pytest.fixture
    def sizes(self) -> tuple[int, ...]:
        return (0, 1, 65_536 + 13, 3 * 1024 * 1024 + 7)

    @pytest.fixture
    def hostile_names(self) -> tuple[str, ...]:
        return HOSTILE_NAMES

    @pytest.fixture
    def hostile_frames(self) -> Callable[[str], Iterable[Frame]]:
        return lambda transfer_id: ()

    def is_refusal(self, frame: Frame) -> bool:
        """Whether ``frame`` tells the sender its frame was refused (override if needed)."""
        return isinstance(frame, ProtocolErrorFrame) or "ERROR" in frame.TYPE

    # --- derived fixtures ---------------------------------------------------------------

    @pytest.fixture
    def transport_info(self, host: PluginHost, transport_name: str) -> Any:
        return host.transport(transport_name)

    @pytest.fixture
    def contexts(self, make_contexts: Any, tmp_path: Path) -> tuple[TransportContext, TransportContext]:
        client, worker = make_contexts(tmp_path)
        for context in (client, worker):
            Path(context.incoming_dir).mkdir(parents=True, exist_ok=True)
        return client, worker

    # --- the class and its registration -------------------------------------------------

    def test_class_attributes(self, transport_info: Any, host: PluginHost) -> None:
        cls = transport_info.transport
        assert issubclass(cls, Transport)
        assert isinstance(cls.name, str) and cls.name.strip() == cls.name and cls.name
        assert [info.name for info in host.transports()].count(cls.name) == 1
        assert isinstance(cls.rank, int) and not isinstance(cls.rank, bool)
        assert isinstance(cls.description, str) and cls.description
        assert isinstance(cls.frame_types, tuple) and cls.frame_types
        for frame_class in cls.frame_types:
            assert issubclass(frame_class, Frame)
            # Registered through rtcxfer_frame_types, with this very class.
            assert frame_class.TYPE in host.catalogue
            assert frame_class in list(host.catalogue)

    def test_claims_its_frames_and_no_others(self, transport_info: Any, host: PluginHost) -> None:
        cls = transport_info.transport
        for frame_class in cls.frame_types:
            frame = sample_frame(frame_class)
            assert cls.claims(frame)
            assert host.claim(frame) == cls.name
            assert host.catalogue.decode(host.catalogue.encode(frame)) == frame
        others = [fc for fc in host.catalogue if fc not in cls.frame_types]
        for frame_class in others:
            assert not cls.claims(sample_frame(frame_class)), frame_class.TYPE

    def test_listed_by_plugin_host(self, transport_info: Any, host: PluginHost, transport_name: str) -> None:
        assert transport_info.name == transport_name
        assert transport_info.plugin in host.plugin_names()
        assert transport_info.distribution and transport_info.distribution != "unknown"
        assert transport_info.version
        assert transport_name not in host.failures

    # --- transfers between real peers ---------------------------------------------------

    @pytest.mark.parametrize("sender", ["client", "worker"])
    def test_files_arrive_byte_identical(
        self,
        sender: str,
        host: PluginHost,
        transport_name: str,
        contexts: tuple[TransportContext, TransportContext],
        sizes: tuple[int, ...],
        tmp_path: Path,
    ) -> None:
        receiver = "worker" if sender == "client" else "client"
        sources = [make_file(tmp_path / "outgoing" / f"file-{size}.bin", size, seed=size) for size in sizes]

        async def scenario() -> None:
            async with contract_pair(host, transport_name, *contexts) as pair:
                for context in contexts:
                    assert type(pair.client).usable(context)
                assert await pair.client.negotiate()
                for count, source in enumerate(sources, 1):
                    name = f"nested/dir/{source.name}"
                    delivery = await pair.transport(sender).send_file(source, name)
                    expected = sha256_of(source)
                    assert isinstance(delivery, Delivery)
                    assert delivery.transport == transport_name
                    assert delivery.size == source.stat().st_size
                    assert delivery.sha256 in (None, expected)
                    file = await _wait_for_received(pair, receiver, count, self.receive_timeout)
                    assert file.name == name
                    assert file.size == source.stat().st_size
                    assert file.transport == transport_name
                    assert file.sha256 in (None, expected)
                    assert hashlib.sha256(_read(file)).hexdigest() == expected

        run_async(scenario(), self.timeout)

    def test_hostile_names_and_frames_are_refused(
        self,
        host: PluginHost,
        transport_name: str,
        contexts: tuple[TransportContext, TransportContext],
        hostile_names: tuple[str, ...],
        hostile_frames: Callable[[str], Iterable[Frame]],
        tmp_path: Path,
    ) -> None:
        source = make_file(tmp_path / "outgoing" / "payload.bin", 4096)
        before = _files_under(tmp_path)

        async def scenario() -> None:
            async with contract_pair(host, transport_name, *contexts) as pair:
                assert await pair.client.negotiate()
                for name in hostile_names:
                    with pytest.raises(RtcxferError):
                        await pair.client.send_file(source, name)
                for frame in hostile_frames(secrets.token_hex(16)):
                    await pair.peers.client.link.send(frame)
                    reply = await pair.peers.client.link.wait_for(self.is_refusal, timeout=self.receive_timeout)
                    assert reply is not None
                # The session goes on: an ordinary transfer still works, both ways.
                await pair.client.send_file(source, "after-hostile.bin")
                await pair.worker.send_file(source, "after-hostile.bin")
                await _wait_for_received(pair, "worker", 1, self.receive_timeout)
                await _wait_for_received(pair, "client", 1, self.receive_timeout)

        run_async(scenario(), self.timeout)
        created = _files_under(tmp_path) - before
        incoming = [Path(context.incoming_dir).resolve() for context in contexts]
        shared = [Path(c.shared_root).resolve() for c in contexts if c.shared_root is not None]
        for path in created:
            resolved = path.resolve()
            assert any(resolved.is_relative_to(root) for root in incoming + shared), path
        assert not (tmp_path.parent / "escape.bin").exists()
        assert not (tmp_path / "escape.bin").exists()

    def test_closed_session_leaves_no_incomplete_final_file(
        self,
        host: PluginHost,
        transport_name: str,
        contexts: tuple[TransportContext, TransportContext],
        tmp_path: Path,
    ) -> None:
        size = 8 * 1024 * 1024 + 5
        source = make_file(tmp_path / "outgoing" / "big.bin", size, seed=7)
        expected = sha256_of(source)
        worker_incoming = Path(contexts[1].incoming_dir)
        final = worker_incoming / "big.bin"

        async def scenario() -> BaseException | Delivery:
            async with contract_pair(host, transport_name, *contexts) as pair:
                assert await pair.client.negotiate()
                sending = asyncio.ensure_future(pair.client.send_file(source, "big.bin"))
                # Drop the worker once its side shows any sign of the transfer, so the close
                # most likely lands mid-transfer.
                for _ in range(500):
                    if sending.done() or any(worker_incoming.rglob("*")):
                        break
                    await asyncio.sleep(0.01)
                await pair.peers.worker.drop()
                try:
                    return await asyncio.wait_for(sending, self.receive_timeout)
                except (RtcxferError, OSError) as error:
                    return error

        outcome = run_async(scenario(), self.timeout)
        assert isinstance(outcome, (RtcxferError, OSError, Delivery)), outcome
        for _ in range(2):
            # Again after a pause: a thread finishing late must not produce a final name.
            if final.exists():
                assert final.stat().st_size == size and sha256_of(final) == expected
            for path in _files_under(worker_incoming):
                if path.name == final.name:
                    assert sha256_of(path) == expected
            run_async(asyncio.sleep(0.5))
