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
    describe,
)

__all__ = ["list_workers", "open_session_in_room"]


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
    timeout: float = 30.0,
    notice: Callable[[str], None] = lambda text: None,
) -> str:
    """Open a session with the best worker of the room for this job and return its id.

    ``open_session(worker_id)`` connects and authenticates, raising :class:`WorkerBusyError`
    when that worker is full and :class:`AuthenticationError` when it fails authentication
    (then the next worker is tried). Raises :class:`NoWorkerError` at once when ``worker_id`` is
    not in the room or no worker meets ``requirements``; waits up to ``timeout`` s for a first
    worker; raises an :class:`AuthenticationError` naming them when every matching worker failed
    authentication.
    """
    needed = list(requirements)
    earlier_clients = {peer for peer, role in signaling.peers.items() if role == "client"}
    refused: set[str] = set()
    #: Workers that failed authentication: not tried again in this search.
    failed: dict[str, AuthenticationError] = {}
    tried = False
    last_notice = ""
    while True:
        if not signaling.workers:
            await signaling.wait_for_peer("worker", timeout)
        workers = [WorkerInfo(peer, description) for peer, description in signaling.workers.items()]
        if worker_id is not None:
            candidates = [w for w in workers if w.peer_id == worker_id]
            if not candidates:
                raise NoWorkerError(f"no worker {worker_id!r} in room {signaling.room!r}; "
                                    f"the room has: {describe_room(workers)}")
        else:
            candidates = workers
        candidates = matching(candidates, needed)
        if not candidates:
            wanted = ", ".join(str(r) for r in needed)
            raise NoWorkerError(f"no worker in room {signaling.room!r} meets {wanted}; "
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
        clients = {peer for peer, role in signaling.peers.items() if role == "client"}
        busy_slots = sum(w.running for w in candidates)
        position = queue_position(len(earlier_clients & clients), busy_slots)
        names = ", ".join(w.peer_id for w in candidates)
        text = (f"every matching worker is busy ({names}); waiting in the queue, about position {position}"
                if ordered else f"every matching worker is draining ({names}); waiting for another to join")
        if text != last_notice:
            notice(text)
            last_notice = text
        await _wait_for_room_change(signaling)
        refused.clear()


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


async def _wait_for_room_change(signaling) -> None:
    """Read signaling events until a peer joins, leaves or changes (the reader updates the room)."""
    while True:
        try:
            event = await signaling.receive(timeout=30.0)
        except SignalingTimeoutError:
            return  # look again anyway: a refusal may have been a moment's
        except SignalingServerError as error:
            logger.debug("signaling while queued: {}", describe(error))
            continue
        except SignalingError:
            raise
        if isinstance(event, (PeerJoined, PeerLeft, PeerUpdated)):
            return
