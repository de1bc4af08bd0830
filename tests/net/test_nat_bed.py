"""The NAT bed itself (``rtcxfer.testing.nat_bed``): each kind of NAT maps and filters as it
claims, nothing crosses that should not, coturn relays for credentials derived from its secret
and refuses others, and nothing is left behind.

Small Python scripts run inside the bed's namespaces; no rtcxfer peer is involved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from rtcxfer.testing.nat_bed import (
    NAME_PREFIX,
    PUBLIC_SERVER_ADDRESS,
    NatKind,
    missing_requirements,
    nat_bed,
    remove_stale_beds,
    turn_rest_credentials,
)

GUARD = 60.0
UDP_PORTS = (4001, 4002, 4003)
TCP_PORTS = (4000, 4010)

#: Network namespaces and processes in them.
pytestmark = pytest.mark.slow

# Answers every UDP datagram and TCP connection with the address it came from ("ip:port").
# A datagram saying "poke" is also answered from every other UDP port: a stranger knocking.
REFLECTOR = """
import selectors, socket, sys
address = sys.argv[1]
udp_ports = [int(p) for p in sys.argv[2].split(",") if p]
tcp_ports = [int(p) for p in sys.argv[3].split(",") if p]
selector = selectors.DefaultSelector()
udp = {}
for port in udp_ports:
    udp[port] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp[port].bind((address, port))
    selector.register(udp[port], selectors.EVENT_READ, "udp")
for port in tcp_ports:
    selector.register(socket.create_server((address, port)), selectors.EVENT_READ, "tcp")
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        if key.data == "tcp":
            connection, (ip, port) = key.fileobj.accept()
            connection.sendall(f"{ip}:{port}\\n".encode())
            connection.close()
            continue
        data, sender = key.fileobj.recvfrom(2048)
        seen = f"{sender[0]}:{sender[1]}".encode()
        for other in udp.values():
            if other is key.fileobj or data == b"poke":
                other.sendto(seen, sender)
"""

# From one UDP socket, a datagram to each UDP port, then every answer within the patience (its
# source port and text); then each TCP port: the answer, or the error (a timeout after the
# patience). JSON on stdout.
PROBE = """
import json, socket, sys, time
address, message, patience = sys.argv[1], sys.argv[4].encode(), float(sys.argv[5])
udp_ports = [int(p) for p in sys.argv[2].split(",") if p]
tcp_ports = [int(p) for p in sys.argv[3].split(",") if p]
result = {"udp": [], "tcp": {}}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 0))
result["local_port"] = sock.getsockname()[1]
for port in udp_ports:
    try:
        sock.sendto(message, (address, port))
    except OSError as error:
        result["udp"].append([port, type(error).__name__])
deadline = time.monotonic() + (patience if udp_ports else 0)
while (left := deadline - time.monotonic()) > 0:
    sock.settimeout(left)
    try:
        data, sender = sock.recvfrom(2048)
    except socket.timeout:
        break
    except OSError:
        continue  # an ICMP error for one of the datagrams
    result["udp"].append([sender[1], data.decode()])
    if len(result["udp"]) == len(udp_ports) and message != b"poke":
        break  # every datagram answered; a poke waits for strangers
for port in tcp_ports:
    try:
        with socket.create_connection((address, port), timeout=patience) as connection:
            connection.settimeout(patience)
            result["tcp"][port] = connection.makefile().readline().strip()
    except OSError as error:
        result["tcp"][port] = type(error).__name__
print(json.dumps(result))
"""

# The given steps, in order, with aioice: "stun" (a binding: the address the server saw), "udp"
# and "tcp" (a TURN allocation over each; through it a datagram to a reflector, whose answer must
# come back through the relay). A step that gets no answer within the wait says "timeout".
TURN_CLIENT = """
import asyncio, json, sys
from aioice import stun, turn
server, username, password, reflector, steps, wait = sys.argv[1:7]
host, port = server.rsplit(":", 1)
reflector_host, reflector_port = reflector.rsplit(":", 1)
wait = float(wait)

class Answers(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()
    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

async def binding():
    loop = asyncio.get_running_loop()
    transport, answers = await loop.create_datagram_endpoint(Answers, remote_addr=(host, int(port)))
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    try:
        for _ in range(int(wait * 4)):  # a retransmission every 0.25 s, as UDP needs
            transport.sendto(bytes(request))
            try:
                data, _ = await asyncio.wait_for(answers.queue.get(), 0.25)
                return list(stun.parse_message(data).attributes["XOR-MAPPED-ADDRESS"])
            except asyncio.TimeoutError:
                pass
        return "timeout"
    finally:
        transport.close()

async def allocation(transport_kind):
    try:
        relay, answers = await asyncio.wait_for(turn.create_turn_endpoint(
            Answers, server_addr=(host, int(port)), username=username, password=password,
            transport=transport_kind), wait)
    except stun.TransactionFailed as error:
        return {"error": error.response.attributes["ERROR-CODE"][0]}
    except asyncio.TimeoutError:
        return "timeout"
    relay.sendto(b"through the relay", (reflector_host, int(reflector_port)))
    data, sender = await asyncio.wait_for(answers.queue.get(), 10)
    outcome = {"relayed": list(relay.get_extra_info("sockname")),
               "mapped": list(relay.get_extra_info("related_address")),
               "reflected": data.decode(), "from": list(sender)}
    relay.close()
    await asyncio.sleep(0.2)  # the allocation's deletion goes out
    return outcome

async def main():
    outcome = {}
    for step in steps.split(","):
        outcome[step] = await (binding() if step == "stun" else allocation(step))
    print(json.dumps(outcome))

asyncio.run(main())
"""

# One UDP socket, driven line by line on stdin: "send HOST PORT TEXT" sends a datagram;
# "receive SECONDS" prints the first datagram that comes within that time as JSON
# ([text, [host, port]]) or null. What two ICE agents do to punch through their NATs.
UDP_PEER = """
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 0))
print(json.dumps(sock.getsockname()[1]), flush=True)
for line in sys.stdin:
    command, *args = line.split()
    if command == "send":
        sock.sendto(args[2].encode(), (args[0], int(args[1])))
        print("null", flush=True)
    else:
        sock.settimeout(float(args[0]))
        try:
            data, sender = sock.recvfrom(2048)
            print(json.dumps([data.decode(), list(sender)]), flush=True)
        except socket.timeout:
            print("null", flush=True)
"""


@pytest.fixture(autouse=True)
def _needs_a_bed():
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(f"NAT bed unavailable: {reason}")


def reflect(host, udp_ports=UDP_PORTS, tcp_ports=TCP_PORTS):
    """Start the reflector in ``host`` (ended with the bed) and wait until it listens."""
    process = host.spawn(
        [sys.executable, "-c", REFLECTOR, host.address, ",".join(map(str, udp_ports)), ",".join(map(str, tcp_ports))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def probe(host, address, udp_ports=UDP_PORTS, tcp_ports=TCP_PORTS, message="hello", patience=2.0) -> dict:
    """What ``host`` gets back from ``address`` (see ``PROBE``). Where nothing is expected a short
    ``patience`` keeps the test short: between namespaces an answer takes microseconds."""
    ports = [",".join(map(str, udp_ports)), ",".join(map(str, tcp_ports))]
    done = host.run(
        [sys.executable, "-c", PROBE, address, *ports, message, str(patience)],
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=True,
    )
    return json.loads(done.stdout)


def answers(result: dict) -> list[str]:
    """Every answer the probe got, UDP and TCP ("ip:port" texts; errors are not answers)."""
    texts = [text for _, text in result["udp"]] + list(result["tcp"].values())
    return [text for text in texts if text[:1].isdigit()]


def seen_ports(result: dict) -> list[int]:
    """The public ports the reflector saw the probe's datagrams come from, one per answer."""
    return [int(text.rsplit(":", 1)[1]) for _, text in result["udp"] if ":" in text]


def test_endpoint_independent_mapping_keeps_one_public_port_for_every_destination(nat_bed):
    bed = nat_bed(client_nat=NatKind.ENDPOINT_INDEPENDENT)
    reflect(bed.public)
    result = probe(bed.client, bed.public.address)
    assert sorted(port for port, _ in result["udp"]) == list(UDP_PORTS)
    assert {text.rsplit(":", 1)[0] for _, text in result["udp"]} == {bed.client_router.address}
    assert set(seen_ports(result)) == {result["local_port"]}, "the socket's port was not kept"
    assert all(value.startswith(f"{bed.client_router.address}:") for value in result["tcp"].values()), result


def test_symmetric_nat_gives_each_destination_its_own_public_port(nat_bed):
    bed = nat_bed(client_nat=NatKind.SYMMETRIC)
    reflect(bed.public)
    result = probe(bed.client, bed.public.address)
    assert sorted(port for port, _ in result["udp"]) == list(UDP_PORTS)
    assert {text.rsplit(":", 1)[0] for _, text in result["udp"]} == {bed.client_router.address}
    # Three random ports out of ~64,000: all equal would be a one in four billion chance.
    assert len(set(seen_ports(result))) > 1, f"one public port for every destination: {result}"


def test_a_blocked_udp_network_gets_nothing_back_but_tcp_passes(nat_bed):
    bed = nat_bed(client_nat=NatKind.UDP_BLOCKED)
    reflect(bed.public)
    result = probe(bed.client, bed.public.address, patience=1.0)
    assert result["udp"] == []
    assert all(value.startswith(f"{bed.client_router.address}:") for value in result["tcp"].values()), result


class UdpPeer:
    """``UDP_PEER`` in a host: one socket, driven from the test."""

    def __init__(self, host) -> None:
        self.process = host.spawn(
            [sys.executable, "-c", UDP_PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.port = self._answer()

    def _answer(self):
        line = self.process.stdout.readline()
        assert line, f"the UDP peer exited {self.process.poll()}"
        return json.loads(line)

    def send(self, address: str, port: int, text: str) -> None:
        self.process.stdin.write(f"send {address} {port} {text}\n")
        self.process.stdin.flush()
        self._answer()

    def receive(self, seconds: float):
        self.process.stdin.write(f"receive {seconds}\n")
        self.process.stdin.flush()
        return self._answer()

    def public_address(self, reflector: str) -> tuple[str, int]:
        """The address the public reflector sees this socket at (what STUN tells ICE)."""
        self.send(reflector, 4001, "hello")
        text, _ = self.receive(5.0)
        address, port = text.rsplit(":", 1)
        return address, int(port)


@pytest.mark.parametrize("kind", [NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC])
def test_hole_punching_works_through_endpoint_independent_nat_only(nat_bed, kind):
    """What ICE does with STUN: each side learns its public address from a server, the two
    exchange them, and each sends to the other. The client's first datagram reaches the worker's
    router before the worker has sent anything: dropped there, and it must not change the port
    the worker's router gives the worker's own datagram a moment later."""
    bed = nat_bed(client_nat=kind, worker_nat=kind)
    reflect(bed.public, tcp_ports=())
    client, worker = UdpPeer(bed.client), UdpPeer(bed.worker)
    client_public = client.public_address(bed.public.address)
    worker_public = worker.public_address(bed.public.address)
    assert (client_public[0], worker_public[0]) == (bed.client_router.address, bed.worker_router.address)

    client.send(*worker_public, "from-the-client")  # too early: the worker's router drops it
    assert worker.receive(0.5) is None
    worker.send(*client_public, "from-the-worker")
    if kind is NatKind.ENDPOINT_INDEPENDENT:
        assert client.receive(5.0) == ["from-the-worker", list(worker_public)]
        client.send(*worker_public, "again")
        assert worker.receive(5.0) == ["again", list(client_public)]
    else:
        # Each datagram went out from a port the other side never learnt.
        assert client.receive(1.0) is None


def test_the_kind_of_nat_can_change_while_the_bed_runs(nat_bed):
    bed = nat_bed()
    reflect(bed.public)
    assert set(seen_ports(probe(bed.client, bed.public.address, tcp_ports=()))) != set()
    bed.set_nat(client=NatKind.UDP_BLOCKED)
    assert probe(bed.client, bed.public.address, tcp_ports=(), patience=1.0)["udp"] == []
    bed.set_nat(client=NatKind.SYMMETRIC)
    assert len(set(seen_ports(probe(bed.client, bed.public.address, tcp_ports=())))) > 1


def test_the_private_networks_reach_neither_each_other_nor_anything_outside_the_bed(nat_bed):
    bed = nat_bed()
    reflect(bed.worker)
    result = probe(bed.client, bed.worker.address, patience=1.0)
    assert answers(result) == [], result

    bed_networks = {"10.1.0.0/24", "10.2.0.0/24", "198.51.100.0/24"}
    for host in bed.hosts:
        routes = host.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True, text=True, check=True)
        for route in json.loads(routes.stdout):
            if route.get("table") == "local" or route.get("type") in ("broadcast", "local"):
                continue  # the namespace's own addresses
            if route["dst"] == "default":
                assert host in (bed.client, bed.worker), f"{host.name} has a default route: {route}"
                router = bed.client_router if host is bed.client else bed.worker_router
                assert route["gateway"] == router.lan_address
            else:
                assert route["dst"] in bed_networks, f"{host.name} routes {route}"
        links = host.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
        names = {link["ifname"] for link in json.loads(links.stdout)}
        assert names <= {"lo", "eth0", "lan0", "wan0", "br0", "to-client", "to-worker"}, names
        # A router forwards only between its two legs: nothing beyond the public segment.
        unreachable = host.run(["ip", "route", "get", "192.0.2.1"], capture_output=True, text=True)
        if host in (bed.client, bed.worker):
            assert "via 10." in unreachable.stdout
        else:
            assert unreachable.returncode != 0, f"{host.name}: {unreachable.stdout}"


def test_inbound_traffic_crosses_a_router_only_for_a_connection_or_a_published_port(nat_bed):
    bed = nat_bed()
    reflect(bed.public)
    reflect(bed.client)
    reflect(bed.worker)

    # Someone on the public segment routing straight at the private networks: dropped.
    bed.public.run(["ip", "route", "add", "10.1.0.0/24", "via", bed.client_router.address], check=True)
    bed.public.run(["ip", "route", "add", "10.2.0.0/24", "via", bed.worker_router.address], check=True)
    for private in (bed.client, bed.worker):
        assert answers(probe(bed.public, private.address, udp_ports=(4001,), tcp_ports=(4000,), patience=1.0)) == []

    # Answers to the client's own datagram come in, but only from where it went: a datagram
    # from another port of the same server to the client's public port is not forwarded.
    result = probe(bed.client, bed.public.address, udp_ports=(4001,), tcp_ports=(), message="poke", patience=1.0)
    assert [port for port, _ in result["udp"]] == [4001], result

    # Nothing published: the worker router's own ports answer nothing of the worker's.
    assert (
        answers(probe(bed.public, bed.worker_router.address, udp_ports=(4001,), tcp_ports=(4000,), patience=1.0)) == []
    )

    # A published TCP port reaches the worker, from the public side and from behind the client's
    # NAT, and the worker sees who connected; the port next to it still does not.
    assert bed.publish_worker_port(4000, public_port=8000) == (bed.worker_router.address, 8000)
    result = probe(bed.public, bed.worker_router.address, udp_ports=(), tcp_ports=(8000, 4010), patience=1.0)
    assert result["tcp"]["8000"].startswith(f"{bed.public.address}:"), result
    assert not result["tcp"]["4010"][:1].isdigit(), result
    result = probe(bed.client, bed.worker_router.address, udp_ports=(), tcp_ports=(8000,))
    assert result["tcp"]["8000"].startswith(f"{bed.client_router.address}:"), result
    bed.worker_router.unpublish_port(8000)
    assert answers(probe(bed.public, bed.worker_router.address, udp_ports=(), tcp_ports=(8000,), patience=1.0)) == []


def run_turn_client(host, turn, username, password, reflector, steps="stun,udp,tcp", wait=15.0) -> dict:
    server = f"{turn.address}:{turn.port}"
    done = host.run(
        [sys.executable, "-c", TURN_CLIENT, server, username, password, reflector, steps, str(wait)],
        capture_output=True,
        text=True,
        timeout=GUARD,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}\n{turn.log_text()[-3000:]}"
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", [NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC])
def test_coturn_relays_over_udp_and_tcp_for_credentials_from_its_secret(nat_bed, kind):
    bed = nat_bed(client_nat=kind)
    reflect(bed.public, tcp_ports=())
    with bed.start_turn("bed secret") as turn:
        assert turn.stun_url == f"stun:{PUBLIC_SERVER_ADDRESS}:3478"
        assert turn.turn_udp_url == f"turn:{PUBLIC_SERVER_ADDRESS}:3478?transport=udp"
        assert turn.turn_tcp_url == f"turn:{PUBLIC_SERVER_ADDRESS}:3478?transport=tcp"
        assert turn.secret_file.read_text().strip() == "bed secret"
        username, password = turn.credentials("client-1")
        outcome = run_turn_client(bed.client, turn, username, password, f"{bed.public.address}:4001")
    # STUN through the client's NAT answers with the router's public address.
    assert outcome["stun"][0] == bed.client_router.address
    for transport in ("udp", "tcp"):
        relayed_address, relayed_port = outcome[transport]["relayed"]
        assert relayed_address == PUBLIC_SERVER_ADDRESS
        assert turn.relay_ports[0] <= relayed_port <= turn.relay_ports[1]
        assert outcome[transport]["mapped"][0] == bed.client_router.address
        # The reflector saw the relay's address, and its answer came back through it.
        assert outcome[transport]["reflected"] == f"{PUBLIC_SERVER_ADDRESS}:{relayed_port}"
        assert outcome[transport]["from"] == [bed.public.address, 4001]
    log = turn.log_text()
    assert f"user <{username}>: incoming packet ALLOCATE processed, success" in log
    assert f"user <{username}>: incoming packet CHANNEL_BIND processed, success" in log


def test_coturn_over_tcp_from_a_network_that_blocks_udp(nat_bed):
    bed = nat_bed(client_nat=NatKind.UDP_BLOCKED)
    reflect(bed.public, tcp_ports=())
    with bed.start_turn() as turn:
        username, password = turn.credentials("client-1")
        outcome = run_turn_client(bed.client, turn, username, password, f"{bed.public.address}:4001", wait=3.0)
    assert outcome["stun"] == "timeout" and outcome["udp"] == "timeout", outcome
    assert outcome["tcp"]["relayed"][0] == PUBLIC_SERVER_ADDRESS, outcome
    assert outcome["tcp"]["reflected"] == f"{PUBLIC_SERVER_ADDRESS}:{outcome['tcp']['relayed'][1]}", outcome


def test_coturn_refuses_expired_and_forged_credentials(nat_bed):
    bed = nat_bed()
    with bed.start_turn("bed secret") as turn:
        expired = turn_rest_credentials("bed secret", "client-1", int(time.time()) - 60)
        forged = turn_rest_credentials("not the secret", "client-1", int(time.time()) + 600)
        stolen_name = (turn.credentials("client-1")[0].replace("client-1", "client-2"), turn.credentials("client-1")[1])
        for username, password in (expired, forged, stolen_name):
            outcome = run_turn_client(bed.client, turn, username, password, "0.0.0.0:9", steps="udp,tcp")
            assert outcome["udp"] == {"error": 401} and outcome["tcp"] == {"error": 401}, (username, outcome)
        log = turn.log_text()
    assert "ALLOCATE processed, success" not in log
    assert "error 401" in log


def _bed_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.startswith(f"{NAME_PREFIX}{os.getpid()}-")}


def test_nothing_is_left_behind_even_when_the_body_raises(tmp_path):
    before = _bed_namespaces()
    with pytest.raises(RuntimeError, match="the test failed"), nat_bed(work_dir=tmp_path) as bed:
        turn = bed.start_turn()
        spawned = bed.worker.spawn(["sleep", "600"])
        # Started in the bed by hand, not through spawn: still ended by the bed.
        stray = subprocess.Popen([*bed.client.prefix, "sleep", "600"])
        namespaces = set(bed.namespaces)
        assert namespaces <= _bed_namespaces()
        raise RuntimeError("the test failed")
    assert _bed_namespaces() == before
    assert not namespaces & _bed_namespaces()
    for process in (turn.process, spawned, stray):
        assert process.wait(10) is not None
    assert "log file opened" in turn.log_text()  # the work directory given is kept


def test_a_bed_left_by_a_dead_process_is_removed():
    # A pid that cannot be running: the kernel's pid_max is at most 2**22.
    stale = f"{NAME_PREFIX}{2**22 + 7}-0-client-router"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in remove_stale_beds()
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert stale not in listing.split()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True, check=False)


def test_the_access_links_can_be_shaped_and_the_public_segment_is_not(nat_bed):
    bed = nat_bed(rate="1gbit")
    shaped = {
        bed.client.name: ["eth0"], bed.client_router.name: ["lan0"],
        bed.worker.name: ["eth0"], bed.worker_router.name: ["lan0"], bed.public.name: [],
    }  # fmt: skip
    for host in bed.hosts:
        qdiscs = json.loads(host.run(["tc", "-j", "qdisc", "show"], capture_output=True, text=True, check=True).stdout)
        tbf = [q["dev"] for q in qdiscs if q["kind"] == "tbf" and q["options"]["rate"] == 125_000_000]
        assert tbf == shaped[host.name], (host.name, qdiscs)
    assert bed.describe().endswith(", access links 1gbit")
