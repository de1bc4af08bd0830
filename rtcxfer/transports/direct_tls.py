"""The TLS side of the ``direct`` transport (:mod:`rtcxfer.transports.direct`): this process's
certificate, a TLS 1.3 stream over a blocking socket, a connection of records, connecting with a
pinned fingerprint and a one-time token, and a listener that hands over exactly two
connections and gives strangers nothing.

Everything blocking here runs in threads; the listener's accept loop and hand-over run on the
event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import os
import secrets
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
    for the worker's. ``addresses`` is a comma-separated list."""

    port: int = integer()
    fingerprint: str = hex_digits(64)
    client_token: str = hex_digits(64)
    worker_token: str = hex_digits(64)
    addresses: str = text(greedy=True)


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

    Timeouts are the socket's (``sock.settimeout``). One thread at a time.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool) -> None:
        self.sock = sock
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


def _connect_one(address: str, port: int, fingerprint: str, token_bytes: bytes, deadline: float) -> Connection:
    """Connect, check the pinned fingerprint, present the token, wait for its acceptance.
    Blocking; every step bounded by ``deadline`` (a ``time.monotonic`` value)."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no connection within {CONNECT_TIMEOUT:g} s")
        return left

    raw = socket.create_connection((address, port), timeout=remaining())
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(remaining())
        tls = TlsStream(raw, _client_context(), server_side=False)
        tls.handshake()
        shown = hashlib.sha256(tls.peer_certificate()).hexdigest()
        if not hmac.compare_digest(shown, fingerprint):
            raise ssl.SSLError(f"certificate fingerprint {shown[:16]}... is not the offered {fingerprint[:16]}...")
        raw.settimeout(remaining())
        tls.sendall(token_bytes)
        answer = bytearray(1)
        if tls.recv_into(memoryview(answer), 1) != 1 or bytes(answer) != TOKEN_ACCEPTED:
            raise ConnectionRefusedError("the token was not accepted")
        raw.settimeout(None)
    except BaseException:
        raw.close()
        raise
    return Connection(tls, f"{address}:{port}")


def connect_pair(addresses: list[str], offer: DirectOffer, deadline: float) -> dict[str, Connection]:
    """Both connections (by whose files they carry) to the first address that works."""
    if not addresses:
        raise ConnectionRefusedError(f"no usable address among those offered ({offer.addresses or 'none'})")
    tokens = {"client": bytes.fromhex(offer.client_token), "worker": bytes.fromhex(offer.worker_token)}
    problems = []
    for address in addresses:
        made: dict[str, Connection] = {}
        try:
            for role, token_bytes in tokens.items():
                made[role] = _connect_one(address, offer.port, offer.fingerprint, token_bytes, deadline)
            return made
        except (OSError, ssl.SSLError, ConnectionClosedError) as error:
            for connection in made.values():
                connection.close()
            problems.append(f"{address}:{offer.port}: {describe(error)}")
            if time.monotonic() >= deadline:
                break
    raise ConnectionError("; ".join(problems))


# --- listening ----------------------------------------------------------------------------


class Listener:
    """An ephemeral TCP port on the given addresses that hands over exactly two connections,
    each authenticated by a one-time token; strangers get nothing."""

    def __init__(self, addresses: list[str], loop: asyncio.AbstractEventLoop, role: str) -> None:
        #: Whose listener this is (``client`` or ``worker``).
        self.role = role
        self._loop = loop
        self._identity = identity()
        self.tokens = {"client": secrets.token_bytes(TOKEN_BYTES), "worker": secrets.token_bytes(TOKEN_BYTES)}
        self.arrived: dict[str, asyncio.Future[Connection]] = {role: loop.create_future() for role in self.tokens}
        self._token_lock = threading.Lock()
        self._pending = 0
        self._sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self.port = 0
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, self.port))
                sock.listen(64)
                sock.setblocking(False)
            except OSError as error:
                sock.close()
                logger.debug("direct: cannot listen on {}: {}", address, error)
                continue
            self.port = self.port or sock.getsockname()[1]
            self._sockets.append(sock)
        self.addresses = [sock.getsockname()[0] for sock in self._sockets]
        if not self._sockets:
            raise TransferError(f"cannot listen on any of {', '.join(addresses) or 'no addresses'}")
        self._tasks = [loop.create_task(self._accept(sock)) for sock in self._sockets]

    def offer(self) -> DirectOffer:
        return DirectOffer(
            self.port,
            self._identity.fingerprint,
            self.tokens["client"].hex(),
            self.tokens["worker"].hex(),
            ",".join(self.addresses),
        )

    async def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                connection, address = await self._loop.sock_accept(sock)
            except OSError as error:
                if self._closed:
                    return
                logger.debug("direct: accept failed: {}", error)
                await asyncio.sleep(0.05)
                continue
            with self._token_lock:
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
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT
            raw.setblocking(True)
            raw.settimeout(HANDSHAKE_TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = TlsStream(raw, self._identity.server_context, server_side=True)
            tls.handshake()
            raw.settimeout(max(0.01, deadline - time.monotonic()))
            presented = bytearray(TOKEN_BYTES)
            got = 0
            while got < TOKEN_BYTES:
                count = tls.recv_into(memoryview(presented)[got:], TOKEN_BYTES - got)
                if not count:
                    raise ConnectionAbortedError("closed before presenting a token")
                got += count
                raw.settimeout(max(0.01, deadline - time.monotonic()))
            role = self._redeem(bytes(presented))
            if role is None:
                raise PermissionError("wrong or used token")
            connection = Connection(tls, peer)
            # Registered before the acceptance byte leaves, so the peer's next message over
            # the data channel always finds the connection here.
            self._loop.call_soon_threadsafe(self._deliver, role, connection)
            handed_over = True
            tls.sendall(TOKEN_ACCEPTED)
            raw.settimeout(None)
        except (OSError, ssl.SSLError) as error:
            logger.debug("direct: refused a connection from {}: {}", peer, describe(error))
        finally:
            if not handed_over:
                raw.close()
            with self._token_lock:
                self._pending -= 1

    def _redeem(self, presented: bytes) -> str | None:
        with self._token_lock:
            if self._closed:
                return None
            for role, expected in list(self.tokens.items()):
                if hmac.compare_digest(presented, expected):
                    del self.tokens[role]  # one time only
                    return role
        return None

    def _deliver(self, role: str, connection: Connection) -> None:
        future = self.arrived[role]
        if self._closed or future.done():
            connection.close()
            return
        future.set_result(connection)

    async def pair(self) -> dict[str, Connection]:
        return {role: await future for role, future in self.arrived.items()}

    def close(self) -> None:
        """Stop listening; connections already handed over stay open."""
        with self._token_lock:
            self._closed = True
            self.tokens.clear()
        for task in self._tasks:
            task.cancel()
        for sock in self._sockets:
            with suppress(OSError):
                sock.close()
        for future in self.arrived.values():
            if not future.done():
                future.set_exception(ConnectionClosedError("the direct listener closed"))
                future.exception()  # retrieved: nobody may be waiting
