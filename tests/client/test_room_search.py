"""How a client goes through a room's workers when some fail authentication (sans network: the
room is a stand-in for the signaling client, the sessions a stand-in for connecting)."""

from __future__ import annotations

import pytest

from rtcxfer.client.room import open_session_in_room
from rtcxfer.protocol.errors import TokenRefusedError, UnprovenWorkerError, WorkerBusyError, WorkerWaitTimeoutError
from rtcxfer.testing import run_async

IDLE_BIG = {"state": "idle", "slots": 8, "running": 0, "gpus": [{"model": "H100", "memory_mb": 81920}] * 8}
IDLE_SMALL = {"state": "idle", "slots": 1, "running": 0, "gpus": [{"model": "T4", "memory_mb": 16000}]}


class Room:
    def __init__(self, workers: dict[str, dict]) -> None:
        self.room = "lab"
        self.workers = workers
        self.peers = {peer: "worker" for peer in workers}


def search(workers: dict[str, dict], outcomes: dict[str, Exception | None]) -> tuple[str | Exception, list, list]:
    tried: list[str] = []
    notices: list[str] = []

    async def open_session(peer: str) -> None:
        tried.append(peer)
        if outcomes[peer] is not None:
            raise outcomes[peer]

    async def scenario():
        try:
            return await open_session_in_room(Room(workers), open_session, notice=notices.append, timeout=1)
        except (TokenRefusedError, UnprovenWorkerError) as error:
            return error

    return run_async(scenario()), tried, notices


def test_a_worker_that_cannot_prove_the_token_is_skipped_for_the_next():
    chosen, tried, notices = search(
        {"impostor": IDLE_BIG, "real": IDLE_SMALL},
        {"impostor": UnprovenWorkerError("could not prove it knows the token"), "real": None},
    )
    assert (chosen, tried) == ("real", ["impostor", "real"])
    assert notices == ["worker impostor: could not prove it knows the token; trying the next worker"]


def test_a_worker_that_refuses_the_token_is_skipped_too():
    """An impostor may as well claim the user's token is wrong: the next worker is asked."""
    chosen, tried, _ = search(
        {"liar": IDLE_BIG, "real": IDLE_SMALL},
        {"liar": TokenRefusedError("the worker refused this client"), "real": None},
    )
    assert (chosen, tried) == ("real", ["liar", "real"])


@pytest.mark.parametrize(
    ("outcomes", "error_type", "words"),
    [
        ({"a": UnprovenWorkerError("x"), "b": UnprovenWorkerError("y")}, UnprovenWorkerError,
         "no worker proved it knows the token (a, b)"),
        ({"a": TokenRefusedError("x"), "b": TokenRefusedError("y")}, TokenRefusedError,
         "a, b refused this client's token"),
        ({"a": TokenRefusedError("x"), "b": UnprovenWorkerError("y")}, TokenRefusedError,
         "a refused this client's token; b could not prove it knows the token"),
        ({"a": UnprovenWorkerError("could not prove")}, UnprovenWorkerError, "worker a: could not prove"),
    ],
)
def test_when_every_worker_fails_the_error_says_which_failed_how(outcomes, error_type, words):
    error, tried, _ = search({peer: IDLE_SMALL for peer in outcomes}, outcomes)
    assert type(error) is error_type and words in str(error), error
    assert sorted(tried) == sorted(outcomes), "each tried once"


def test_a_busy_worker_is_still_waited_for_while_an_impostor_is_not():
    """Busy workers keep the client in the queue; failed ones are not asked again."""
    busy = WorkerBusyError("real", "its job slot is taken")
    tried: list[str] = []

    async def open_session(peer: str) -> None:
        tried.append(peer)
        if peer == "impostor":
            raise UnprovenWorkerError("could not prove it knows the token")
        if len(tried) < 4:
            raise busy

    class ChangingRoom(Room):
        async def receive(self, timeout=None):
            from rtcxfer.net.signaling import PeerUpdated

            return PeerUpdated("real", IDLE_SMALL)

    async def scenario():
        room = ChangingRoom({"impostor": IDLE_BIG, "real": IDLE_SMALL})
        return await open_session_in_room(room, open_session, timeout=1)

    assert run_async(scenario()) == "real"
    assert tried == ["impostor", "real", "real", "real"]


DRAINING = {"state": "draining", "slots": 1, "running": 0}


class QuietRoom(Room):
    """A room in which nothing changes: each receive() waits its whole timeout."""

    async def receive(self, timeout=None):
        import asyncio

        from rtcxfer.net.signaling import SignalingTimeoutError

        await asyncio.sleep(timeout)
        raise SignalingTimeoutError(f"no signaling message within {timeout} s")


def test_a_wait_for_a_draining_worker_ends_at_the_timeout_saying_what_it_waited_for():
    notices: list[str] = []

    async def open_session(peer: str) -> None:
        raise AssertionError("a draining worker is never asked")

    async def scenario():
        return await open_session_in_room(
            QuietRoom({"gpu1": DRAINING}), open_session, worker_id="gpu1", timeout=0.3, notice=notices.append
        )

    with pytest.raises(WorkerWaitTimeoutError) as raised:
        run_async(scenario())
    assert str(raised.value) == (
        "no worker took the job within 0.3 s: worker gpu1 stayed draining (it finishes its running jobs and takes "
        "no new ones)"
    )
    assert notices == [
        "worker gpu1 is draining (it finishes its running jobs and takes no new ones); waiting for it to take jobs "
        "again (restarted with the same --peer-id)"
    ]


def test_a_waiting_client_registers_again_when_the_server_closes_it_and_then_before_that_limit(monkeypatch):
    """The server's idle limit (here: a connection closed once it has waited 0.2 s) is learned
    from the first close; from then on the client registers again before it, unasked."""
    from rtcxfer.client import room as room_module
    from rtcxfer.protocol.errors import SignalingError

    monkeypatch.setattr(room_module, "MIN_CONNECTION_LIFE", 0.05)
    connections: list[ClosingRoom] = []

    class ClosingRoom(QuietRoom):
        def __init__(self) -> None:
            super().__init__({"gpu1": DRAINING})
            self.waited = 0.0
            self.closed_idle = False
            connections.append(self)

        async def receive(self, timeout=None):
            import asyncio

            if self.waited + timeout >= 0.2:
                await asyncio.sleep(0.2 - self.waited)
                self.closed_idle = True
                raise SignalingError("signaling connection closed (code 1008, idle)")
            self.waited += timeout
            return await super().receive(timeout)

    async def rejoin():
        return ClosingRoom()

    async def open_session(peer: str) -> None:
        raise AssertionError("a draining worker is never asked")

    async def scenario():
        return await open_session_in_room(ClosingRoom(), open_session, worker_id="gpu1", timeout=1.0, rejoin=rejoin)

    with pytest.raises(WorkerWaitTimeoutError):
        run_async(scenario())
    assert len(connections) >= 3, "it registered again, and again"
    assert [room.closed_idle for room in connections] == [True] + [False] * (len(connections) - 1)
