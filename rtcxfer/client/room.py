"""A room's workers, seen from a client: listing them and getting a session with one.

:func:`list_workers` is what ``rtcxfer workers`` shows; :func:`open_session_in_room` is how
:meth:`rtcxfer.client.rtc_client.RTCClient.connect` picks a worker by the rules of
:mod:`rtcxfer.client.worker_choice`, tries the next one when a worker is full, and waits in the queue
(telling the user where it stands) when every matching worker is busy.

A worker's self-description is only a claim: any peer holding the signaling server's token can
register as a worker that advertises eight H100s. So a worker that fails authentication is
skipped, not fatal: the next one is tried, and only when every matching worker failed does the
session fail, blaming the workers that could not prove the token (:class:`UnprovenWorkerError`)
apart from those that refused this client's (:class:`TokenRefusedError`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from rtcxfer.client.worker_choice import (
    Requirement,
    WorkerInfo,
    describe_room,
    matching,
    queue_position,
    rank,
)
from rtcxfer.log import logger
from rtcxfer.net.signaling import (
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    SignalingClient,
    SignalingServerError,
    SignalingTimeoutError,
)
from rtcxfer.protocol.errors import (
    AuthenticationError,
    NoWorkerError,
    SignalingError,
    TokenRefusedError,
    UnprovenWorkerError,
    WorkerBusyError,
    WorkerWaitTimeoutError,
    describe,
)

__all__ = ["RoomWait", "list_workers", "open_session_in_room"]


async def list_workers(
    signaling_url: str, room: str, *, signaling_token: str | None = None, settle: float = 0.0, ssl=None
) -> list[WorkerInfo]:
    """The workers of ``room`` now, with their descriptions, in the order they joined (``ssl``: the
    ``ssl.SSLContext`` for a ``wss://`` server)."""
    async with SignalingClient(signaling_url, room, "client", None, signaling_token, ssl=ssl) as signaling:
        if settle:
            await asyncio.sleep(settle)
        return [WorkerInfo(peer, description) for peer, description in signaling.workers.items()]


async def open_session_in_room(
    signaling,
    open_session: Callable[[str], Awaitable[None]],
    *,
    worker_id: str | None = None,
    requirements: Iterable[Requirement] = (),
    own_fingerprint: str | None = None,
    timeout: float | None = 30.0,
    notice: Callable[[str], None] = lambda text: None,
    rejoin: Callable[[], Awaitable[Any]] | None = None,
) -> str:
    """Open a session with the best worker of the room for this job and return its id.

    ``open_session(worker_id)`` connects and authenticates, raising :class:`WorkerBusyError`
    when that worker is full and :class:`AuthenticationError` when it fails authentication
    (then the next worker is tried). Raises :class:`NoWorkerError` at once when ``worker_id`` is
    not in the room or no worker meets ``requirements``; raises an :class:`AuthenticationError`
    naming them when every matching worker failed authentication.

    ``timeout`` bounds the whole wait (None: no limit): for a first worker to join the room
    (then :class:`SignalingTimeoutError`) and for a busy or draining one to take the job (then
    :class:`WorkerWaitTimeoutError`, saying what it waited for). ``rejoin()`` registers this
    client again and returns its new signaling connection: a long wait uses it to keep its place
    in the room (see :class:`RoomWait`); without it a wait ends with the connection.
    """
    needed = list(requirements)
    earlier_clients = {peer for peer, role in signaling.peers.items() if role == "client"}
    wait = RoomWait(signaling, timeout, rejoin)
    refused: set[str] = set()
    #: Workers that failed authentication: not tried again in this search.
    failed: dict[str, AuthenticationError] = {}
    tried = False
    last_notice = ""
    while True:
        while not wait.signaling.workers:
            await wait.for_change(SignalingTimeoutError(f"no worker joined room {signaling.room!r} {within(timeout)}"))
        workers = [WorkerInfo(peer, description) for peer, description in wait.signaling.workers.items()]
        if worker_id is not None:
            candidates = [w for w in workers if w.peer_id == worker_id]
            if not candidates:
                raise NoWorkerError(f"no worker {worker_id!r} in room {wait.signaling.room!r}; "
                                    f"the room has: {describe_room(workers)}")
        else:
            candidates = workers
        candidates = matching(candidates, needed)
        if not candidates:
            wanted = ", ".join(str(r) for r in needed)
            raise NoWorkerError(f"no worker in room {wait.signaling.room!r} meets {wanted}; "
                                f"the room has: {describe_room(workers)}")
        candidates = [w for w in candidates if w.peer_id not in failed]
        if not candidates:
            raise authentication_failure(failed)
        ordered = rank(candidates, own_fingerprint)
        ready = [w for w in ordered if w.free_slots > 0 and w.peer_id not in refused]
        if not ready and not tried:
            # The descriptions may be stale; the worker's own refusal is the authority.
            ready = [w for w in ordered if w.peer_id not in refused][:1]
        for candidate in ready:
            tried = True
            wait.relayed()
            try:
                await open_session(candidate.peer_id)
            except WorkerBusyError as busy:
                refused.add(candidate.peer_id)
                notice(f"{busy}; trying the next worker")
                continue
            except AuthenticationError as error:
                failed[candidate.peer_id] = error
                notice(f"worker {candidate.peer_id}: {error}; trying the next worker")
                continue
            return candidate.peer_id
        if all(w.peer_id in failed for w in candidates):
            raise authentication_failure(failed)
        text = waiting_text(candidates, ordered, worker_id, earlier_clients, wait.signaling.peers)
        if text != last_notice:
            notice(text)
            last_notice = text
        what = waited_for(candidates, ordered, worker_id)
        await wait.for_change(WorkerWaitTimeoutError(f"no worker took the job {within(timeout)}: {what}"))
        refused.clear()


def waiting_text(candidates: list[WorkerInfo], ordered: list[WorkerInfo], worker_id: str | None,
                 earlier_clients: set[str], peers: dict[str, str]) -> str:
    """What a client waiting for a worker tells its user."""
    names = ", ".join(w.peer_id for w in candidates)
    if ordered:
        clients = {peer for peer, role in peers.items() if role == "client"}
        position = queue_position(len(earlier_clients & clients), sum(w.running for w in candidates))
        return f"every matching worker is busy ({names}); waiting in the queue, about position {position}"
    if worker_id is not None:
        return (f"worker {worker_id} is draining (it finishes its running jobs and takes no new ones); "
                "waiting for it to take jobs again (restarted with the same --peer-id)")
    return f"every matching worker is draining ({names}); waiting for another to join"


def within(timeout: float | None) -> str:
    return f"within {timeout:g} s" if timeout is not None else "without a time limit"


def waited_for(candidates: list[WorkerInfo], ordered: list[WorkerInfo], worker_id: str | None) -> str:
    """What a wait that timed out waited for, for its error."""
    if ordered:
        return f"every matching worker stayed busy ({', '.join(w.peer_id for w in candidates)})"
    if worker_id is not None:
        return f"worker {worker_id} stayed draining (it finishes its running jobs and takes no new ones)"
    return f"every matching worker stayed draining ({', '.join(w.peer_id for w in candidates)})"


def authentication_failure(failed: dict[str, AuthenticationError]) -> AuthenticationError:
    """The error for a search in which every matching worker failed authentication: the
    workers' fault (:class:`UnprovenWorkerError`) unless one refused this client's token."""
    unproven = sorted(peer for peer, error in failed.items() if isinstance(error, UnprovenWorkerError))
    refusing = sorted(peer for peer, error in failed.items() if not isinstance(error, UnprovenWorkerError))
    if len(failed) == 1:
        ((peer, error),) = failed.items()
        return type(error)(f"worker {peer}: {error}")
    if not refusing:
        return UnprovenWorkerError(
            f"no worker proved it knows the token ({', '.join(unproven)}): each may be an impostor registered "
            "with the signaling server's token, or a relay in between; nothing was sent to them"
        )
    also = f"; {', '.join(unproven)} could not prove it knows the token" if unproven else ""
    return TokenRefusedError(f"{', '.join(refusing)} refused this client's token{also}")


class RoomWait:
    """A client's wait in the room: one deadline for the whole search, and its place kept.

    The signaling server closes a client that has relayed nothing within its idle limit of
    registering (``rtcxfer signal --idle-timeout``, 120 s by default: a place in a room is for a
    handshake). A client that waits for a worker to join, free a slot or finish draining has
    relayed nothing yet, so before that limit it registers again, under the same peer id
    (``rejoin``): after :data:`REJOIN_AFTER` seconds, and at once when the server closed it
    anyway (a server with a shorter limit; the next rejoin then comes sooner, at three quarters
    of the time that connection lasted). Once it has relayed (an offer to a worker), the server's
    idle limit no longer applies to that connection.
    """

    def __init__(self, signaling, timeout: float | None, rejoin: Callable[[], Awaitable[Any]] | None) -> None:
        self.signaling = signaling
        self._rejoin = rejoin
        loop = asyncio.get_running_loop()
        self._deadline = None if timeout is None else loop.time() + timeout
        self._joined_at = loop.time()
        self._rejoin_after = REJOIN_AFTER
        self._relayed = False

    def relayed(self) -> None:
        """This connection relayed an offer: the server's idle limit is behind it."""
        self._relayed = True

    async def for_change(self, expired: BaseException) -> None:
        """Return once the room changed (a peer joined, left or described itself anew), after a
        rejoin (the room is seen afresh), or after :data:`LOOK_AGAIN` seconds (a refusal may have
        been a moment's); raise ``expired`` at the deadline."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._deadline is not None and now >= self._deadline:
            raise expired
        limit = LOOK_AGAIN
        if self._deadline is not None:
            limit = min(limit, self._deadline - now)
        keep_place = self._rejoin is not None and not self._relayed
        if keep_place:
            due = self._joined_at + self._rejoin_after - now
            if due <= 0:
                await self._register_again("its place in the room kept")
                return
            limit = min(limit, due)
        try:
            event = await self.signaling.receive(timeout=limit)
        except SignalingTimeoutError:
            return
        except SignalingServerError as error:
            logger.debug("signaling while waiting for a worker: {}", describe(error))
            return
        except SignalingError as error:
            lasted = loop.time() - self._joined_at
            if self._rejoin is None or lasted < MIN_CONNECTION_LIFE:
                raise
            if not self._relayed:
                # Closed for idling, most likely: this server's limit is shorter than ours.
                self._rejoin_after = max(MIN_CONNECTION_LIFE, min(self._rejoin_after, lasted * 3 / 4))
            await self._register_again(f"the signaling connection ended ({describe(error)})")
            return
        if not isinstance(event, (PeerJoined, PeerLeft, PeerUpdated)):
            logger.debug("signaling while waiting for a worker: {}", event)

    async def _register_again(self, why: str) -> None:
        assert self._rejoin is not None
        logger.info("waiting for a worker: registering again in room {} ({})", self.signaling.room, why)
        self.signaling = await self._rejoin()
        self._joined_at = asyncio.get_running_loop().time()
        self._relayed = False


#: Seconds a waiting client stays registered before it registers again (below the signaling
#: server's default idle limit, 120 s).
REJOIN_AFTER = 90.0
#: A connection that ends sooner than this after registering is not registered again (a server
#: that closes every new client would otherwise be hammered).
MIN_CONNECTION_LIFE = 1.0
#: Seconds after which a waiting client looks at the room again even if nothing changed.
LOOK_AGAIN = 30.0
