"""STUN/TURN URLs, RTCIceServer entries and TURN REST API credentials (``rtcxfer.protocol.ice``),
sans-IO. That coturn accepts the credentials is shown in ``tests/net/test_turn_credentials.py``."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.protocol.errors import IceServerError
from rtcxfer.protocol.ice import (
    MAX_TURN_EXPIRY,
    IceServer,
    IceServerConfig,
    IceUrl,
    decode_ice_servers,
    parse_ice_url,
    turn_rest_credential,
)

# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun:stun.example.org", IceUrl("stun", "stun.example.org", 3478)),
        ("stun:10.0.0.1:19302", IceUrl("stun", "10.0.0.1", 19302)),
        ("turn:turn.example.org", IceUrl("turn", "turn.example.org", 3478, "udp")),
        ("turn:turn.example.org:80?transport=tcp", IceUrl("turn", "turn.example.org", 80, "tcp")),
        ("turn:192.0.2.7?transport=udp", IceUrl("turn", "192.0.2.7", 3478, "udp")),
        ("turns:turn.example.org", IceUrl("turns", "turn.example.org", 5349, "tcp")),
        ("turns:turn.example.org:443?transport=tcp", IceUrl("turns", "turn.example.org", 443, "tcp")),
        ("turn:[2001:db8::1]:3479", IceUrl("turn", "2001:db8::1", 3479, "udp")),
        ("stun:[2001:DB8:0::1]", IceUrl("stun", "2001:db8::1", 3478)),
        ("TURN:Turn.Example.ORG?Transport=TCP", IceUrl("turn", "turn.example.org", 3478, "tcp")),
    ],
)
def test_urls_parse_with_default_ports_and_transports(text, expected):
    url = parse_ice_url(text)
    assert url == expected
    assert parse_ice_url(str(url)) == url


def test_the_canonical_text_spells_out_port_and_transport():
    assert str(parse_ice_url("turn:h")) == "turn:h:3478?transport=udp"
    assert str(parse_ice_url("turns:h")) == "turns:h:5349?transport=tcp"
    assert str(parse_ice_url("stun:[::1]")) == "stun:[::1]:3478"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("stun.example.org", "no scheme"),
        ("http://example.org", "unknown scheme"),
        ("stuns:example.org", "stuns:"),
        ("turn://example.org", "no '//'"),
        ("turns:example.org?transport=udp", "runs on TCP"),
        ("turn:example.org?transport=sctp", "udp or tcp"),
        ("turn:example.org?foo=bar", "?transport=udp or ?transport=tcp"),
        ("stun:example.org?transport=udp", "no '?' query"),
        ("turn:example.org:0", "1 to 65535"),
        ("turn:example.org:65536", "1 to 65535"),
        ("turn:example.org:", "1 to 65535"),
        ("turn:example.org:34x", "1 to 65535"),
        ("turn::3478", "no host"),
        ("turn:2001:db8::1", "in brackets"),
        ("turn:[2001:db8::1", "lacks its ']'"),
        ("turn:[not-v6]:3478", "not an IPv6 address"),
        ("turn:[fe80::1%eth0]", "zone"),
        ("turn:[::1]x", "after the ']'"),
        ("turn:300.1.2.3", "not an IPv4 address"),
        ("turn:exa_mple.org", "not a host name"),
        ("turn:-bad.org", "not a host name"),
        ("turn:exa mple.org", "white space"),
        ("turn:exämple.org", "not ASCII"),
        ("turn:" + "a" * 600, "longer than"),
    ],
)
def test_a_bad_url_is_a_typed_error_naming_it_and_what_is_wrong(text, says):
    with pytest.raises(IceServerError) as refused:
        parse_ice_url(text)
    assert says in str(refused.value)
    assert repr(text[:60])[:-1] in str(refused.value)


def test_credentials_in_a_url_are_refused_without_being_echoed():
    with pytest.raises(IceServerError) as refused:
        parse_ice_url("turn:alice:hunter2@turn.example.org")
    message = str(refused.value)
    assert "credentials do not belong in the URL" in message
    assert "hunter2" not in message and "alice" not in message
    assert "turn.example.org" in message


def assert_url_or_typed_error(text: str) -> None:
    try:
        url = parse_ice_url(text)
    except IceServerError as error:
        assert str(error).startswith(("ICE server URL ", "an ICE server URL is"))
        return
    assert parse_ice_url(str(url)) == url


@given(st.text(max_size=80))
def test_any_text_is_a_url_or_the_typed_error(text):
    assert_url_or_typed_error(text)


@given(
    st.sampled_from(["stun:", "turn:", "turns:", "TURN:", ""]),
    st.text(alphabet=string.ascii_letters + string.digits + ":[]?=.-_@/%", max_size=60),
)
def test_url_like_text_is_a_url_or_the_typed_error(prefix, rest):
    assert_url_or_typed_error(prefix + rest)


def test_what_is_not_text_is_the_typed_error_too():
    with pytest.raises(IceServerError, match="is a string, not int"):
        parse_ice_url(3478)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
HOSTS = st.one_of(
    st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(lambda name: not name.replace(".", "").isdigit()),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(
    st.sampled_from(["stun", "turn", "turns"]),
    HOSTS,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.sampled_from([None, "udp", "tcp"]),
)
def test_every_valid_url_parses_to_its_parts(scheme, host, port, transport):
    if scheme == "stun":
        transport = None
    if scheme == "turns" and transport == "udp":
        transport = "tcp"
    text = f"{scheme}:{f'[{host}]' if ':' in host else host}"
    text += f":{port}" if port is not None else ""
    text += f"?transport={transport}" if transport else ""
    url = parse_ice_url(text)
    assert (url.scheme, url.host, url.port) == (scheme, host, port or (5349 if scheme == "turns" else 3478))
    assert url.transport == (None if scheme == "stun" else transport or ("tcp" if scheme == "turns" else "udp"))


# --- RTCIceServer entries ----------------------------------------------------------------------


def test_an_ice_server_is_webrtcs_dictionary_and_hides_its_credential():
    server = IceServer(["turn:h:3478?transport=udp", "turns:h"], "1800000000:client-1", "c2VjcmV0")
    assert server.to_json() == {
        "urls": ["turn:h:3478?transport=udp", "turns:h:5349?transport=tcp"],
        "username": "1800000000:client-1",
        "credential": "c2VjcmV0",
    }
    assert "c2VjcmV0" not in repr(server)
    assert IceServer("stun:h").to_json() == {"urls": ["stun:h:3478"]}


def test_a_turn_server_needs_a_username_and_a_credential():
    with pytest.raises(IceServerError, match="needs a username and a credential"):
        IceServer("turn:h")
    with pytest.raises(IceServerError, match="needs a username and a credential"):
        IceServer(["stun:h", "turn:h"], "user")
    with pytest.raises(IceServerError, match="needs at least one URL"):
        IceServer([])


def test_decoding_keeps_what_it_can_use_and_says_what_it_drops_without_credentials():
    notes: list[str] = []
    servers = decode_ice_servers(
        [
            {"urls": "stun:a"},
            {"urls": ["stuns:b", "turn:b"], "username": "u", "credential": "SECRET-1"},
            {"urls": ["turn:c"]},
            {"urls": []},
            "nonsense",
            {"urls": ["turn:alice:SECRET-2@d"], "username": "u", "credential": "SECRET-3"},
            {"urls": "stun:e", "username": 5},
        ],
        notes.append,
    )
    assert servers == (IceServer("stun:a"), IceServer("turn:b", "u", "SECRET-1"))
    assert len(notes) == 6
    assert not any("SECRET" in note for note in notes)
    assert decode_ice_servers({"urls": "stun:a"}, notes.append) == ()
    assert notes[-1] == "'ice_servers' is not a list: ignored"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["urls", "username", "credential",
                                                                                 "x"]), inner, max_size=4),
    max_leaves=12,
)


@given(JSON)
def test_decoding_any_json_never_raises(value):
    servers = decode_ice_servers(value)
    assert all(isinstance(server, IceServer) for server in servers)
    json.dumps([server.to_json() for server in servers])


# --- TURN REST API credentials -----------------------------------------------------------------


def test_the_turn_rest_credential_is_expiry_colon_name_and_a_base64_hmac_sha1():
    # Checked with: printf %s 1767229200:client-1a2b3c4d | openssl dgst -sha1 -hmac north-wind -binary | base64
    credential = turn_rest_credential("north-wind", "client-1a2b3c4d", ttl=3600, now=1767225600.9)
    assert credential.username == "1767229200:client-1a2b3c4d"
    assert credential.password == "qmTXrEc1JXxmOqLFhmBMh0EWx58="
    assert credential.expires == 1767229200
    assert "qmTX" not in repr(credential)


def test_an_expiry_past_2_to_the_31_is_refused_as_turn_servers_do():
    now = MAX_TURN_EXPIRY - 100
    assert turn_rest_credential("s", "w", ttl=100, now=now).expires == 2**31 - 1
    with pytest.raises(IceServerError, match="past 2\\*\\*31"):
        turn_rest_credential("s", "w", ttl=101, now=now)
    with pytest.raises(IceServerError):
        turn_rest_credential("s", "w", ttl=0, now=0)
    with pytest.raises(IceServerError):
        turn_rest_credential("", "w", ttl=60, now=0)


def test_the_config_makes_each_peer_its_own_credential_and_keeps_the_secret_out_of_its_repr():
    config = IceServerConfig(stun=["stun:s"], turn=["turn:t?transport=udp", "turn:t?transport=tcp"],
                             turn_secret="the-shared-secret", turn_ttl=600)
    stun, turn = config.servers_for("worker", now=1_800_000_000)
    assert stun == IceServer("stun:s")
    assert turn.username == "1800000600:worker"
    assert turn.credential == turn_rest_credential("the-shared-secret", "worker", ttl=600, now=1_800_000_000).password
    assert [str(url) for url in turn.urls] == ["turn:t:3478?transport=udp", "turn:t:3478?transport=tcp"]
    assert config.servers_for("client-1", now=1_800_000_000)[1].credential != turn.credential
    assert "the-shared-secret" not in repr(config)
    assert IceServerConfig(stun=["stun:s"]).servers_for("x", now=0) == (IceServer("stun:s"),)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"turn": ["turn:t"]}, "shared secret"),
        ({"stun": ["stun:s"], "turn_secret": "x"}, "without a TURN URL"),
        ({"stun": ["turn:t"]}, "must be stun:"),
        ({"turn": ["stun:s"], "turn_secret": "x"}, "must be turn: or turns:"),
        ({"turn": ["turn:t"], "turn_secret": "x", "turn_ttl": 0}, ">= 1 s"),
    ],
)
def test_a_config_that_does_not_fit_together_is_refused(options, says):
    with pytest.raises(IceServerError, match=says):
        IceServerConfig(**options)
