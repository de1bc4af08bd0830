"""The payloads two rtcxfer peers relay to each other to open a WebRTC connection (sans-IO).

A client and a worker meet through the signaling server, which relays opaque JSON objects
(:class:`~rtcxfer.net.signaling.messages.Relay`). rtcxfer relays three shapes of them
(``docs/protocol.md``, section 1.4)::

    {"kind": "offer", "sdp": "<the complete SDP offer>"}       the client, to a worker
    {"kind": "answer", "sdp": "<the complete SDP answer>"}     the worker, to that client
    {"kind": "error", "message": "<what was expected>"}        instead of an answer; never answered

The field is ``kind``, not the browser API's ``type``. There is no trickle ICE: each side
gathers all its candidates first, so the handshake is exactly one message each way. Other keys
in a payload are ignored; a payload of none of these shapes decodes to ``None`` and the
receiver says what it expected (a worker) or gives up (a client).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

__all__ = ["HandshakePayload", "HandshakeRefusal", "SdpAnswer", "SdpOffer", "decode_handshake"]


@attrs.frozen
class SdpOffer:
    """The offerer's (the client's) session description."""

    KIND: ClassVar[str] = "offer"
    sdp: str

    def to_payload(self) -> dict[str, Any]:
        return {"kind": self.KIND, "sdp": self.sdp}


@attrs.frozen
class SdpAnswer:
    """The answerer's (the worker's) session description, in reply to an offer."""

    KIND: ClassVar[str] = "answer"
    sdp: str

    def to_payload(self) -> dict[str, Any]:
        return {"kind": self.KIND, "sdp": self.sdp}


@attrs.frozen
class HandshakeRefusal:
    """Instead of an answer: what the other side expected, for a person to read (peer text:
    quote it before logging or showing it)."""

    KIND: ClassVar[str] = "error"
    message: str

    def to_payload(self) -> dict[str, Any]:
        return {"kind": self.KIND, "message": self.message}


HandshakePayload = SdpOffer | SdpAnswer | HandshakeRefusal


def decode_handshake(payload: object) -> HandshakePayload | None:
    """The handshake message ``payload`` holds, or ``None`` if it is none of the three shapes."""
    if not isinstance(payload, Mapping):
        return None
    kind = payload.get("kind")
    if kind == SdpOffer.KIND and isinstance(payload.get("sdp"), str):
        return SdpOffer(payload["sdp"])
    if kind == SdpAnswer.KIND and isinstance(payload.get("sdp"), str):
        return SdpAnswer(payload["sdp"])
    if kind == HandshakeRefusal.KIND and isinstance(payload.get("message"), str):
        return HandshakeRefusal(payload["message"])
    return None
