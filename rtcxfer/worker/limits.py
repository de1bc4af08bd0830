"""What a worker grants peers that have not proved the token yet.

In the spirit of OpenSSH's ``MaxStartups`` and ``LoginGraceTime``: a worker lets only a few
sessions be in the handshake or authentication phase at once, gives each a deadline to prove the
token, and drops offers beyond that before it creates anything for them (no peer connection,
no socket, no directory). What an attacker without the token can then cost is bounded by
these numbers, whatever it sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from rtcxfer.net.rate_limits import TokenBucket


@attrs.frozen
class WorkerLimits:
    """What a worker grants peers that have not proved the token yet.

    * ``max_unauthenticated``: sessions at once between an offer and authentication; offers
      beyond it are dropped unanswered (MaxStartups).
    * ``auth_timeout``: seconds from the offer to an authenticated session (ICE, DTLS, HELLO
      and the proof); the session is closed when it runs out (LoginGraceTime).
    * ``offers_per_second`` / ``offer_burst``: new offers looked at; also keeps the worker's own
      answers well under the signaling server's rate limit, however many offers arrive.
    * ``max_bad_frames_unauthenticated`` / ``max_bad_frames``: unusable messages tolerated
      before the session is closed, before and after authentication.
    """

    max_unauthenticated: int = 8
    auth_timeout: float = 20.0
    offers_per_second: float = 10.0
    offer_burst: int = 30
    max_bad_frames_unauthenticated: int = 2
    max_bad_frames: int = 100

    def __attrs_post_init__(self) -> None:
        if self.max_unauthenticated < 1 or self.auth_timeout <= 0:
            raise ValueError("max_unauthenticated must be at least 1 and auth_timeout positive")


class Startups:
    """The worker's unauthenticated sessions: who holds a slot, and whether a new offer gets one."""

    def __init__(self, limits: WorkerLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._holders: set[str] = set()
        self._bucket = TokenBucket(limits.offers_per_second, limits.offer_burst, clock)

    def __len__(self) -> int:
        return len(self._holders)

    def admit(self, client_id: str) -> str | None:
        """Take a slot for ``client_id``; None if granted, else why not."""
        if client_id in self._holders:
            return "a handshake with this peer is already under way"
        if len(self._holders) >= self.limits.max_unauthenticated:
            return f"{len(self._holders)} unauthenticated sessions already (max_unauthenticated)"
        if not self._bucket.take():
            return f"more than {self.limits.offers_per_second:g} offers/s"
        self._holders.add(client_id)
        return None

    def release(self, client_id: str) -> None:
        """Give the slot back (authenticated, or the attempt ended); idempotent."""
        self._holders.discard(client_id)
