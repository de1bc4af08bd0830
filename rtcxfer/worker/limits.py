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
    * ``max_handshake_restarts``: how often a peer's new offer may replace its handshake under
      way (a client whose ICE found no pair tries again with relay candidates only) before
      further offers from it are dropped, until that handshake ends.
    """

    max_unauthenticated: int = 8
    auth_timeout: float = 20.0
    offers_per_second: float = 10.0
    offer_burst: int = 30
    max_bad_frames_unauthenticated: int = 2
    max_bad_frames: int = 100
    max_handshake_restarts: int = 2

    def __attrs_post_init__(self) -> None:
        if self.max_unauthenticated < 1 or self.auth_timeout <= 0 or self.max_handshake_restarts < 0:
            raise ValueError("max_unauthenticated must be at least 1, auth_timeout positive and "
                             "max_handshake_restarts not negative")


@attrs.define(eq=False)
class Startup:
    """One peer's handshake holding a slot, from its offer until it authenticates or ends.

    ``replaces``: the same peer's earlier handshake that this one replaced (the worker ends it);
    ``task``: whatever the worker runs for it (set by the worker, for a later replacement)."""

    client_id: str
    replaces: Startup | None = None
    task: object = None


class Startups:
    """The worker's unauthenticated sessions: who holds a slot, and whether a new offer gets one.

    One slot per peer id: a new offer from a peer whose handshake is under way replaces that
    handshake (at most ``max_handshake_restarts`` times in a row), so a client can try again
    (relay candidates only, after ICE found no pair) without waiting for the worker to give up."""

    def __init__(self, limits: WorkerLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._holders: dict[str, Startup] = {}
        self._restarts: dict[str, int] = {}
        self._bucket = TokenBucket(limits.offers_per_second, limits.offer_burst, clock)

    def __len__(self) -> int:
        return len(self._holders)

    def admit(self, client_id: str) -> Startup | str:
        """Take a slot for ``client_id``: its :class:`Startup` if granted (``replaces`` set when it
        takes over the peer's handshake under way), else why not."""
        current = self._holders.get(client_id)
        if current is not None:
            restarts = self._restarts.get(client_id, 0)
            if restarts >= self.limits.max_handshake_restarts:
                return (f"a handshake with this peer is already under way (restarted {restarts} times, "
                        "max_handshake_restarts)")
        elif len(self._holders) >= self.limits.max_unauthenticated:
            return f"{len(self._holders)} unauthenticated sessions already (max_unauthenticated)"
        if not self._bucket.take():
            return f"more than {self.limits.offers_per_second:g} offers/s"
        if current is not None:
            self._restarts[client_id] = self._restarts.get(client_id, 0) + 1
        startup = Startup(client_id, replaces=current)
        self._holders[client_id] = startup
        return startup

    def release(self, startup: Startup) -> None:
        """Give the slot back (authenticated, or the attempt ended); idempotent, and nothing
        once a newer handshake of the same peer replaced this one."""
        if self._holders.get(startup.client_id) is startup:
            del self._holders[startup.client_id]
            self._restarts.pop(startup.client_id, None)
