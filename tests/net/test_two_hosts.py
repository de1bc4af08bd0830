"""Two rtcxfer peers on two "machines": processes in two network namespaces (``two_host_bed``).

What is checked across a real IP path with MTU 1500: the SCTP packet size each link allows
(16 KiB where IP fragments pass, at most one MTU where they are dropped, decided within 2 s),
the fall back when the path turns into a black hole in the middle of a transfer, and an
unmodified aiortc peer on the other side. The bytes are verified by SHA-256 every time.
Timeouts are hang guards; no test asserts a speed.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtcxfer.net.aiortc_internals import (
    MAX_PACKET_SIZE,
    RECORD_SIZE,
    STOCK_PACKET_SIZE,
    tuning_supported,
    tuning_unsupported_reason,
)
from tests.support.cli import REPO

PEER = Path(__file__).resolve().parent / "two_host_peer.py"
GUARD = 120.0

# What these tests check does not exist on an aiortc the tuning cannot rewrite (it then runs
# stock packets: tests/net/test_rtc.py::test_an_aiortc_without_the_tuned_internals_runs_stock_packets_and_says_why).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not tuning_supported(), reason=f"no large SCTP packets on this aiortc: {tuning_unsupported_reason()}"
    ),
]


class PeerProcess:
    """One ``two_host_peer.py`` in a bed's host, spoken to in JSON lines."""

    def __init__(self, host, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.process = host.spawn(
            [sys.executable, str(PEER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read(self, guard: float = GUARD) -> dict:
        stdout = self.process.stdout
        deadline = time.monotonic() + guard
        while True:
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no answer within {guard} s")
            line = stdout.readline()
            if not line:
                self.process.wait(10)
                raise AssertionError(f"peer exited {self.process.returncode}: {self.process.stderr.read()[-3000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def write(self, item: dict) -> None:
        self.process.stdin.write(json.dumps(item) + "\n")
        self.process.stdin.flush()


def connect(
    bed, send_args: tuple[str, ...] = (), receive_args: tuple[str, ...] = ()
) -> tuple[PeerProcess, PeerProcess]:
    """A sender in host A and a receiver in host B, with the SDP exchanged through us."""
    receiver = PeerProcess(bed.b, "receive", *receive_args)
    sender = PeerProcess(bed.a, "send", *send_args)
    receiver.write(sender.read())
    sender.write(receiver.read())
    return sender, receiver


def finish(sender: PeerProcess, receiver: PeerProcess) -> tuple[dict, dict]:
    sent, received = sender.read(), receiver.read()
    assert sent["echoed"] == sent["sha256"], "the receiver's SHA-256 differs from what was sent"
    return sent, received


@pytest.mark.parametrize("drop", [False, True], ids=["fragments-pass", "fragments-dropped"])
def test_packet_size_follows_the_path(two_host_bed, drop):
    bed = two_host_bed(drop_fragments=drop)
    sender, receiver = connect(bed, ("--megabytes", "4"))
    sent, received = finish(sender, receiver)
    assert received["bytes"] == 4 * 1024 * 1024
    first = sent["changes"][0]
    if not drop:
        assert sent["settled"]["size"] == sent["settled"]["datagram"] == MAX_PACKET_SIZE
        assert "path probe confirmed" in sent["changes"][-1]["reason"]
    else:
        # The largest probe that fits one MTU; the larger ones vanish with their fragments.
        # Packets of one DTLS record (16 KiB) cross in pieces of that size.
        assert sent["settled"]["size"] == RECORD_SIZE
        assert STOCK_PACKET_SIZE <= sent["settled"]["datagram"] <= 1400
        assert "unanswered" in sent["changes"][-1]["reason"]
    # Every verdict of the first round comes within the probe timeout, far inside 2 s.
    assert sent["changes"][-1]["at"] - first["at"] < 2.0


def test_black_hole_in_the_middle_of_a_transfer(two_host_bed):
    """The path carries 16 KiB packets, then starts dropping fragments with chunks of that size
    in flight: the sender notices within 2 s, falls back, and every byte still arrives."""
    bed = two_host_bed(drop_fragments=False)
    sender, receiver = connect(bed, ("--megabytes", "4", "--pause-at", "2"))
    paused = sender.read()
    assert paused["datagram"] == MAX_PACKET_SIZE
    bed.set_drop_fragments(True)
    sender.write({"go": True})
    sent, received = finish(sender, receiver)
    assert received["bytes"] == 4 * 1024 * 1024
    falls = [c for c in sent["changes"] if c["at"] >= sent["resumed"] and c["datagram"] < MAX_PACKET_SIZE]
    assert falls, f"no fall back after the path changed: {sent['changes']}"
    assert "black hole" in falls[0]["reason"]
    # aiortc's retransmission timeout (at least 1 s) plus the confirming probes.
    assert falls[0]["at"] - sent["resumed"] < 2.0


def test_unmodified_aiortc_peer_across_two_hosts(two_host_bed):
    bed = two_host_bed(drop_fragments=False)
    sender, receiver = connect(bed, ("--megabytes", "2"), ("--stock",))
    sent, received = finish(sender, receiver)
    assert received["bytes"] == 2 * 1024 * 1024
    assert sent["settled"] == {"size": STOCK_PACKET_SIZE, "datagram": STOCK_PACKET_SIZE}
    assert "stock WebRTC endpoint" in sent["changes"][-1]["reason"]
