"""Rates a peer may not exceed, and logging that a flood cannot flood: :class:`TokenBucket`
and :class:`LogThrottle`, used by the signaling server, the link and the worker.

No asyncio here: the callers own the clock and the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` events per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class LogThrottle:
    """Says when a repeated event deserves a log line: the first time, then at most once per
    ``interval`` seconds, with the number of events not logged in between."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._suppressed = 0

    def check(self) -> int | None:
        """None: stay quiet; else log now, mentioning the returned count of quiet events."""
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self._interval
        quiet, self._suppressed = self._suppressed, 0
        return quiet
