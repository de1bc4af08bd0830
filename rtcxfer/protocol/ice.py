"""ICE servers (STUN and TURN), sans-IO: their URLs, the RTCIceServer objects that carry them
over the wire, and the short-lived TURN credentials a signaling server makes for each peer.

Three parts:

* :func:`parse_ice_url`: ``stun:HOST[:PORT]``, ``turn:HOST[:PORT][?transport=udp|tcp]`` and
  ``turns:HOST[:PORT][?transport=tcp]`` (RFC 7064, RFC 7065), HOST a DNS name, an IPv4 address
  or an IPv6 address in brackets; default ports 3478 (``stun:``, ``turn:``) and 5349
  (``turns:``), default transports udp (``turn:``) and tcp (``turns:``). Anything else raises
  :class:`~rtcxfer.protocol.errors.IceServerError`, naming the URL and what is wrong. What a
  peer built on aiortc cannot use is refused here too: ``stuns:`` (aiortc ignores it) and
  ``turns:`` over UDP (DTLS to a TURN server: aiortc has none). A parsed :class:`IceUrl`
  prints as its canonical text, port and transport always spelled out.
* :class:`IceServer`: WebRTC's RTCIceServer dictionary, ``{"urls": [...], "username": ...,
  "credential": ...}``, as the signaling server's ``registered`` message carries it
  (:func:`decode_ice_servers` reads a list of them; what it cannot use is dropped, and said).
  A TURN server needs a username and a credential, as WebRTC requires.
* :func:`turn_rest_credential`: the TURN REST API's time-limited credential, which coturn
  checks with ``use-auth-secret`` / ``static-auth-secret``: username ``"{expiry}:{name}"``,
  password ``base64(HMAC-SHA1(secret, username))``, expiry in seconds since the epoch;
  :class:`IceServerConfig` is what a signaling server hands out from (its STUN and TURN URLs,
  the shared secret, the lifetime), one set of credentials per peer.

Credentials never appear in a ``repr`` or in an error message: a URL that holds user
information (``turn:user:pass@host``) is shown with it masked.

Why here, in :mod:`rtcxfer.protocol`: the signaling messages (``net.signaling.messages``, which
may import no I/O library) decode these, and the peer glue, the server and the command line
all use them; none of it does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from rtcxfer.protocol.errors import IceServerError

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_TURN_TTL",
    "MAX_TURN_EXPIRY",
    "SCHEMES",
    "IceServer",
    "IceServerConfig",
    "IceUrl",
    "TurnCredential",
    "decode_ice_servers",
    "parse_ice_url",
    "turn_rest_credential",
]

SCHEMES = ("stun", "turn", "turns")
DEFAULT_PORTS = {"stun": 3478, "turn": 3478, "turns": 5349}
DEFAULT_TRANSPORTS = {"turn": "udp", "turns": "tcp"}
TRANSPORTS = ("udp", "tcp")
#: An hour. A TURN server checks the credential when a peer allocates its relay, at the start of a
#: session; the allocation outlives it (coturn 4.6.1 accepts refreshes and permissions after the
#: expiry), so a job may run for longer. Peers that stay registered get fresh ones meanwhile.
DEFAULT_TURN_TTL = 3600
#: coturn refuses a TURN REST username whose expiry lies past 2**31 seconds since the epoch.
MAX_TURN_EXPIRY = 2**31 - 1

MAX_URL_CHARS = 512
#: STUN's USERNAME attribute holds less than 513 bytes (RFC 8489 section 14.3).
MAX_CREDENTIAL_CHARS = 512
#: How many RTCIceServer entries, and URLs in one, a peer reads from the server.
MAX_SERVERS = 16
MAX_URLS_PER_SERVER = 16

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_SYNTAX = "stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT][?transport=tcp]"


def _shown(text: str) -> str:
    """``text`` quoted for a message: user information before an ``@`` masked, length bounded."""
    scheme, colon, rest = text.partition(":")
    if colon and "@" in rest:
        text = f"{scheme}:***@{rest.rsplit('@', 1)[1]}"
    return repr(text[:120] + ("..." if len(text) > 120 else ""))


def _printable_ascii(text: str) -> bool:
    return all(" " < character < "\x7f" for character in text)


@attrs.frozen
class IceUrl:
    """One parsed STUN or TURN URL: ``scheme`` (``stun``, ``turn``, ``turns``), ``host`` (a
    lowercase DNS name, an IPv4 address, or an IPv6 address without its brackets), ``port``,
    and ``transport`` (``udp`` or ``tcp`` for TURN, None for STUN). ``str()`` is its
    canonical text, which :func:`parse_ice_url` reads back to the same object."""

    scheme: str
    host: str
    port: int
    transport: str | None = None

    @property
    def is_turn(self) -> bool:
        return self.scheme != "stun"

    @property
    def host_is_ipv6(self) -> bool:
        """Whether the host is an IPv6 address (written in brackets in the URL)."""
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.host_is_ipv6 else self.host
        query = f"?transport={self.transport}" if self.transport else ""
        return f"{self.scheme}:{host}:{self.port}{query}"


def _host(text: str, fail: Callable[[str], None]) -> str:
    if not text:
        fail("no host")
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        fail(f"{text[:64]!r} is not a host name or an IPv4 address")
    if all(label.isdigit() for label in labels):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            fail(f"{text[:64]!r} is not an IPv4 address")
    return text.lower()


def _ipv6(text: str, fail: Callable[[str], None]) -> str:
    if "%" in text:
        fail("an IPv6 zone (%...) cannot be used in an ICE server URL")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        fail(f"[{text[:64]}] is not an IPv6 address")
    raise AssertionError("unreachable")  # pragma: no cover - fail() always raises


def parse_ice_url(text: object) -> IceUrl:
    """``text`` as a STUN or TURN URL; :class:`~rtcxfer.protocol.errors.IceServerError` (and
    nothing else) for anything that is not one of ``stun:HOST[:PORT]``,
    ``turn:HOST[:PORT][?transport=udp|tcp]``, ``turns:HOST[:PORT][?transport=tcp]``."""
    if not isinstance(text, str):
        raise IceServerError(f"an ICE server URL is a string, not {type(text).__name__}")
    shown = _shown(text)

    def fail(why: str) -> None:
        raise IceServerError(f"ICE server URL {shown}: {why}")

    if not text:
        fail(f"empty; expected {_SYNTAX}")
    if len(text) > MAX_URL_CHARS:
        fail(f"longer than {MAX_URL_CHARS} characters")
    if not _printable_ascii(text):
        fail("holds white space, a control character or a character that is not ASCII")
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon:
        fail(f"no scheme; expected {_SYNTAX}")
    if scheme == "stuns":
        fail("stuns: (STUN over TLS) is not supported: aiortc ignores it; use stun:")
    if scheme not in SCHEMES:
        fail(f"unknown scheme {scheme[:16]!r}; expected {_SYNTAX}")
    if rest.startswith("//"):
        fail(f"no '//' after the scheme: {scheme}:HOST[:PORT]")
    if "@" in rest:
        fail("credentials do not belong in the URL; give the user name and the credential separately")
    address, question, query = rest.partition("?")
    transport = None
    if question:
        if scheme == "stun":
            fail("a stun: URL takes no '?' query (no transport: STUN is UDP here)")
        key, equals, value = query.partition("=")
        if key.lower() != "transport" or not equals:
            fail("the only query a TURN URL takes is ?transport=udp or ?transport=tcp")
        transport = value.lower()
        if transport not in TRANSPORTS:
            fail(f"transport {value[:16]!r}: it must be udp or tcp")
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            fail("an IPv6 address in brackets lacks its ']'")
        host = _ipv6(address[1:end], fail)
        after = address[end + 1 :]
        if after and not after.startswith(":"):
            fail("expected ':PORT' or nothing after the ']'")
        port_text = after[1:] if after else None
    else:
        host_text, port_colon, port_text = address.partition(":")
        if ":" in port_text:
            fail("an IPv6 address goes in brackets, e.g. turn:[2001:db8::1]:3478")
        host = _host(host_text, fail)
        port_text = port_text if port_colon else None
    port = DEFAULT_PORTS[scheme]
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            fail(f"port {port_text[:16]!r}: it must be a number from 1 to 65535")
        port = int(port_text)
    if scheme == "turns" and transport == "udp":
        fail("turns: is TURN over TLS, which runs on TCP; aiortc has no DTLS to a TURN server: "
             "use turns:...?transport=tcp, or turn:...?transport=udp")
    if scheme != "stun" and transport is None:
        transport = DEFAULT_TRANSPORTS[scheme]
    return IceUrl(scheme, host, port, transport)


# -- RTCIceServer -------------------------------------------------------------------------------


def _urls(value: Any) -> tuple[IceUrl, ...]:
    if isinstance(value, (str, IceUrl)):
        value = (value,)
    return tuple(url if isinstance(url, IceUrl) else parse_ice_url(url) for url in value)


def _credential_text(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise IceServerError(f"an ICE server's {name} must be a non-empty string")
    if len(value) > MAX_CREDENTIAL_CHARS or not _printable_ascii(value.replace(" ", "!")):
        raise IceServerError(
            f"an ICE server's {name} must be at most {MAX_CREDENTIAL_CHARS} printable ASCII characters")


def _check_server(instance: IceServer, attribute: attrs.Attribute, value: object) -> None:
    if not instance.urls:
        raise IceServerError("an ICE server needs at least one URL")
    _credential_text("username", instance.username)
    _credential_text("credential", instance.credential)
    if any(url.is_turn for url in instance.urls) and (instance.username is None or instance.credential is None):
        turn = next(url for url in instance.urls if url.is_turn)
        raise IceServerError(f"the TURN server {str(turn)!r} needs a username and a credential")


@attrs.frozen
class IceServer:
    """WebRTC's RTCIceServer: ``urls`` (parsed: a string or :class:`IceUrl`, or several, are
    accepted), and for TURN the ``username`` and ``credential`` (a password) to use with every
    TURN URL of it. The credential is left out of the ``repr``."""

    urls: tuple[IceUrl, ...] = attrs.field(converter=_urls)
    username: str | None = None
    credential: str | None = attrs.field(default=None, repr=False, validator=_check_server)

    @property
    def has_turn(self) -> bool:
        return any(url.is_turn for url in self.urls)

    def to_json(self) -> dict[str, Any]:
        """The RTCIceServer dictionary: what a browser's ``RTCPeerConnection`` takes as is."""
        entry: dict[str, Any] = {"urls": [str(url) for url in self.urls]}
        if self.username is not None:
            entry["username"] = self.username
        if self.credential is not None:
            entry["credential"] = self.credential
        return entry


#: Told what was dropped from a list of ICE servers, and why (never a credential).
IceServerProblem = Callable[[str], None]


def _decoded_server(entry: object, note: IceServerProblem) -> IceServer | None:
    if not isinstance(entry, Mapping):
        note("an ICE server entry is not an object: dropped")
        return None
    urls = entry.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls:
        note("an ICE server entry has no 'urls': dropped")
        return None
    if len(urls) > MAX_URLS_PER_SERVER:
        note(f"an ICE server entry has {len(urls)} URLs: only the first {MAX_URLS_PER_SERVER} are read")
    parsed = []
    for url in urls[:MAX_URLS_PER_SERVER]:
        try:
            parsed.append(parse_ice_url(url))
        except IceServerError as error:
            note(f"{error}: dropped")
    if not parsed:
        return None
    username, credential = entry.get("username"), entry.get("credential")
    try:
        return IceServer(parsed, username, credential)
    except IceServerError as error:
        note(f"{error}: dropped")
        return None


def decode_ice_servers(value: object, on_invalid: IceServerProblem | None = None) -> tuple[IceServer, ...]:
    """A list of RTCIceServer dictionaries (from the signaling server) as :class:`IceServer`
    objects. Never raises: an entry or URL that cannot be used is dropped, and ``on_invalid``
    is told why (the text names no credential)."""
    note = on_invalid or (lambda text: None)
    if not isinstance(value, list):
        note("'ice_servers' is not a list: ignored")
        return ()
    if len(value) > MAX_SERVERS:
        note(f"{len(value)} ICE servers: only the first {MAX_SERVERS} are read")
    servers = (_decoded_server(entry, note) for entry in value[:MAX_SERVERS])
    return tuple(server for server in servers if server is not None)


# -- TURN REST API credentials ------------------------------------------------------------------


@attrs.frozen
class TurnCredential:
    """A TURN REST API credential: ``username`` (``"{expires}:{name}"``) and ``password``,
    valid until ``expires`` (seconds since the epoch). The password is left out of the ``repr``."""

    username: str
    password: str = attrs.field(repr=False)
    expires: int


def turn_rest_credential(secret: str, name: str, *, ttl: int, now: float) -> TurnCredential:
    """The credential for ``name`` (a peer id), valid for ``ttl`` seconds from ``now``, that a
    TURN server sharing ``secret`` accepts (coturn: ``use-auth-secret``, ``static-auth-secret``).

    Raises :class:`~rtcxfer.protocol.errors.IceServerError` when the expiry would lie past
    2**31 seconds since the epoch (coturn refuses it) or the arguments cannot make one.
    """
    if not isinstance(secret, str) or not secret:
        raise IceServerError("the TURN secret must be a non-empty string")
    if not isinstance(ttl, int) or ttl < 1:
        raise IceServerError(f"the TURN credential lifetime must be a whole number of seconds >= 1, not {ttl!r}")
    if not isinstance(name, str) or not name or not _printable_ascii(name):
        raise IceServerError("a TURN credential's name must be printable ASCII without spaces")
    expires = int(now) + ttl
    if expires > MAX_TURN_EXPIRY:
        raise IceServerError(
            f"a TURN credential valid for {ttl} s would expire at {expires}, past 2**31 seconds since the epoch, "
            "which TURN servers refuse: use a shorter lifetime")
    username = f"{expires}:{name}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires)


def _urls_of(scheme_test: Callable[[IceUrl], bool], what: str) -> Callable[[Iterable[object]], tuple[IceUrl, ...]]:
    def convert(values: Iterable[object]) -> tuple[IceUrl, ...]:
        urls = _urls(tuple(values) if not isinstance(values, (str, IceUrl)) else values)
        for url in urls:
            if not scheme_test(url):
                raise IceServerError(f"ICE server URL {str(url)!r}: {what}")
        return urls

    return convert


def _check_config(instance: IceServerConfig, attribute: attrs.Attribute, value: object) -> None:
    if instance.turn and not instance.turn_secret:
        raise IceServerError("TURN URLs need the shared secret their credentials are made from")
    if instance.turn_secret is not None and not instance.turn:
        raise IceServerError("a TURN secret without a TURN URL: give the TURN server's URL too")
    if not isinstance(instance.turn_ttl, int) or instance.turn_ttl < 1:
        raise IceServerError(f"the TURN credential lifetime must be >= 1 s, not {instance.turn_ttl!r}")


@attrs.frozen
class IceServerConfig:
    """The ICE servers a signaling server hands out: ``stun`` URLs (``stun:``) as they are, and
    ``turn`` URLs (``turn:``, ``turns:``) with a credential made for each peer from
    ``turn_secret``, valid for ``turn_ttl`` seconds. The secret is left out of the ``repr``."""

    stun: tuple[IceUrl, ...] = attrs.field(
        default=(), converter=_urls_of(lambda url: not url.is_turn, "a STUN URL must be stun:"))
    turn: tuple[IceUrl, ...] = attrs.field(
        default=(), converter=_urls_of(lambda url: url.is_turn, "a TURN URL must be turn: or turns:"))
    turn_secret: str | None = attrs.field(default=None, repr=False)
    turn_ttl: int = attrs.field(default=DEFAULT_TURN_TTL, validator=_check_config)

    @property
    def empty(self) -> bool:
        return not (self.stun or self.turn)

    @property
    def expires(self) -> bool:
        """Whether what it hands out expires (there are TURN credentials), so that a peer that
        stays registered must be given fresh ones from time to time."""
        return bool(self.turn)

    def check(self, now: float) -> None:
        """Raise :class:`~rtcxfer.protocol.errors.IceServerError` now if no credential can be
        made (an expiry past 2**31), rather than at the first registration."""
        if self.turn:
            turn_rest_credential(self.turn_secret or "", "check", ttl=self.turn_ttl, now=now)

    def servers_for(self, name: str, now: float) -> tuple[IceServer, ...]:
        """The RTCIceServers for the peer ``name``: the STUN servers, then the TURN servers with a
        credential for ``name`` valid from ``now`` for ``turn_ttl`` seconds."""
        servers = []
        if self.stun:
            servers.append(IceServer(self.stun))
        if self.turn:
            credential = turn_rest_credential(self.turn_secret or "", name, ttl=self.turn_ttl, now=now)
            servers.append(IceServer(self.turn, credential.username, credential.password))
        return tuple(servers)
