"""The two-host bed itself (``rtcxfer.testing.two_hosts``): what passes, what is dropped, and
that nothing is left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rtcxfer.testing.two_hosts import NAME_PREFIX, remove_stale_beds, two_hosts

GUARD = 30.0

#: Network namespaces and processes in them.
pytestmark = pytest.mark.slow

# Host B listens (UDP datagrams and TCP connections) and prints what it received, one line each.
LISTENER = """
import socket, sys, threading
address = sys.argv[1]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((address, 9999))
tcp = [socket.create_server((address, port)) for port in (9000, 9001)]
printing = threading.Lock()
def accept(server):
    connection, _ = server.accept()
    with printing:
        print("tcp", server.getsockname()[1], flush=True)
for server in tcp:
    threading.Thread(target=accept, args=(server,), daemon=True).start()
print("ready", flush=True)
udp.settimeout(30)
while (size := len(udp.recvfrom(70000)[0])) != 1:  # one byte: the sender is done
    with printing:
        print("udp", size, flush=True)
"""

# Host A sends datagrams of several sizes and tries both TCP ports.
SENDER = """
import socket, sys, time
address = sys.argv[1]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for size in (1000, 1400, 4000, 16000):
    udp.sendto(bytes(size), (address, 9999))
    time.sleep(0.05)
for port in (9000, 9001):
    try:
        socket.create_connection((address, port), timeout=0.5).close()
    except OSError:
        pass
time.sleep(0.1)  # the accepting thread prints before the listener ends
udp.sendto(b"x", (address, 9999))
"""


def _exchange(bed) -> list[str]:
    listener = bed.b.spawn([sys.executable, "-c", LISTENER, bed.b.address], stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "ready"
    bed.a.run([sys.executable, "-c", SENDER, bed.b.address], check=True, timeout=GUARD)
    output, _ = listener.communicate(timeout=GUARD)
    return output.split("\n")


def test_a_plain_bed_carries_everything(two_host_bed):
    bed = two_host_bed()
    lines = _exchange(bed)
    assert [line for line in lines if line.startswith("udp")] == ["udp 1000", "udp 1400", "udp 4000", "udp 16000"]
    assert {"tcp 9000", "tcp 9001"} <= set(lines)


def test_fragments_and_tcp_can_be_dropped(two_host_bed):
    bed = two_host_bed(drop_fragments=True, block_tcp=True, allow_tcp_ports=(9000,), rate="100mbit")
    lines = _exchange(bed)
    # Larger than the MTU means IP fragments: gone. The allowed TCP port still connects.
    assert [line for line in lines if line.startswith("udp")] == ["udp 1000", "udp 1400"]
    assert "tcp 9000" in lines and "tcp 9001" not in lines
    bed.set_drop_fragments(False)
    assert "udp 16000" in _exchange(bed)


def _bed_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.startswith(NAME_PREFIX)}


def test_a_bed_is_removed_even_when_the_test_fails(two_host_bed):
    before = _bed_namespaces()
    with pytest.raises(RuntimeError), two_hosts() as bed:
        sleeper = bed.a.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
        assert {bed.a.namespace, bed.b.namespace} <= _bed_namespaces()
        raise RuntimeError("the test failed")
    assert _bed_namespaces() == before
    assert sleeper.poll() is not None, "a process started in the bed outlived it"


def test_a_bed_left_by_a_dead_process_is_removed(two_host_bed):
    # A pid that cannot be running: the kernel's pid_max is at most 2**22.
    stale = f"{NAME_PREFIX}{2**22 + 7}-0-a"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in remove_stale_beds()
        assert stale not in _bed_namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True, check=False)
