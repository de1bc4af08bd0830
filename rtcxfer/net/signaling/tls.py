"""TLS for the signaling server (``wss://``): the server's context from its certificate and key,
and a client's context that verifies the server against the system's trusted CAs or a private CA.

Over ``ws://`` the room token (an HMAC of the secret, never the secret) and the TURN credentials
the server hands out cross the network in clear text: anyone on the path can join the room and
use the TURN server until the credentials expire. ``wss://`` keeps both between the peer and the
server.
"""

from __future__ import annotations

import os
import ssl

from rtcxfer.protocol.errors import SignalingError

__all__ = ["TlsFileError", "client_context", "server_context"]


class TlsFileError(SignalingError):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


def _why(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def client_context(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A context that verifies the signaling server's certificate and host name: against the
    certificates in ``ca_file`` alone (a private CA), or, without one, the system's trusted CAs."""
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file is not None else None)
    except (OSError, ValueError) as error:
        raise TlsFileError(f"cannot use the CA file {os.fspath(ca_file or '')}: {_why(error)}") from None


def server_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The signaling server's context: its certificate chain (``certfile``, PEM, the server's
    certificate first) and private key (``keyfile``, or in ``certfile`` itself)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(os.fspath(certfile), os.fspath(keyfile) if keyfile is not None else None)
    except (OSError, ValueError) as error:
        files = os.fspath(certfile) + (f" and {os.fspath(keyfile)}" if keyfile is not None else "")
        raise TlsFileError(f"cannot use the TLS certificate and key in {files}: {_why(error)}") from None
    return context
