"""Datagrams through a real TURN relay (coturn on the NAT bed), as rtc-chunked sends them there.

Two aioice TURN clients, one behind each NAT router, each with an allocation on the bed's coturn,
send datagrams of given sizes to each other's relayed address; what arrives is compared. It pins
two facts rtcxfer's packet sizing relies on (``rtcxfer.net.aiortc_internals``):

* coturn relays a datagram of :data:`RELAY_PACKET_SIZE` plus DTLS's overhead, over UDP and over
  TCP, and drops one the size of a whole DTLS record's packet (16384 bytes plus overhead), or
  cuts it short: the reason relayed paths get packets of :data:`RELAY_PACKET_SIZE` in one piece;
* :func:`speed_up_relayed_sends` sends through the channel aioice bound, in order, with no task
  per datagram, and leaves binding to aioice.
"""

from __future__ import annotations

import json
import sys

import pytest

from rtcxfer.net.aiortc_internals import RECORD_SIZE, RELAY_PACKET_SIZE
from rtcxfer.testing.nat_bed import NatKind

GUARD = 60.0
DTLS_OVERHEAD = 37  # DTLS 1.2 record header 13, AES-GCM explicit nonce 8 and tag 16
COTURN_CUT = 16380  # coturn 4.6.1 holds 16384 bytes of ChannelData, its 4-byte header included

#: Network namespaces, coturn and processes in them.
pytestmark = pytest.mark.slow

# argv: server host:port, username, password, transport, own name, directory. Writes its relayed
# address to <directory>/<name>.addr, waits for the other's, sends SIZES (each once per round,
# the round number in the first byte) and writes what it received and how its sends went.
PEER = """
import asyncio, json, os, sys
from pathlib import Path
from aioice import turn
from rtcxfer.net.aiortc_internals import speed_up_relayed_sends

server, username, password, transport, name, directory = sys.argv[1:7]
sizes = [int(size) for size in sys.argv[7].split(",")]
fast = sys.argv[8] == "fast"
directory = Path(directory)
other = "worker" if name == "client" else "client"

class Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = []
    def datagram_received(self, data, addr):
        self.got.append([data[0], len(data)])

async def main():
    host, port = server.split(":")
    relay, receiver = await turn.create_turn_endpoint(Receiver, (host, int(port)), username, password,
                                                      transport=transport)
    inner = relay._TurnTransport__inner_protocol
    stock_calls = []
    stock_send_data = inner.send_data
    async def counted_send_data(data, addr):
        stock_calls.append(len(data))
        await stock_send_data(data, addr)
    inner.send_data = counted_send_data
    sped_up = speed_up_relayed_sends(relay) if fast else None
    (directory / f"{name}.addr").write_text(json.dumps(relay.get_extra_info("sockname")))
    while not (directory / f"{other}.addr").exists():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    peer = tuple(json.loads((directory / f"{other}.addr").read_text()))
    relay.sendto(b"\\xff" + b"hello", peer)  # binds the channel (aioice's own sendto)
    await asyncio.sleep(0.5)
    tasks_before = len(asyncio.all_tasks())
    for round_number in range(3):
        for size in sizes:
            relay.sendto(bytes([round_number]) + bytes(size - 1), peer)
        tasks_during = len(asyncio.all_tasks())
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    print(json.dumps({"got": receiver.got, "sped_up": sped_up, "stock_calls": stock_calls,
                      "tasks_added": tasks_during - tasks_before}))
    relay.close()

asyncio.run(main())
"""


def exchange(bed, turn, tmp_path, client_transport: str, sizes: list[int]) -> tuple[dict, dict]:
    """The client (sped up) and the worker (aioice as it is) send ``sizes`` to each other."""
    processes = {}
    for name, host, transport, mode in (
        ("client", bed.client, client_transport, "fast"),
        ("worker", bed.worker, "udp", "stock"),
    ):
        username, password = turn.credentials(name)
        processes[name] = host.spawn(
            [sys.executable, "-c", PEER, f"{turn.address}:{turn.port}", username, password, transport, name,
             str(tmp_path), ",".join(map(str, sizes)), mode],
            stdout=-1, stderr=-1, text=True,
        )  # fmt: skip
    outcomes = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=GUARD)
        assert process.returncode == 0, f"{name}: exit {process.returncode}: {stderr[-3000:]}"
        outcomes[name] = json.loads(stdout)
    return outcomes["client"], outcomes["worker"]


def rounds(received: dict) -> list[list[int]]:
    """What arrived of the rounds (the greeting that bound the channel may arrive before the
    other side's permission, and be dropped by coturn)."""
    return [item for item in received["got"] if item[0] != 0xFF]


@pytest.mark.parametrize("client_transport", ["udp", "tcp"])
def test_coturn_relays_a_relay_packet_whole_and_drops_a_whole_records_packet(nat_bed, tmp_path, client_transport):
    bed = nat_bed(client_nat=NatKind.SYMMETRIC, worker_nat=NatKind.SYMMETRIC)
    turn = bed.start_turn(verbose=False)
    fits = RELAY_PACKET_SIZE + DTLS_OVERHEAD
    too_large = RECORD_SIZE + DTLS_OVERHEAD
    client, worker = exchange(bed, turn, tmp_path, client_transport, [1200, 8192, fits, too_large])
    # Both directions, every round, in the order sent (between namespaces nothing is lost or
    # reordered); the larger one never whole: dropped, or (out of coturn over TCP) cut to the
    # 16380 bytes coturn holds, which DTLS would refuse as a forged record.
    for received in (client, worker):
        whole = [item for item in rounds(received) if item[1] != COTURN_CUT]
        assert whole == [[r, s] for r in range(3) for s in (1200, 8192, fits)], received["got"]


def test_relayed_sends_go_out_at_once_through_the_channel_aioice_bound(nat_bed, tmp_path):
    bed = nat_bed(client_nat=NatKind.SYMMETRIC, worker_nat=NatKind.SYMMETRIC)
    turn = bed.start_turn(verbose=False)
    sizes = [1000 + n for n in range(40)]
    client, worker = exchange(bed, turn, tmp_path, "udp", sizes)
    assert client["sped_up"] is True
    # The first datagram bound the channel through aioice's own send; the 120 after it went out
    # in the call, no task each, and arrived in order.
    assert client["stock_calls"] == [6]
    assert client["tasks_added"] == 0
    assert rounds(worker) == [[r, s] for r in range(3) for s in sizes]
    # aioice as it is: a task per datagram, every one through its send_data.
    assert worker["sped_up"] is None and len(worker["stock_calls"]) == 1 + 3 * len(sizes)
    assert worker["tasks_added"] > 0
    assert rounds(client) == rounds(worker)
