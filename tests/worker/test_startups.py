"""Pre-authentication places are given out like OpenSSH's MaxStartups: random early drop, the
oldest handshake evicted when every place is taken, copies of an offer under way ignored
(hardening round two, finding 6). Unit level: the flood through real processes is in
``test_worker_process_security.py``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.worker.limits import DUPLICATE_OFFER, Startup, Startups, WorkerLimits


def startups(chances: list[float], **limits) -> Startups:
    draws = iter(chances)
    return Startups(WorkerLimits(offers_per_second=1000, offer_burst=1000, **limits), lambda: 0.0,
                    chance=lambda: next(draws))


def test_below_the_early_drop_start_every_new_peer_gets_a_place():
    places = startups([0.0] * 4, max_unauthenticated=8, early_drop_start=4)
    assert all(isinstance(places.admit(f"p{n}"), Startup) for n in range(4))


def test_between_start_and_full_a_new_peer_is_dropped_at_random_more_often_as_places_fill():
    limits = WorkerLimits(max_unauthenticated=8, early_drop_start=4, early_drop_rate=0.3)
    chances = [limits.drop_probability(held) for held in range(10)]
    assert chances[:4] == [0.0] * 4
    assert chances[4] == pytest.approx(0.3) and chances[8] == chances[9] == pytest.approx(0.5)
    assert chances[4] < chances[5] < chances[6] < chances[7] < chances[8]
    places = startups([0.0] * 4 + [0.29, 0.31], max_unauthenticated=8, early_drop_start=4)
    for n in range(4):
        places.admit(f"p{n}")
    assert "dropped at random: 4 of 8" in places.admit("unlucky")  # 0.29 < 0.3
    assert isinstance(places.admit("lucky"), Startup)  # 0.31 > 0.3


def test_with_every_place_taken_a_surviving_offer_evicts_the_oldest_handshake():
    places = startups([0.0, 0.0, 0.99], max_unauthenticated=2, early_drop_start=2)
    oldest = places.admit("squatter-1")
    places.admit("squatter-2")
    newcomer = places.admit("client")
    assert isinstance(newcomer, Startup) and newcomer.evicts is oldest
    assert len(places) == 2
    places.release(oldest)  # the evicted handshake ending frees nothing more
    assert len(places) == 2


def test_a_peer_re_offering_keeps_its_age_so_squatters_are_evicted_before_a_newcomer():
    places = startups([0.0, 0.0, 0.99, 0.99], max_unauthenticated=2, early_drop_start=2, max_handshake_restarts=5)
    squatter = places.admit("squatter", "offer-a")
    places.admit("client", "offer-c")
    places.admit("squatter", "offer-b")  # a new offer: it replaces its own handshake, keeps its age
    newcomer = places.admit("another-client", "offer-d")
    assert isinstance(newcomer, Startup) and newcomer.evicts.client_id == "squatter"
    assert squatter is not newcomer.evicts  # the replacement was evicted, as the squatter's place


def test_a_copy_of_the_offer_under_way_changes_nothing():
    places = startups([0.0], max_handshake_restarts=0)
    first = places.admit("client", "sdp-digest")
    assert places.admit("client", "sdp-digest") == DUPLICATE_OFFER
    assert len(places) == 1 and places._holders["client"] is first


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.sampled_from(["x", "y"]),
                          st.floats(0, 1, exclude_max=True), st.booleans()), max_size=60))
def test_places_never_exceed_the_maximum_whatever_the_peers_do(steps):
    draws = iter([chance for _, _, chance, _ in steps])
    places = Startups(WorkerLimits(max_unauthenticated=3, early_drop_start=1, offers_per_second=1000,
                                   offer_burst=1000), lambda: 0.0, chance=lambda: next(draws, 0.5))
    admitted: list[Startup] = []
    for peer, offer, _, finishes in steps:
        result = places.admit(peer, offer)
        if isinstance(result, Startup):
            admitted.append(result)
        if finishes and admitted:
            places.release(admitted.pop(0))
        assert len(places) <= 3
