"""Two sans-IO protocol engines wired back to back, in the manner of h11's ``ConnectionPair``.

Whatever one side sends is encoded exactly as it would go on the wire and fed to the other
side, so protocol behaviour can be tested without a network.
"""

from __future__ import annotations

from rtcxfer.protocol.engine import Claim, Engine, Event
from rtcxfer.protocol.frames import DEFAULT_CATALOGUE, Frame, FrameCatalogue

SIDES = ("client", "worker")


class EnginePair:
    """A client's engine and a worker's; ``send`` carries a frame across."""

    def __init__(self, claim: Claim, *, catalogue: FrameCatalogue = DEFAULT_CATALOGUE) -> None:
        self.engines = {side: Engine(claim, catalogue=catalogue) for side in SIDES}
        #: Every message that crossed, as (sender side, wire message).
        self.wire: list[tuple[str, str | bytes]] = []

    @staticmethod
    def other(side: str) -> str:
        return SIDES[1 - SIDES.index(side)]

    def send(self, side: str, frame: Frame) -> Event:
        """``side`` sends ``frame``; returns the event the other side gets."""
        message = self.engines[side].send(frame)
        return self.deliver(side, message)

    def send_chunk(self, side: str, transfer_id: str, offset: int, payload: bytes) -> Event:
        """``side`` sends bytes of an open transfer; returns the other side's event."""
        message = self.engines[side].chunk_header(transfer_id, offset) + payload
        return self.deliver(side, message)

    def deliver(self, side: str, message: str | bytes) -> Event:
        """Deliver a raw wire message as if ``side`` had sent it (for hostile-peer tests)."""
        self.wire.append((side, message))
        return self.engines[self.other(side)].receive(message)


#: The name :class:`EnginePair` had before the engine was called an engine.
SessionPair = EnginePair
