"""What a worker grants peers that have not proved the token yet.

In the spirit of OpenSSH's ``MaxStartups`` and ``LoginGraceTime``: a worker lets only a few
sessions be in the handshake or authentication phase at once, gives each a deadline to prove the
token, and drops offers beyond that before it creates anything for them (no peer connection,
no socket, no directory). What an attacker without the token can then cost is bounded by
these numbers, whatever it sends.

First come is not first served: peers that hold only the signaling token, each re-sending a
canned offer, would otherwise keep every place and a real client would never get one. So, as
OpenSSH's ``start:rate:full``, once ``early_drop_start`` places are taken a new peer's offer is
dropped at random, with a probability rising from ``early_drop_rate`` as the places fill;
with every place taken, an offer that survives the draw takes the place of the *oldest*
handshake (a real client's is over within a second or two; a squatter's is the one that lasts),
and a handshake must have its data channel open within ``setup_timeout``. A client re-sends an
unanswered offer (:func:`rtcxfer.net.peer.connect_via`), so a dropped one costs it a retry; the
same offer again, while its handshake is under way, is a duplicate and changes nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import attrs

from rtcxfer.net.rate_limits import TokenBucket

#: The chance a new peer's offer is dropped with every pre-authentication place taken.
DROP_AT_FULL = 0.5


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
    * ``early_drop_start`` / ``early_drop_rate``: from this many unauthenticated sessions on, a
      new peer's offer is dropped at random, with probability ``early_drop_rate`` rising to
      :data:`DROP_AT_FULL` at ``max_unauthenticated`` (where a surviving offer evicts the
      oldest handshake).
    * ``setup_timeout``: seconds from the offer to an open data channel (ICE, DTLS, SCTP). Set
      as ICE's own limit (:data:`rtcxfer.net.peer.ICE_TIMEOUT`), so that a handshake cut off
      here is diagnosed as ICE's failure, as the client diagnoses it.
    """

    max_unauthenticated: int = 8
    auth_timeout: float = 20.0
    offers_per_second: float = 10.0
    offer_burst: int = 30
    max_bad_frames_unauthenticated: int = 2
    max_bad_frames: int = 100
    max_handshake_restarts: int = 2
    early_drop_start: int = 4
    early_drop_rate: float = 0.3
    setup_timeout: float = 15.0

    def __attrs_post_init__(self) -> None:
        if self.max_unauthenticated < 1 or self.auth_timeout <= 0 or self.max_handshake_restarts < 0:
            raise ValueError("max_unauthenticated must be at least 1, auth_timeout positive and "
                             "max_handshake_restarts not negative")
        if self.early_drop_start < 0 or not 0 <= self.early_drop_rate <= 1 or self.setup_timeout <= 0:
            raise ValueError("early_drop_start must not be negative, early_drop_rate between 0 and 1 and "
                             "setup_timeout positive")

    def drop_probability(self, held: int) -> float:
        """The chance a new peer's offer is dropped when ``held`` places are taken: none below
        ``early_drop_start``, then rising from ``early_drop_rate`` to :data:`DROP_AT_FULL` (or
        ``early_drop_rate`` if more) with every place taken, where an offer that survives the
        draw evicts the oldest handshake. Not 1 there, unlike OpenSSH's ``full``: the squatters
        a real client must get past then hold every place."""
        full = self.max_unauthenticated
        start = min(self.early_drop_start, full)
        if held < start:
            return 0.0
        at_full = max(self.early_drop_rate, DROP_AT_FULL)
        if held >= full or start == full:
            return at_full
        return self.early_drop_rate + (at_full - self.early_drop_rate) * (held - start) / (full - start)


@attrs.define(eq=False)
class Startup:
    """One peer's handshake holding a slot, from its offer until it authenticates or ends.

    ``replaces``: the same peer's earlier handshake that this one replaced, ``evicts``: the
    oldest handshake whose place this one took (the worker ends either); ``task``: whatever the
    worker runs for it (set by the worker, for a later replacement or eviction); ``offer``: what
    identifies the offer (a re-sent copy is a duplicate)."""

    client_id: str
    offer: str = ""
    replaces: Startup | None = None
    evicts: Startup | None = None
    task: object = None


#: :meth:`Startups.admit`'s answer to a copy of the offer whose handshake is under way.
DUPLICATE_OFFER = "the same offer again: its handshake is under way"


class Startups:
    """The worker's unauthenticated sessions: who holds a slot, and whether a new offer gets one.

    One slot per peer id: a new offer from a peer whose handshake is under way replaces that
    handshake (at most ``max_handshake_restarts`` times in a row), so a client can try again
    (relay candidates only, after ICE found no pair) without waiting for the worker to give up."""

    def __init__(
        self,
        limits: WorkerLimits,
        clock: Callable[[], float] = time.monotonic,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.limits = limits
        #: By peer, in the order their handshakes began (a replacement keeps its peer's place).
        self._holders: dict[str, Startup] = {}
        self._restarts: dict[str, int] = {}
        self._bucket = TokenBucket(limits.offers_per_second, limits.offer_burst, clock)
        self._chance = chance

    def __len__(self) -> int:
        return len(self._holders)

    def admit(self, client_id: str, offer: str = "") -> Startup | str:
        """Take a slot for ``client_id``: its :class:`Startup` if granted (``replaces`` set when it
        takes over the peer's handshake under way, ``evicts`` when it takes the oldest one's
        place), else why not (:data:`DUPLICATE_OFFER` for a copy of the offer under way)."""
        current = self._holders.get(client_id)
        held = len(self._holders)
        oldest = None
        if current is not None:
            if offer and current.offer == offer:
                return DUPLICATE_OFFER
            restarts = self._restarts.get(client_id, 0)
            if restarts >= self.limits.max_handshake_restarts:
                return (f"a handshake with this peer is already under way (restarted {restarts} times, "
                        "max_handshake_restarts)")
        else:
            if self._chance() < self.limits.drop_probability(held):
                return f"dropped at random: {held} of {self.limits.max_unauthenticated} unauthenticated places taken"
            if held >= self.limits.max_unauthenticated:
                oldest = next(iter(self._holders.values()))
        if not self._bucket.take():
            return f"more than {self.limits.offers_per_second:g} offers/s"
        if current is not None:
            self._restarts[client_id] = self._restarts.get(client_id, 0) + 1
        if oldest is not None:
            self.release(oldest)
        startup = Startup(client_id, offer, replaces=current, evicts=oldest)
        self._holders[client_id] = startup
        return startup

    def release(self, startup: Startup) -> None:
        """Give the slot back (authenticated, or the attempt ended); idempotent, and nothing
        once a newer handshake of the same peer replaced this one."""
        if self._holders.get(startup.client_id) is startup:
            del self._holders[startup.client_id]
            self._restarts.pop(startup.client_id, None)
