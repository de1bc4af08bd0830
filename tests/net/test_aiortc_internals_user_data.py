"""The user data one SCTP packet carries (``aiortc_internals.sctp_user_data_per_packet``, shown
as ``DataChannel.sctp_user_data_per_packet``): what aiortc really cuts messages into, between
two real aiortc peers, at stock size and at the size two rtcxfer peers agree on."""

from __future__ import annotations

import asyncio

import pytest

from rtcxfer.net.aiortc_internals import (
    MAX_PACKET_SIZE,
    STOCK_PACKET_SIZE,
    sctp_user_data_per_packet,
    tuning_supported,
    tuning_unsupported_reason,
    userdata_max_length,
)
from rtcxfer.net.peer import PeerOptions
from rtcxfer.testing import linked_peers, run_async

STEP = 20.0

needs_sctp_tuning = pytest.mark.skipif(
    not tuning_supported(), reason=f"no large SCTP packets on this aiortc: {tuning_unsupported_reason()}"
)


class _NoSctp:
    transport = None


def test_no_sctp_transport_means_no_size():
    assert sctp_user_data_per_packet(_NoSctp()) is None


def test_stock_peers_cut_messages_at_aiortcs_own_size():
    async def main():
        async with linked_peers(options=PeerOptions(large_packets=False), timeout=STEP) as peers:
            return [side.channel.sctp_user_data_per_packet for side in peers.sides]

    assert run_async(main(), timeout=60) == [userdata_max_length(STOCK_PACKET_SIZE)] * 2


@needs_sctp_tuning
def test_two_rtcxfer_peers_cut_messages_at_the_large_packet_size_once_it_is_settled():
    async def main():
        async with linked_peers(timeout=STEP) as peers:
            await asyncio.gather(*(side.peer.packet_size_settled(STEP) for side in peers.sides))
            sizes = [side.channel.sctp_user_data_per_packet for side in peers.sides]
            decided = [side.peer.packet_size for side in peers.sides]
        return sizes, decided

    sizes, decided = run_async(main(), timeout=60)
    assert [size.size for size in decided] == [MAX_PACKET_SIZE] * 2, decided
    assert sizes == [userdata_max_length(MAX_PACKET_SIZE)] * 2
