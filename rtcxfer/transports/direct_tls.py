"""The TLS side of the ``direct`` transport (:mod:`rtcxfer.transports.direct`): this process's
certificate, a TLS 1.3 stream over a blocking socket, a connection of records, connecting with a
pinned fingerprint and a one-time token, and a listener that hands over exactly two
connections and gives strangers nothing.

A listener takes an ephemeral port of its own, or a fixed one (a port a NAT or firewall maps to
this machine: ``rtcxfer worker --direct-port``), which every session of the process that is
setting up shares: one listening socket per address, each newcomer handed to the session whose
token it presents. An offer names where the listener listens (its addresses, at its port) and
where else it can be reached (an advertised :class:`Endpoint`, ``HOST:PORT``: the public side of
such a mapping).

Everything blocking here runs in threads; the accept loop and hand-over run on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import hashlib
import hmac
import ipaddress
import os
import secrets
import selectors
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from pathlib import Path

import attrs

from rtcxfer.log import logger
from rtcxfer.protocol.errors import ConnectionClosedError, TransferError, describe
from rtcxfer.protocol.frames import Frame, frame_type, hex_digits, integer, text

#: A connection attempt gives up after this many seconds.
CONNECT_TIMEOUT = 2.0
#: A stranger's connection is closed if the handshake and the token take longer than this.
HANDSHAKE_TIMEOUT = 5.0
MAX_PENDING_HANDSHAKES = 16
TOKEN_BYTES = 32
TOKEN_ACCEPTED = b"\x01"
#: Bytes read from a socket at a time (many TLS records).
SOCKET_READ = 1024 * 1024

#: A record on a connection: kind (1 byte) and payload length (8 bytes), then the payload.
RECORD_HEADER = struct.Struct(">BQ")
META, DATA, END, ACCEPT, ACK, ERROR = range(1, 7)


@frame_type("DIRECT_OFFER")
class DirectOffer(Frame):
    """Either side: connect to me here, with TLS pinned to ``fingerprint``, presenting
    ``client_token`` for the connection that carries the client's files and ``worker_token``
    for the worker's. ``addresses`` is a comma-separated list of IP addresses (listening at
    ``port``) and advertised endpoints (``IPv4:PORT`` or ``[IPv6]:PORT``: a port mapped to the
    listener); a peer that knows no endpoints skips them, as they are no IP address."""

    port: int = integer()
    fingerprint: str = hex_digits(64)
    client_token: str = hex_digits(64)
    worker_token: str = hex_digits(64)
    addresses: str = text(greedy=True)


@attrs.frozen
class Endpoint:
    """An IP address and a TCP port; ``str()`` is ``1.2.3.4:5`` or ``[2001:db8::1]:5``, which
    :meth:`parse` reads back."""

    address: str
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``IPv4:PORT`` or ``[IPv6]:PORT`` (no host names: an offer names addresses); ValueError
        saying why for anything else."""
        text = text.strip()
        if text.startswith("["):
            host, bracket, port = text[1:].partition("]:")
            if not bracket:
                raise ValueError(f"{text[:80]!r} is not [IPv6]:PORT")
        else:
            host, colon, port = text.rpartition(":")
            if not colon or ":" in host:
                raise ValueError(f"{text[:80]!r} is not IPv4:PORT or [IPv6]:PORT")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host[:64]!r} is not an IP address") from None
        if ("[" in text) != (address.version == 6):
            raise ValueError(f"{text[:80]!r}: an IPv6 address goes in brackets, an IPv4 one not")
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{port[:16]!r} is not a TCP port (1-65535)")
        return cls(str(address), int(port))


def parse_record_header(header: bytes, allowed: Iterable[int], limit: int) -> tuple[int, int]:
    """(kind, length) of a record header, or :class:`TransferError` if unexpected or too long."""
    kind, length = RECORD_HEADER.unpack(header)
    if kind not in allowed:
        raise TransferError(f"unexpected record kind {kind}")
    if length > limit:
        raise TransferError(f"record of {length} bytes exceeds {limit}")
    return kind, length


# --- identity: the certificate ------------------------------------------------------------


@attrs.frozen
class Identity:
    """This process's TLS server context and its certificate's SHA-256 fingerprint."""

    server_context: ssl.SSLContext
    fingerprint: str


_identity: Identity | None = None
_identity_lock = threading.Lock()


def _tls13(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """``load_cert_chain`` reads only from a path: hand it an anonymous memory file where there
    is one (Linux), so the key never touches a file system."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("rtcxfer-direct", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="rtcxfer-direct-") as directory:  # pragma: no cover
        path = Path(directory) / "identity.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        context.load_cert_chain(path)


def identity() -> Identity:
    """The process's self-signed certificate (made on first use, ECDSA P-256, valid one week).

    No CA is involved: the peer pins the fingerprint it received over the authenticated data
    channel, so the certificate's names and dates carry no trust.
    """
    global _identity
    with _identity_lock:
        if _identity is None:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID

            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtcxfer direct")])
            now = datetime.datetime.now(datetime.timezone.utc)
            certificate = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=7))
                .sign(key, hashes.SHA256())
            )
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ) + certificate.public_bytes(serialization.Encoding.PEM)
            context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            _load_chain(context, pem)
            fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
            _identity = Identity(context, fingerprint)
        return _identity


def _client_context() -> ssl.SSLContext:
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    # Trust comes from the pinned fingerprint, checked right after the handshake.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --- one TLS connection -------------------------------------------------------------------


class TlsStream:
    """TLS over a blocking socket through memory BIOs.

    ``SSLSocket`` reads one TLS record (16 KiB at most) per call, with two system calls for each;
    here one ``recv`` of up to :data:`SOCKET_READ` bytes feeds many records and one ``sendall``
    carries all the records of a write, which moved 10-30 % more per second between the two
    hosts of the test bed. OpenSSL releases the GIL while it encrypts and decrypts.

    Timeouts are the socket's (``sock.settimeout``), or :attr:`deadline` when set. One thread
    at a time.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool) -> None:
        self.sock = sock
        #: A ``time.monotonic`` value every read must finish by (``None``: the socket's timeout).
        #: A per-read timeout alone lets a peer that sends a byte at a time stretch a handshake
        #: forever; each read waits here at most for what is left.
        self.deadline: float | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._buffer = bytearray(SOCKET_READ)
        self._view = memoryview(self._buffer)

    def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionAbortedError("closed during the TLS handshake") from None
        self._flush()

    def peer_certificate(self) -> bytes:
        return self._tls.getpeercert(binary_form=True) or b""

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def _fill(self) -> bool:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(left)
        count = self.sock.recv_into(self._buffer)
        if not count:
            self._incoming.write_eof()
            return False
        self._incoming.write(self._view[:count])
        return True

    def sendall(self, data: bytes | memoryview) -> None:
        self._tls.write(data)
        self._flush()

    def recv_into(self, view: memoryview, count: int) -> int:
        """Up to ``count`` decrypted bytes into ``view``; 0 at the end of the stream."""
        while True:
            try:
                return self._tls.read(count, view)
            except ssl.SSLWantReadError:
                if not self._fill():
                    return 0
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0

    def recv_exactly(self, count: int) -> bytes:
        data = bytearray(count)
        view = memoryview(data)
        got = 0
        while got < count:
            n = self.recv_into(view[got:], count - got)
            if not n:
                raise ConnectionClosedError("the direct connection closed")
            got += n
        return bytes(data)


class Connection:
    """A :class:`TlsStream` used by one thread at a time, closable from the event loop.

    ``close`` shuts the socket down at once (waking a thread blocked on it) but releases the
    descriptor only when no thread uses it, so a number reused by the kernel is never touched.
    """

    def __init__(self, tls: TlsStream, peer: str) -> None:
        self.tls = tls
        self.peer = peer
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @property
    def closed(self) -> bool:
        return self._closing

    @contextmanager
    def using(self):
        with self._lock:
            if self._closing:
                raise ConnectionClosedError(f"direct connection to {self.peer} is closed")
            self._users += 1
        try:
            yield self.tls
        finally:
            with self._lock:
                self._users -= 1
                release = self._closing and self._users == 0
            if release:
                self._release()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            release = self._users == 0
        with suppress(OSError):
            self.tls.sock.shutdown(socket.SHUT_RDWR)
        if release:
            self._release()

    def _release(self) -> None:
        with suppress(OSError):
            self.tls.sock.close()

    # Blocking helpers, run in a thread.

    def send_record(self, kind: int, payload: bytes = b"") -> None:
        with self.using() as tls:
            tls.sendall(RECORD_HEADER.pack(kind, len(payload)) + payload)

    def recv_record(self, allowed: Iterable[int], limit: int) -> tuple[int, bytes]:
        with self.using() as tls:
            kind, length = parse_record_header(tls.recv_exactly(RECORD_HEADER.size), allowed, limit)
            return kind, tls.recv_exactly(length)


# --- connecting ---------------------------------------------------------------------------


def _first_connection(endpoints: list[Endpoint], deadline: float) -> tuple[socket.socket, Endpoint]:
    """A TCP connection to whichever of ``endpoints`` answers first, all tried at once until
    ``deadline`` (a ``time.monotonic`` value): one endpoint that drops packets costs no time
    of the others'. The others' attempts are closed. Blocking."""
    problems: list[str] = []
    pending: dict[socket.socket, Endpoint] = {}
    selector = selectors.DefaultSelector()
    try:
        for endpoint in endpoints:
            sock = socket.socket(socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((endpoint.address, endpoint.port))
            if code in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                selector.register(sock, selectors.EVENT_WRITE, endpoint)
                pending[sock] = endpoint
            else:
                sock.close()
                problems.append(f"{endpoint}: {os.strerror(code)}")
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock, endpoint = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                selector.unregister(sock)
                del pending[sock]
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0:
                    sock.setblocking(True)
                    return sock, endpoint
                sock.close()
                problems.append(f"{endpoint}: {os.strerror(code)}")
        problems += [f"{endpoint}: no answer in time" for endpoint in pending.values()]
        raise ConnectionError("; ".join(problems) or "no address to connect to")
    finally:
        for sock in pending:
            sock.close()
        selector.close()


def _present_token(raw: socket.socket, fingerprint: str, token_bytes: bytes, deadline: float) -> TlsStream:
    """TLS over ``raw``, the pinned fingerprint checked, the token presented and accepted.
    Blocking; every step bounded by ``deadline``; ``raw`` is closed on failure."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no connection within {CONNECT_TIMEOUT:g} s")
        return left

    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(remaining())
        tls = TlsStream(raw, _client_context(), server_side=False)
        tls.deadline = deadline
        tls.handshake()
        shown = hashlib.sha256(tls.peer_certificate()).hexdigest()
        if not hmac.compare_digest(shown, fingerprint):
            raise ssl.SSLError(f"certificate fingerprint {shown[:16]}... is not the offered {fingerprint[:16]}...")
        raw.settimeout(remaining())
        tls.sendall(token_bytes)
        answer = bytearray(1)
        if tls.recv_into(memoryview(answer), 1) != 1 or bytes(answer) != TOKEN_ACCEPTED:
            raise ConnectionRefusedError("the token was not accepted")
        tls.deadline = None
        raw.settimeout(None)
    except BaseException:
        raw.close()
        raise
    return tls


def _connect_one(address: str, port: int, fingerprint: str, token_bytes: bytes, deadline: float) -> Connection:
    """Connect, check the pinned fingerprint, present the token, wait for its acceptance.
    Blocking; every step bounded by ``deadline`` (a ``time.monotonic`` value)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"no connection within {CONNECT_TIMEOUT:g} s")
    raw = socket.create_connection((address, port), timeout=left)
    return Connection(_present_token(raw, fingerprint, token_bytes, deadline), str(Endpoint(address, port)))


def connect_pair(endpoints: list[Endpoint], offer: DirectOffer, deadline: float) -> dict[str, Connection]:
    """Both connections (by whose files they carry) to the first of ``endpoints`` that answers
    (all are tried at once). Raises ``ConnectionError`` (or ``OSError``, ``ssl.SSLError``)
    saying what happened at each, for this side's log only."""
    if not endpoints:
        raise ConnectionRefusedError(f"no usable address among those offered ({offer.addresses or 'none'})")
    raw, endpoint = _first_connection(endpoints, deadline)
    made: dict[str, Connection] = {}
    try:
        made["client"] = Connection(
            _present_token(raw, offer.fingerprint, bytes.fromhex(offer.client_token), deadline), str(endpoint)
        )
        made["worker"] = _connect_one(
            endpoint.address, endpoint.port, offer.fingerprint, bytes.fromhex(offer.worker_token), deadline
        )
    except (OSError, ssl.SSLError, ConnectionClosedError) as error:
        for connection in made.values():
            connection.close()
        raise ConnectionError(f"{endpoint}: {describe(error)}") from None
    return made


# --- listening ----------------------------------------------------------------------------


class _Acceptor:
    """Listening sockets on one port, one per address, and the TLS handshake and token of each
    newcomer (in a thread of its own, bounded in time), which is handed to the :class:`Listener`
    that issued its token; strangers get nothing. An ephemeral port's acceptor serves one
    listener; a fixed port's serves every listener of the process that is open at the time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.loop = loop
        self.port = port
        self._identity = identity()
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._pending = 0
        self._sockets: dict[str, socket.socket] = {}
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    def bind(self, addresses: list[str]) -> list[str]:
        """Listen on those of ``addresses`` not listened on yet (at this port; an ephemeral
        port is chosen by the first); the ones listened on among ``addresses``."""
        for address in addresses:
            if address in self._sockets:
                continue
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, self.port))
                sock.listen(64)
                sock.setblocking(False)
            except OSError as error:
                sock.close()
                logger.debug("direct: cannot listen on {}: {}", Endpoint(address, self.port), error)
                continue
            self.port = self.port or sock.getsockname()[1]
            self._sockets[address] = sock
            self._tasks.append(self.loop.create_task(self._accept(sock)))
        return [address for address in addresses if address in self._sockets]

    def attach(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def detach(self, listener: Listener) -> bool:
        """Forget ``listener``; True when no listener is left (then the acceptor closed)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
            empty = not self._listeners
        if empty:
            self.close()
        return empty

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for task in self._tasks:
            task.cancel()
        for sock in self._sockets.values():
            with suppress(OSError):
                sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                connection, address = await self.loop.sock_accept(sock)
            except OSError as error:
                if self._closed:
                    return
                logger.debug("direct: accept failed: {}", error)
                await asyncio.sleep(0.05)
                continue
            with self._lock:
                admit = self._pending < MAX_PENDING_HANDSHAKES and not self._closed
                if admit:
                    self._pending += 1
            if not admit:
                connection.close()
                continue
            threading.Thread(
                target=self._handshake, args=(connection, f"{address[0]}:{address[1]}"), daemon=True
            ).start()

    def _handshake(self, raw: socket.socket, peer: str) -> None:
        """A newcomer's TLS handshake and token, in its own thread, bounded in time."""
        handed_over = False
        try:
            raw.setblocking(True)
            raw.settimeout(HANDSHAKE_TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = TlsStream(raw, self._identity.server_context, server_side=True)
            # The whole of the handshake and the token, not each read: a stranger trickling a
            # byte at a time holds its thread (and one of the few places) no longer than this.
            tls.deadline = time.monotonic() + HANDSHAKE_TIMEOUT
            tls.handshake()
            presented = bytearray(TOKEN_BYTES)
            got = 0
            while got < TOKEN_BYTES:
                count = tls.recv_into(memoryview(presented)[got:], TOKEN_BYTES - got)
                if not count:
                    raise ConnectionAbortedError("closed before presenting a token")
                got += count
            tls.deadline = None
            with self._lock:
                listeners = list(self._listeners)
            redeemed = next(
                ((listener, role) for listener in listeners if (role := listener.redeem(bytes(presented)))), None
            )
            if redeemed is None:
                raise PermissionError("wrong or used token")
            listener, role = redeemed
            connection = Connection(tls, peer)
            # Registered before the acceptance byte leaves, so the peer's next message over
            # the data channel always finds the connection here.
            self.loop.call_soon_threadsafe(listener.deliver, role, connection)
            handed_over = True
            tls.sendall(TOKEN_ACCEPTED)
            raw.settimeout(None)
        except (OSError, ssl.SSLError) as error:
            logger.debug("direct: refused a connection from {}: {}", peer, describe(error))
        finally:
            if not handed_over:
                raw.close()
            with self._lock:
                self._pending -= 1


#: The acceptors of fixed ports (``--direct-port``), shared by the sessions setting up at once.
_shared_acceptors: dict[int, _Acceptor] = {}


def _acceptor_for(loop: asyncio.AbstractEventLoop, port: int) -> _Acceptor:
    acceptor = _shared_acceptors.get(port)
    if acceptor is None or acceptor.loop is not loop:
        acceptor = _shared_acceptors[port] = _Acceptor(loop, port)
    return acceptor


def _forget_acceptor(acceptor: _Acceptor) -> None:
    if _shared_acceptors.get(acceptor.port) is acceptor:
        del _shared_acceptors[acceptor.port]


def check_port_free(port: int) -> None:
    """Raise ``OSError`` if this machine cannot listen on TCP ``port`` now (in use, or not
    allowed): what a fixed direct port needs, checked before a worker starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(1)


class Listener:
    """A TCP port on the given addresses that hands over exactly two connections, each
    authenticated by a one-time token; strangers get nothing.

    ``port`` 0 (the default): an ephemeral port of its own. Otherwise that fixed port, shared
    with every other listener of the process open at the same time (each connection goes to
    the listener whose token it presents). ``advertise``: an endpoint the offer names too (the
    public side of a port a NAT maps to this one).
    """

    def __init__(
        self,
        addresses: list[str],
        loop: asyncio.AbstractEventLoop,
        role: str,
        *,
        port: int = 0,
        advertise: Endpoint | None = None,
    ) -> None:
        #: Whose listener this is (``client`` or ``worker``).
        self.role = role
        self._loop = loop
        self._identity = identity()
        self.advertise = advertise
        self.tokens = {"client": secrets.token_bytes(TOKEN_BYTES), "worker": secrets.token_bytes(TOKEN_BYTES)}
        self.arrived: dict[str, asyncio.Future[Connection]] = {role: loop.create_future() for role in self.tokens}
        self._token_lock = threading.Lock()
        self._closed = False
        self._acceptor = _acceptor_for(loop, port) if port else _Acceptor(loop, 0)
        self.addresses = self._acceptor.bind(addresses)
        if not self.addresses:
            if self._acceptor.detach(self):
                _forget_acceptor(self._acceptor)
            where = ", ".join(str(Endpoint(address, port)) if port else address for address in addresses)
            raise TransferError(f"cannot listen on any of {where or 'no addresses'}")
        self._acceptor.attach(self)
        self.port = self._acceptor.port

    def offer(self) -> DirectOffer:
        entries = [*self.addresses, *([str(self.advertise)] if self.advertise is not None else [])]
        return DirectOffer(
            self.port,
            self._identity.fingerprint,
            self.tokens["client"].hex(),
            self.tokens["worker"].hex(),
            ",".join(entries),
        )

    def redeem(self, presented: bytes) -> str | None:
        """The role of a token this listener issued and nobody presented before (then it is
        used up), else None. Called from handshake threads."""
        with self._token_lock:
            if self._closed:
                return None
            for role, expected in list(self.tokens.items()):
                if hmac.compare_digest(presented, expected):
                    del self.tokens[role]  # one time only
                    return role
        return None

    def deliver(self, role: str, connection: Connection) -> None:
        """On the event loop: the connection that presented ``role``'s token."""
        future = self.arrived[role]
        if self._closed or future.done():
            connection.close()
            return
        future.set_result(connection)

    async def pair(self) -> dict[str, Connection]:
        return {role: await future for role, future in self.arrived.items()}

    def close(self) -> None:
        """Stop listening (a shared port: for this listener; the port closes with the last);
        connections already handed over stay open."""
        with self._token_lock:
            if self._closed:
                return
            self._closed = True
            self.tokens.clear()
        if self._acceptor.detach(self):
            _forget_acceptor(self._acceptor)
        for future in self.arrived.values():
            if not future.done():
                future.set_exception(ConnectionClosedError("the direct listener closed"))
                future.exception()  # retrieved: nobody may be waiting
