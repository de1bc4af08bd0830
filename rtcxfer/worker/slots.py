"""A worker's job slots and its draining state (sans-IO).

A slot is held by an authenticated session of rtcxfer's protocol from ``WELCOME`` until the
session ends, and by a legacy session (sleap-rtc's clients come back for every job) from a
job's announcement to its end: a session runs one job at a time, so a worker never runs more
jobs than it has slots, whichever dialect brought them. A full or draining worker refuses the
next session with a reason (``WORKER_BUSY``; a legacy client gets the reason as a line of text)
instead of queueing it, so that the client can try another worker or wait for a slot where it
can see the whole room.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from rtcxfer.protocol.worker_description import MAX_SLOTS, state_of


class JobSlots:
    """``slots`` places; ``on_change`` is called whenever the state others see changes."""

    def __init__(self, slots: int = 1, on_change: Callable[[], None] | None = None) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be from 1 to {MAX_SLOTS}")
        self.slots = slots
        self.draining = False
        self.on_change = on_change
        self._holders: set[Hashable] = set()
        #: The most holders there ever were at once (for status output and tests).
        self.peak = 0

    @property
    def running(self) -> int:
        return len(self._holders)

    @property
    def state(self) -> str:
        return state_of(self.running, self.slots, self.draining)

    def take(self, holder: Hashable) -> str | None:
        """Give ``holder`` a slot: None when it has one, else the reason it has not."""
        if holder in self._holders:
            return None
        if self.draining:
            return "the worker is draining: it finishes its running jobs and accepts no new ones"
        if self.running >= self.slots:
            return "its job slot is taken" if self.slots == 1 else f"all {self.slots} job slots are taken"
        self._holders.add(holder)
        self.peak = max(self.peak, self.running)
        self._changed()
        return None

    def release(self, holder: Hashable) -> None:
        if holder in self._holders:
            self._holders.discard(holder)
            self._changed()

    def drain(self) -> None:
        """Accept nothing new from now on; what runs finishes."""
        if not self.draining:
            self.draining = True
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
