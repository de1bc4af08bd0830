"""The signaling codec, the SDP handshake payloads and the book of rooms, without a network.

The codec (:mod:`rtcxfer.net.signaling.messages`) is fuzzed: every message type survives a round
trip byte for byte, and whatever text reaches a decoder comes out as a typed message or a
:class:`MalformedMessage`, never another exception. The wire format is pinned by exact texts and
by the examples of ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtcxfer.net.signaling.handshake import HandshakeRefusal, SdpAnswer, SdpOffer, decode_handshake
from rtcxfer.net.signaling.messages import (
    BAD_MESSAGE,
    DUPLICATE_PEER,
    ROOM_FULL,
    SERVER_FULL,
    Describe,
    ErrorReply,
    IceServersUpdate,
    MalformedMessage,
    PeerEntry,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    Refusal,
    Register,
    Registered,
    Relay,
    RelayRequest,
    UnknownMessage,
    decode_request,
    decode_server_message,
    encode,
    is_id,
)
from rtcxfer.net.signaling.rooms import InMemoryRooms, RoomLimits
from rtcxfer.protocol.ice import IceServer
from rtcxfer.protocol.worker_description import validate_description
from rtcxfer.testing import run_async

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# -- strategies ---------------------------------------------------------------------------------

IDS = st.from_regex(r"[A-Za-z0-9._:@+=-]{1,128}", fullmatch=True)
ROLE = st.sampled_from(["worker", "client"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
PAYLOADS = st.dictionaries(st.text(max_size=8), JSON, max_size=4)
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=16)


@st.composite
def descriptions(draw: st.DrawFn) -> dict[str, Any]:
    slots = draw(st.integers(1, 1024))
    optional = {
        "state": st.sampled_from(["idle", "busy", "draining"]),
        "slots": st.just(slots),
        "running": st.integers(0, slots),
        "gpus": st.lists(st.fixed_dictionaries({"model": PRINTABLE}, optional={"memory_mb": st.integers(0, 1 << 20)}),
                         max_size=2),
        "cpu_count": st.integers(0, 256),
        "shared_root": st.none() | st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
        "transports": st.lists(st.from_regex(r"[a-z-]{1,12}", fullmatch=True), max_size=3),
        "labels": st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), PRINTABLE, max_size=2),
        "started_at": st.floats(0, 4e9),
    }
    # In the form the validator gives back (gpu fields in order, started_at a float), which is
    # what every decoder returns and every server sends.
    return validate_description(draw(st.fixed_dictionaries({}, optional=optional)))


WORKER_DESCRIPTION = st.none() | descriptions()
ICE_SERVERS = st.lists(
    st.builds(IceServer, st.sampled_from(["stun:host-a", ["stun:host-b:19302", "stun:[::1]"]]))
    | st.builds(IceServer, st.sampled_from(["turn:host-t", ["turn:host-t?transport=tcp", "turns:[2001:db8::7]"]]),
                PRINTABLE, PRINTABLE),
    max_size=3,
)


@st.composite
def peer_fields(draw: st.DrawFn) -> tuple[str, str, dict[str, Any] | None]:
    """A peer as the server describes it: only a worker has a description."""
    role = draw(ROLE)
    return draw(IDS), role, draw(WORKER_DESCRIPTION) if role == "worker" else None


REQUESTS = st.one_of(
    st.builds(Register, IDS, st.just("client"), IDS, st.none() | st.text(max_size=64)),
    st.builds(Register, IDS, st.just("worker"), IDS, st.none() | st.text(max_size=64), WORKER_DESCRIPTION),
    st.builds(Describe, descriptions(), st.none() | IDS),
    st.builds(RelayRequest, IDS, PAYLOADS),
)
SERVER_MESSAGES = st.one_of(
    st.builds(Registered, IDS, IDS, st.lists(peer_fields().map(lambda fields: PeerEntry(*fields)), max_size=4),
              ICE_SERVERS),
    st.builds(IceServersUpdate, ICE_SERVERS),
    peer_fields().map(lambda fields: PeerJoined(*fields)),
    st.builds(PeerUpdated, IDS, st.just("worker"), descriptions()),
    st.builds(PeerLeft, IDS, ROLE),
    st.builds(Relay, IDS, PAYLOADS),
    st.builds(ErrorReply, st.text(max_size=16), st.text(max_size=64), st.none() | st.text(max_size=16)),
)
#: JSON objects that look like messages: the right types with any fields, and some wrong ones.
MESSAGE_LIKE = JSON | st.fixed_dictionaries(
    {"type": st.sampled_from(["register", "describe", "relay", "registered", "peer-joined", "peer-updated",
                              "peer-left", "error", "ice-servers", "dance"]) | JSON},
    optional={
        "room": JSON | IDS,
        "role": JSON | ROLE,
        "peer_id": JSON | IDS,
        "token": JSON,
        "to": JSON | IDS,
        "from": JSON | IDS,
        "payload": JSON | PAYLOADS,
        "peers": JSON | st.lists(st.fixed_dictionaries({"peer_id": JSON | IDS, "role": JSON | ROLE},
                                                       optional={"description": JSON}), max_size=2),
        "description": JSON | descriptions(),
        "code": JSON,
        "message": JSON,
        "ice_servers": JSON | st.lists(
            st.fixed_dictionaries({"urls": JSON | st.sampled_from(["stun:host-a", ["turn:host-b"]])},
                                  optional={"username": JSON, "credential": JSON}),
            max_size=2,
        ),
    },
)
#: Any text a socket might deliver: arbitrary strings, bytes, JSON, and message-like JSON.
WIRE = st.one_of(
    st.text(),
    st.binary(max_size=32),
    JSON.map(json.dumps),
    MESSAGE_LIKE.map(lambda message: json.dumps(message, ensure_ascii=False)),
    st.sampled_from(["[" * 100_000, '{"type": "relay", "to": "w", "payload": {"x": NaN}}',
                     '{"type": "relay", "to": "w", "payload": {"x": ' + "9" * 5000 + "}}"]),
)


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=300)
@given(REQUESTS)
def test_every_request_survives_a_round_trip_byte_for_byte(request: Any) -> None:
    text = encode(request)
    decoded = decode_request(text)
    assert decoded == request
    assert type(decoded) is type(request)
    assert encode(decoded) == text


@settings(max_examples=300)
@given(SERVER_MESSAGES)
def test_every_server_message_survives_a_round_trip_byte_for_byte(message: Any) -> None:
    text = encode(message)
    decoded = decode_server_message(text)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == text


# -- hostile text -------------------------------------------------------------------------------


@settings(max_examples=500)
@given(WIRE)
def test_whatever_a_peer_sends_is_a_typed_request_or_a_malformed_message(data: str | bytes) -> None:
    try:
        request = decode_request(data, max_message_bytes=4096)
    except MalformedMessage as error:
        assert str(error)
        return
    assert isinstance(request, (Register, Describe, RelayRequest))
    # What the server then writes from it can be written: ids are ids, descriptions valid.
    if isinstance(request, Register):
        assert is_id(request.room) and is_id(request.peer_id)
    if isinstance(request, RelayRequest):
        assert is_id(request.to) and isinstance(request.payload, dict)
    if getattr(request, "description", None) is not None:
        assert validate_description(request.description) == request.description


@settings(max_examples=500)
@given(WIRE)
def test_whatever_a_server_sends_is_a_typed_message_or_a_malformed_message(data: str | bytes) -> None:
    told: list[str] = []
    try:
        message = decode_server_message(data, on_invalid_description=lambda peer, error: told.append(peer))
    except MalformedMessage:
        return
    assert isinstance(message, (Registered, IceServersUpdate, PeerJoined, PeerUpdated, PeerLeft, Relay, ErrorReply,
                               UnknownMessage))
    for peer in message.peers if isinstance(message, Registered) else [message]:
        if getattr(peer, "description", None) is not None:
            assert peer.role == "worker"


def test_a_large_or_binary_message_is_malformed_with_a_reason() -> None:
    with pytest.raises(MalformedMessage, match="larger than 1024 bytes"):
        decode_request(json.dumps({"type": "relay", "to": "w", "payload": {"x": "é" * 600}}), 1024)
    with pytest.raises(MalformedMessage, match="binary"):
        decode_request(b'{"type": "relay"}')
    with pytest.raises(MalformedMessage, match="unknown message type 'dance'"):
        decode_request('{"type": "dance"}')
    # A lone surrogate is measured, not a crash (no WebSocket delivers one, but a caller might).
    with pytest.raises(MalformedMessage):
        decode_request("\ud800" * 2000, 1024)


def test_a_description_that_does_not_validate_is_refused_from_a_peer_and_dropped_from_a_server() -> None:
    huge_number = '{"type": "describe", "description": {"started_at": ' + "9" * 400 + "}}"
    with pytest.raises(MalformedMessage, match="description refused"):
        decode_request(huge_number)
    told: list[tuple[str, str]] = []
    joined = decode_server_message(
        '{"type": "peer-joined", "peer_id": "gpu", "role": "worker", "description": {"newer_field": 1}}',
        on_invalid_description=lambda peer, error: told.append((peer, str(error))),
    )
    assert joined == PeerJoined("gpu", "worker")
    assert told == [("gpu", "unknown description field 'newer_field'")]
    # A client's description is not a thing: dropped without a word.
    assert decode_server_message('{"type": "peer-joined", "peer_id": "c", "role": "client", "description": {}}') == (
        PeerJoined("c", "client"))


def test_an_unknown_server_message_type_is_kept_apart() -> None:
    assert decode_server_message('{"type": "room-closed", "room": "r"}') == UnknownMessage("room-closed")


# -- the wire format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (Register("lab", "worker", "gpu1", "t0k", {"slots": 2}),
         '{"type":"register","room":"lab","role":"worker","peer_id":"gpu1","token":"t0k","description":{"slots":2}}'),
        (Register("lab", "client", "c"), '{"type":"register","room":"lab","role":"client","peer_id":"c"}'),
        (Describe({"state": "idle"}), '{"type":"describe","description":{"state":"idle"}}'),
        (RelayRequest("w", {"kind": "offer", "sdp": "v=0\r\né"}),
         '{"type":"relay","to":"w","payload":{"kind":"offer","sdp":"v=0\\r\\né"}}'),
        (Registered("r", "c", [PeerEntry("w", "worker", {"slots": 1}), PeerEntry("d", "client")]),
         '{"type":"registered","room":"r","peer_id":"c","peers":[{"peer_id":"w","role":"worker",'
         '"description":{"slots":1}},{"peer_id":"d","role":"client"}]}'),
        (Registered("r", "c", [], [IceServer("stun:host"), IceServer("turn:host", "1800000000:c", "cHc=")]),
         '{"type":"registered","room":"r","peer_id":"c","peers":[],'
         '"ice_servers":[{"urls":["stun:host:3478"]},'
         '{"urls":["turn:host:3478?transport=udp"],'
         '"username":"1800000000:c","credential":"cHc="}]}'),
        (IceServersUpdate([IceServer("stun:host")]),
         '{"type":"ice-servers","ice_servers":[{"urls":["stun:host:3478"]}]}'),
        (PeerJoined("c", "client"), '{"type":"peer-joined","peer_id":"c","role":"client"}'),
        (PeerUpdated("w", "worker", {"state": "busy"}),
         '{"type":"peer-updated","peer_id":"w","role":"worker","description":{"state":"busy"}}'),
        (PeerLeft("c", "client"), '{"type":"peer-left","peer_id":"c","role":"client"}'),
        (Relay("c", {"kind": "answer"}), '{"type":"relay","from":"c","payload":{"kind":"answer"}}'),
        (ErrorReply("unknown-peer", "no peer 'x' in this room", "x"),
         '{"type":"error","code":"unknown-peer","message":"no peer \'x\' in this room","peer_id":"x"}'),
        (ErrorReply("rate-limited", "slow down"), '{"type":"error","code":"rate-limited","message":"slow down"}'),
    ],
)
def test_the_wire_text_of_each_message(message: Any, text: str) -> None:
    assert encode(message) == text


def _json_examples(heading: str) -> list[dict[str, Any]]:
    doc = DOC.read_text(encoding="utf-8")
    start = doc.index(heading)
    section = doc[start: doc.index("\n### ", start + len(heading))]
    blocks = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    return [json.loads(line) for block in blocks for line in block.splitlines() if line.strip()]


def test_every_documented_peer_message_decodes_and_encodes_back() -> None:
    examples = _json_examples("### 1.2 ")
    assert {example["type"] for example in examples} == {"register", "describe", "relay"}
    for example in examples:
        assert json.loads(encode(decode_request(json.dumps(example)))) == example


def test_every_documented_server_message_decodes_and_encodes_back() -> None:
    examples = _json_examples("### 1.3 ")
    assert {example["type"] for example in examples} == {
        "registered", "peer-joined", "peer-left", "peer-updated", "relay", "error", "ice-servers"}
    for example in examples:
        assert json.loads(encode(decode_server_message(json.dumps(example)))) == example


# -- the handshake payloads ---------------------------------------------------------------------


@given(st.text())
def test_handshake_payloads_round_trip(text: str) -> None:
    for payload in (SdpOffer(text), SdpAnswer(text), HandshakeRefusal(text)):
        assert decode_handshake(payload.to_payload()) == payload
        assert decode_handshake(json.loads(json.dumps(payload.to_payload()))) == payload


@given(JSON | PAYLOADS | st.fixed_dictionaries({"kind": JSON | st.sampled_from(["offer", "answer", "error"])},
                                               optional={"sdp": JSON, "message": JSON}))
def test_any_payload_is_a_handshake_message_or_none(payload: Any) -> None:
    decoded = decode_handshake(payload)
    assert decoded is None or isinstance(decoded, (SdpOffer, SdpAnswer, HandshakeRefusal))


def test_the_documented_handshake_payloads() -> None:
    assert SdpOffer("v=0").to_payload() == {"kind": "offer", "sdp": "v=0"}
    assert SdpAnswer("v=0").to_payload() == {"kind": "answer", "sdp": "v=0"}
    assert HandshakeRefusal("no").to_payload() == {"kind": "error", "message": "no"}
    # A browser's RTCSessionDescription.toJSON() says "type", not "kind": not an offer.
    assert decode_handshake({"type": "offer", "sdp": "v=0"}) is None
    assert decode_handshake({"kind": "offer"}) is None


# -- the book of rooms --------------------------------------------------------------------------


def test_rooms_keep_join_order_and_tell_who_else_is_there() -> None:
    async def scenario() -> None:
        rooms = InMemoryRooms()
        for key in "abc":
            await rooms.connect(key, "10.0.0.1")
        first = await rooms.register("a", "lab", "gpu", "worker", {"slots": 1})
        assert first.others == ()
        second = await rooms.register("b", "lab", "c1", "client")
        assert [m.peer_id for m in second.others] == ["gpu"]
        assert second.others[0].entry() == PeerEntry("gpu", "worker", {"slots": 1})
        await rooms.register("c", "other", "c1", "client")
        assert rooms.snapshot() == {"lab": ["gpu", "c1"], "other": ["c1"]}
        updated = await rooms.describe("a", {"slots": 2})
        assert updated is not None and updated.member.description == {"slots": 2}
        assert [m.peer_id for m in updated.others] == ["c1"]
        assert rooms.snapshot() == {"lab": ["gpu", "c1"], "other": ["c1"]}  # order kept
        assert (await rooms.find("lab", "gpu")).description == {"slots": 2}
        assert await rooms.find("lab", "nobody") is None
        left = await rooms.leave("a")
        assert left is not None and [m.peer_id for m in left.others] == ["c1"]
        assert await rooms.leave("a") is None
        assert await rooms.describe("a", {"slots": 3}) is None
        gone = await rooms.disconnect("c")
        assert gone is not None and gone.others == ()
        assert rooms.snapshot() == {"lab": ["c1"]}

    run_async(scenario())


def test_the_per_address_cap_in_a_room_counts_only_peers_without_the_token() -> None:
    async def scenario() -> list[str]:
        rooms = InMemoryRooms(RoomLimits(max_peers_per_room=6, max_peers_per_address_in_room=2))
        outcomes = []
        for n, proved in enumerate([True, True, True, False, False, False, True, True]):
            await rooms.connect(str(n), "nat")
            try:
                await rooms.register(str(n), "lab", f"p{n}", "client", proved_token=proved)
                outcomes.append("ok")
            except Refusal as refusal:
                outcomes.append(refusal.code)
        return outcomes

    # Two unproven peers from the address at most; proven ones up to the room's own limit.
    assert run_async(scenario()) == ["ok", "ok", "ok", "ok", "ok", "room-full", "ok", "room-full"]


def test_rooms_refuse_duplicates_full_rooms_and_greedy_addresses() -> None:
    async def scenario() -> None:
        rooms = InMemoryRooms(RoomLimits(max_peers_per_room=3, max_connections_per_address=4,
                                         max_unregistered_per_address=2, max_peers_per_address_in_room=2))
        await rooms.connect("1", "a")
        await rooms.connect("2", "a")
        with pytest.raises(Refusal) as refusal:
            await rooms.connect("3", "a")  # two unregistered already
        assert (refusal.value.code, refusal.value.close) == (SERVER_FULL, True)
        await rooms.register("1", "r", "w", "worker")
        await rooms.connect("3", "a")
        with pytest.raises(Refusal) as refusal:
            await rooms.register("2", "r", "w", "worker")
        assert refusal.value.code == DUPLICATE_PEER and "--peer-id" in refusal.value.message
        await rooms.register("2", "r", "c", "client")
        with pytest.raises(Refusal) as refusal:
            await rooms.register("3", "r", "c2", "client")  # two from this address in the room
        assert refusal.value.code == ROOM_FULL and "your address" in refusal.value.message
        await rooms.connect("4", "b")
        await rooms.register("4", "r", "c3", "client")
        await rooms.connect("5", "c")
        with pytest.raises(Refusal) as refusal:
            await rooms.register("5", "r", "c4", "client")
        assert refusal.value.code == ROOM_FULL and refusal.value.reply == ErrorReply(
            ROOM_FULL, "room 'r' has 3 peers already")
        await rooms.register("3", "elsewhere", "c2", "client")
        await rooms.connect("6", "a")
        with pytest.raises(Refusal):
            await rooms.connect("7", "a")  # four sockets from a already
        await rooms.disconnect("1")
        await rooms.connect("7", "a")

    run_async(scenario())


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["connect", "register", "leave", "disconnect"]), st.sampled_from("123456"),
              st.sampled_from(["x", "y"]), st.sampled_from(["r", "s"]), st.sampled_from(["p", "q", "t"])),
    max_size=40,
)


@settings(max_examples=200)
@given(OPERATIONS)
def test_the_book_does_what_a_simple_model_predicts(operations: list[tuple[str, str, str, str, str]]) -> None:
    """Whatever order sockets come, join, leave and go in, every refusal and every room is
    what a recount from scratch says it should be."""
    limits = RoomLimits(max_peers_per_room=3, max_connections_per_address=3,
                        max_unregistered_per_address=2, max_peers_per_address_in_room=2)

    async def scenario() -> None:
        rooms = InMemoryRooms(limits)
        connected: dict[str, str] = {}  # key -> address
        registered: set[str] = set()  # keys that ever registered
        model: dict[str, dict[str, str]] = {}  # room -> {peer_id: key}, in join order
        where: dict[str, tuple[str, str]] = {}  # key -> (room, peer_id) while in a room

        def take_out(key: str) -> list[str] | None:
            if key not in where:
                return None
            room, peer = where.pop(key)
            del model[room][peer]
            others = list(model[room])
            if not model[room]:
                del model[room]
            return others

        for operation, key, address, room, peer in operations:
            if operation == "connect" and key not in connected:
                sockets = sum(a == address for a in connected.values())
                waiting = sum(a == address for k, a in connected.items() if k not in registered)
                if sockets >= 3 or waiting >= 2:
                    with pytest.raises(Refusal) as refusal:
                        await rooms.connect(key, address)
                    assert refusal.value.code == SERVER_FULL
                else:
                    await rooms.connect(key, address)
                    connected[key] = address
            elif operation == "register" and key in connected and key not in registered:
                peers = model.get(room, {})
                here = sum(connected[k] == connected[key] for k in peers.values())
                if peer in peers or len(peers) >= 3 or here >= 2:
                    with pytest.raises(Refusal) as refusal:
                        await rooms.register(key, room, peer, "client")
                    assert refusal.value.code == (DUPLICATE_PEER if peer in peers else ROOM_FULL)
                else:
                    change = await rooms.register(key, room, peer, "client")
                    assert [m.peer_id for m in change.others] == list(peers)
                    model.setdefault(room, {})[peer] = key
                    where[key] = (room, peer)
                    registered.add(key)
            elif operation == "leave":
                expected = take_out(key)
                change = await rooms.leave(key)
                assert (None if change is None else [m.peer_id for m in change.others]) == expected
            elif operation == "disconnect":
                expected = take_out(key)
                change = await rooms.disconnect(key)
                assert (None if change is None else [m.peer_id for m in change.others]) == expected
                connected.pop(key, None)
                registered.discard(key)
            assert rooms.snapshot() == {name: list(peers) for name, peers in model.items()}
            for name, peers in model.items():
                for peer_id, member_key in peers.items():
                    member = await rooms.find(name, peer_id)
                    assert member is not None and (member.connection, member.address) == (
                        member_key, connected[member_key])

    run_async(scenario())


def test_a_bad_message_refusal_replies_with_its_code() -> None:
    assert Refusal(BAD_MESSAGE, "no").reply == ErrorReply(BAD_MESSAGE, "no")


def test_ice_servers_a_peer_cannot_use_cost_those_servers_not_the_registration() -> None:
    told: list[str] = []
    message = decode_server_message(
        json.dumps({"type": "registered", "room": "r", "peer_id": "c", "peers": [],
                    "ice_servers": [{"urls": ["stun:host", "stuns:example"]},
                                    {"urls": "turn:host", "credential": "SECRET"}, 7]}),
        on_invalid_ice_server=told.append,
    )
    assert message == Registered("r", "c", [], [IceServer("stun:host")])
    assert len(told) == 3 and not any("SECRET" in text for text in told)
    assert decode_server_message('{"type":"registered","room":"r","peer_id":"c","peers":[]}') == Registered("r", "c")
    assert decode_server_message('{"type":"ice-servers","ice_servers":"none"}') == IceServersUpdate()
    with pytest.raises(MalformedMessage, match="needs 'ice_servers'"):
        decode_server_message('{"type":"ice-servers"}')
