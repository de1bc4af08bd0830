"""A client may offer again while its handshake is under way (its ICE found no pair, it tries
relay candidates only): the worker's pre-authentication limits (``rtcxfer.worker.limits``) let
the new offer replace the old handshake, a bounded number of times, and the real worker does so.
"""

from __future__ import annotations

import pytest

from rtcxfer.client.rtc_client import RTCClient
from rtcxfer.client.sample import build_sample_package
from rtcxfer.net import peer as rtc
from rtcxfer.net.signaling import SignalingClient, SignalingServer
from rtcxfer.net.signaling.handshake import SdpOffer
from rtcxfer.protocol.ice import IceServer
from rtcxfer.testing import run_async
from rtcxfer.worker.limits import Startups, WorkerLimits
from tests.support.worker_harness import TOKEN, assert_sample_results, make_worker, start_serving, stop_serving

LOOPBACK = "127.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_new_offer_replaces_the_handshake_under_way_a_bounded_number_of_times():
    startups = Startups(WorkerLimits(max_handshake_restarts=2), Clock())
    first = startups.admit("client-1")
    second = startups.admit("client-1")
    third = startups.admit("client-1")
    assert second.replaces is first and third.replaces is second and len(startups) == 1
    assert "already under way (restarted 2 times" in startups.admit("client-1")
    startups.release(first)  # the replaced handshake ending frees nothing
    startups.release(second)
    assert len(startups) == 1 and isinstance(startups.admit("client-1"), str)
    startups.release(third)
    assert len(startups) == 0
    again = startups.admit("client-1")  # a fresh handshake: the count starts over
    assert again.replaces is None and startups.admit("client-1").replaces is again


def test_replacing_takes_no_second_slot_and_still_pays_the_offer_rate():
    limits = WorkerLimits(max_unauthenticated=1, offers_per_second=1, offer_burst=2)
    startups = Startups(limits, Clock(), chance=lambda: 0.0)  # every draw drops
    held = startups.admit("client-1")
    assert "dropped at random: 1 of 1" in startups.admit("client-2")
    assert startups.admit("client-1").replaces is held  # the slot is the peer's own
    assert "offers/s" in startups.admit("client-1")


def test_no_restart_at_all_when_the_limit_is_zero():
    startups = Startups(WorkerLimits(max_handshake_restarts=0), Clock())
    startups.admit("client-1")
    assert "already under way" in startups.admit("client-1")
    with pytest.raises(ValueError):
        WorkerLimits(max_handshake_restarts=-1)


def test_the_worker_answers_a_second_offer_while_the_first_handshake_is_under_way(tmp_path, logs):
    """The first offer's answer is left unused, so the worker's handshake with that client is
    still under way when the same client offers again: the worker answers the new offer at once
    (ending the old one) and the job runs over the new connection."""

    async def scenario():
        async with SignalingServer(LOOPBACK, 0) as server:
            worker = make_worker(None, tmp_path / "work")
            serving = await start_serving(worker, server.url)
            package = build_sample_package(tmp_path / "package.zip")
            async with SignalingClient(server.url, "r", "client", "client-1") as signaling:
                send, receive = rtc.signaling_adapter(signaling, "worker")
                abandoned = rtc.PeerConnection()
                await send(SdpOffer(await abandoned.create_offer()).to_payload())
                await receive()  # the worker answered: its handshake waits for ICE now
                connection, channel = await rtc.connect_via(send, receive, "offerer", timeout=15)
                client = RTCClient(token=TOKEN, results_dir=tmp_path / "results", detect_shared_storage=False)
                try:
                    await client.attach(channel, "worker")
                    result = await client.submit(package)
                finally:
                    await client.close()
                    await connection.close()
                    await abandoned.close()
            await stop_serving(serving)
            worker.close()
            return result

    result = run_async(scenario(), 60)
    assert_sample_results(result)
    assert any("client-1 sent a new offer: its handshake under way is replaced" in message for _, message in logs)


def test_a_relay_only_offer_is_answered_with_relay_candidates_only_where_the_worker_has_turn():
    options = rtc.PeerOptions(loopback_only=False, ice_servers=["stun:198.51.100.1:3478"])
    assert options.relay_only_retry() is None  # no TURN server: answered as usual
    with_turn = rtc.PeerOptions(loopback_only=False, ice_servers=[
        "stun:198.51.100.1:3478",
        IceServer(["turn:198.51.100.1:3478?transport=udp", "turn:198.51.100.1:3478?transport=tcp"], "u", "p"),
    ])
    if not rtc.relay_only_supported():
        assert with_turn.relay_only_retry() is None
        return
    relay_only = with_turn.relay_only_retry()
    assert relay_only.relay_only and relay_only.ice_servers == with_turn.ice_servers
    assert relay_only.rtc_configuration().iceTransportPolicy.name == "RELAY"
    assert relay_only.relay_only_retry() is None  # no third kind of attempt
    # The UDP allocation failed: the TCP URL goes first (aiortc uses the first TURN URL only).
    over_tcp = with_turn.relay_only_retry("udp")
    first_turn = next(url for server in over_tcp.ice_servers for url in server.urls if url.is_turn)
    assert first_turn.transport == "tcp"
    assert rtc.PeerOptions(loopback_only=False, ice_servers=[
        IceServer("turn:198.51.100.1:3478", "u", "p")]).relay_only_retry("udp") is None


def test_a_loopback_peer_never_says_which_path_it_took(tmp_path):
    """On loopback nothing new is said (the path is always the same), but the result knows it."""

    async def scenario():
        async with SignalingServer(LOOPBACK, 0) as server:
            worker = make_worker(None, tmp_path / "work")
            notices: list[str] = []
            serving = await start_serving(worker, server.url, on_notice=notices.append)
            events = []
            client = RTCClient(token=TOKEN, results_dir=tmp_path / "results", detect_shared_storage=False,
                               on_event=events.append)
            async with client:
                await client.connect(server.url, "r", timeout=15)
                result = await client.submit(build_sample_package(tmp_path / "package.zip"))
            await stop_serving(serving)
            worker.close()
            return result, notices, [event.data["message"] for event in events if event.kind == "notice"]

    result, worker_notices, client_notices = run_async(scenario(), 60)
    assert result.ok and result.path == "peer-to-peer (host)"
    assert not [text for text in worker_notices + client_notices if "data channel" in text]
