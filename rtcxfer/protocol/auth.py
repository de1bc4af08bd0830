"""Mutual challenge-response authentication of a session: the token never crosses the wire.

Both peers know the worker's token. The client opens with a fresh nonce (``HELLO``), the worker
answers with its own (``AUTH_CHALLENGE``), the client proves it knows the token
(``AUTH_PROOF``), and only then does the worker prove it too (the proof in ``WELCOME``), so a
peer without the token learns nothing from the worker. Each proof is an HMAC-SHA256, keyed
with the token, over:

* a label naming the protocol and which side is proving (a client's proof is never a worker's);
* both nonces (a proof is good for this session only: nothing can be replayed);
* the SHA-256 fingerprints of both DTLS certificates *as each side saw them in its own DTLS
  handshake* (channel binding: a relay that terminates DTLS on both sides sees other
  certificates than the two real peers, so a proof it forwards does not verify at the other
  end, and it cannot splice two sessions together);
* the transports each side announced (no downgrade by editing them in flight).

Fields are length-prefixed, so no two different transcripts produce the same message.
A worker run without a token (``--insecure-no-token``) cannot prove anything; its ``WELCOME``
carries :data:`NO_PROOF`, and a client holding a token refuses it.

This module is part of the sans-IO core: it imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import attrs

#: Version of the transcript format below; part of every MAC.
LABEL = b"rtcxfer-auth-v2"
NONCE_BYTES = 32
#: The worker's proof in WELCOME when it has no token to prove anything with.
NO_PROOF = "none"


def is_nonce(text: str) -> bool:
    """Whether ``text`` has the wire form of a nonce (lowercase hex of NONCE_BYTES bytes)."""
    return len(text) == 2 * NONCE_BYTES and all(c in "0123456789abcdef" for c in text)


def new_nonce() -> str:
    """A fresh random nonce as lowercase hex (the wire form)."""
    return secrets.token_hex(NONCE_BYTES)


@attrs.frozen
class Transcript:
    """What both proofs of one session cover.

    ``client_fingerprint`` and ``worker_fingerprint`` are the DTLS certificate fingerprints of
    the client and of the worker ("" where the channel has none, as in tests without DTLS).
    """

    client_nonce: str
    worker_nonce: str
    client_fingerprint: str
    worker_fingerprint: str
    client_transports: str

    def message(self, role: bytes, *extra: str) -> bytes:
        fields = (
            role,
            self.client_nonce.encode(),
            self.worker_nonce.encode(),
            self.client_fingerprint.encode(),
            self.worker_fingerprint.encode(),
            self.client_transports.encode(),
            *(value.encode() for value in extra),
        )
        return LABEL + b"".join(len(field).to_bytes(4, "big") + field for field in fields)


#: A worker's token shorter than this is reported as weak (:func:`weak_token_reason`).
MIN_TOKEN_CHARS = 20
#: ... and so is one made of fewer distinct characters.
MIN_DISTINCT_TOKEN_CHARS = 8


def weak_token_reason(token: str) -> str | None:
    """Why ``token`` is easy to guess, or ``None``.

    The proofs never reveal the token, but a peer in the room that poses as the worker receives
    each connecting client's proof, and can test guesses against it offline as fast as it can
    compute HMACs: only a token too long to enumerate is safe. ``secrets.token_urlsafe(32)``
    gives 43 characters.
    """
    if len(token) < MIN_TOKEN_CHARS:
        return f"it has {len(token)} characters (fewer than {MIN_TOKEN_CHARS})"
    if len(set(token)) < MIN_DISTINCT_TOKEN_CHARS:
        return f"it uses only {len(set(token))} different characters"
    return None


def signaling_token(secret: str) -> str:
    """What the ``rtcxfer`` command presents to (and expects at) the signaling server for a
    room secret: an HMAC of it, so the secret itself, which is also the worker's token by
    default, never reaches the signaling server or the network. It admits a peer to the room;
    it cannot prove anything to a worker."""
    return _mac(secret, LABEL + b"/signaling")


def channel_fingerprints(channel: object) -> tuple[str, str]:
    """``(local, remote)`` DTLS fingerprints of a data channel that can tell them
    (``rtcxfer.net.peer.DataChannel.dtls_fingerprints``); ``("", "")`` for one that cannot."""
    get = getattr(channel, "dtls_fingerprints", None)
    fingerprints = get() if get is not None else None
    return fingerprints if fingerprints is not None else ("", "")


def _mac(token: str, message: bytes) -> str:
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def client_proof(token: str, transcript: Transcript) -> str:
    """The client's proof that it knows ``token`` (64 hex digits)."""
    return _mac(token, transcript.message(b"client"))


def worker_proof(token: str, transcript: Transcript, worker_transports: str) -> str:
    """The worker's proof that it knows ``token``; covers its announced transports too."""
    return _mac(token, transcript.message(b"worker", worker_transports))


def proofs_match(expected: str, received: str) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected.encode("ascii", "replace"), received.encode("ascii", "replace"))
