"""A client and a worker behind NAT routers, a "public" segment between them, and a TURN/STUN
server on it: the internet in five network namespaces, for tests that must cross real NATs::

    from rtcxfer.testing.nat_bed import NatKind, nat_bed

    with nat_bed(client_nat=NatKind.SYMMETRIC) as bed, bed.start_turn() as turn:
        signal = CliProcess("signal", ["signal", "--host", bed.public.address, ...], log_dir,
                            prefix=bed.public.prefix)
        worker = CliProcess("worker", [..., "--ice-server", turn.stun_url], log_dir, prefix=bed.worker.prefix)

The topology (every address exists only inside the bed)::

      client 10.1.0.2/24                                          worker 10.2.0.2/24
        | eth0 (default via 10.1.0.1)                 (default via 10.2.0.1) eth0 |
        | lan0 10.1.0.1/24                                         10.2.0.1/24 lan0 |
      client-router  --- NAT ---                           --- NAT ---  worker-router
        | wan0 198.51.100.2/24                                 198.51.100.3/24 wan0 |
        +-------------------------- br0 198.51.100.1/24 -------------------------+
                                public (signaling server, coturn)

* ``public`` (:class:`Host`): a bridge ``br0`` joining the routers' public legs, holding the
  public server address 198.51.100.1 (TEST-NET-2, a documentation range). No default route:
  it reaches the routers' public addresses and nothing else, the private networks included.
  So a TURN server asked to relay to a private address gets ``ENETUNREACH``, and coturn 4.6.1
  then closes that whole allocation (``udp send: Network is unreachable`` on its stderr, the
  session ``closed (2nd stage), reason: general`` in its log): rtcxfer's relay candidates never
  check such addresses (:func:`rtcxfer.net.ice_paths.relay_can_reach`).
* ``client`` and ``worker`` (:class:`Host`): one private address each; their only route beside
  their own /24 is the default route via their router.
* ``client_router`` and ``worker_router`` (:class:`Router`): a LAN leg and a public leg, IP
  forwarding on, no default route (so nothing leaves the bed), and one nftables table doing NAT
  on the public leg. Their forward chain lets private -> public through and public -> private
  only for ``ct state established,related`` and ``ct status dnat`` (a published port): filtering
  is address-and-port-dependent whatever the mapping, an answer gets in only from where its flow
  went. Packets to a router's own public address that answer nothing it sent are dropped
  unanswered (so conntrack keeps no entry for them that could make it change a port later).
* :class:`NatKind` per router, switchable with :meth:`Router.set_nat`:
  ``ENDPOINT_INDEPENDENT`` (``masquerade persistent``: a socket keeps its port, so every
  destination sees it on the same public port: STUN is enough), ``SYMMETRIC`` (``masquerade
  random,fully-random``: a new public port per destination: only a TURN relay works) and
  ``UDP_BLOCKED`` (no UDP forwarded at all; TCP passes, so TURN over TCP works). A change applies
  to new flows; conntrack keeps the mapping of a flow it already tracks.
* :meth:`NatBed.publish_worker_port`: DNAT of a TCP port on the worker router's public address
  to the worker (what Vast.ai or RunAI do for a container port).
* :meth:`NatBed.start_turn`: coturn (``turnserver``) in ``public``, bound to 198.51.100.1 only,
  UDP and TCP on 3478, a small relay port range, the TURN REST API's shared secret
  (``use-auth-secret``), no TLS, no CLI, its files and log in the bed's work directory.
  :func:`turn_rest_credentials` makes credentials for it (a test helper; the product has its own).

Namespaces are named ``rtcxfer-nat-<pid>-<n>-<role>``, so parallel beds never clash; a bed left
behind by a process that died (its pid no longer runs, nothing runs inside) is removed when the
next bed is made. Everything is removed on exit from the ``with`` block, also on an exception:
TURN servers and processes started with :meth:`Host.spawn` are ended by their own pid, then any
process still running inside a bed namespace (a test's ``CliProcess`` it forgot), then the
namespaces, then the work directory if the bed made it.

Needs root, ``ip`` and ``nft``, and ``turnserver`` (Debian: coturn) for :meth:`NatBed.start_turn`:
:func:`missing_requirements` says what is missing, for a skip.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import attrs

from rtcxfer.testing import two_hosts
from rtcxfer.testing.namespace_host import (
    InNamespace,
    delete_namespace,
    end_process,
    pids_inside,
    remove_stale_namespaces,
)

__all__ = [
    "NAME_PREFIX",
    "PUBLIC_SERVER_ADDRESS",
    "Host",
    "NatBed",
    "NatKind",
    "Router",
    "TurnServer",
    "missing_requirements",
    "nat_bed",
    "remove_stale_beds",
    "turn_rest_credentials",
]

NAME_PREFIX = "rtcxfer-nat-"
"""Every namespace a bed makes is named ``rtcxfer-nat-<pid>-<n>-<role>``."""

PUBLIC_NETWORK = "198.51.100.0/24"  # TEST-NET-2: documentation only, never routed anywhere
PUBLIC_SERVER_ADDRESS = "198.51.100.1"
CLIENT_NETWORK = "10.1.0.0/24"
WORKER_NETWORK = "10.2.0.0/24"

ROLES = ("public", "client-router", "worker-router", "client", "worker")
LAN_INTERFACE = "lan0"  # a router's private leg
PUBLIC_INTERFACE = "wan0"  # a router's public leg
HOST_INTERFACE = "eth0"  # a private host's one leg
BRIDGE = "br0"
NAT_TABLE = "rtcxfer_nat"
TURN_PORT = 3478
TURN_REALM = "rtcxfer.test"  # .test is reserved (RFC 2606): never a real domain
RELAY_PORTS = (49152, 49199)

_STALE_NAME = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d+)-(\d+)-(?:{'|'.join(map(re.escape, ROLES))})$")
_counter = itertools.count()
_COMMAND_GUARD = 30.0  # seconds; ip and nft answer in milliseconds
_START_GUARD = 30.0  # seconds for coturn to open its listeners, on a loaded machine
_IPV6_OFF = "/proc/sys/net/ipv6/conf/{}/disable_ipv6"
_LARGEST_EXPIRY = 2**31  # coturn refuses a TURN REST timestamp at or past 2^31


class NatKind(enum.Enum):
    """What a router does to its private network's traffic on the way out."""

    #: ``masquerade persistent``: the source port is kept, one public port per socket whatever
    #: the destination ("cone"); a STUN server is enough for peer-to-peer.
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    #: ``masquerade random,fully-random``: a new public port for every destination; only a TURN
    #: relay gets through.
    SYMMETRIC = "symmetric"
    #: No UDP is forwarded at all, either way; TCP is (with ports kept): TURN over TCP works.
    UDP_BLOCKED = "udp-blocked"


_MASQUERADE = {
    NatKind.ENDPOINT_INDEPENDENT: "masquerade persistent",
    NatKind.SYMMETRIC: "masquerade random,fully-random",
    NatKind.UDP_BLOCKED: "masquerade persistent",
}


def missing_requirements(*, turn: bool = True) -> str | None:
    """Why a bed cannot be made here (a reason for ``pytest.skip``), or None if it can;
    ``turn=False`` when no TURN server will be started."""
    reason = two_hosts.missing_requirements(nft=True)
    if reason is not None:
        return reason
    if turn and shutil.which("turnserver") is None:
        return "missing turnserver (Debian: apt-get install coturn)"
    return None


def turn_rest_credentials(secret: str, name: str, expires: int) -> tuple[str, str]:
    """TURN REST API credentials (coturn's ``use-auth-secret``) valid until ``expires`` (seconds
    since the epoch): username ``expires:name``, password base64(HMAC-SHA1(secret, username)).

    A test helper for the bed's TURN server; rtcxfer's signaling server has its own."""
    if not 0 < expires < _LARGEST_EXPIRY:
        raise ValueError(f"a TURN REST expiry must lie between 0 and 2**31 (coturn refuses others), not {expires}")
    username = f"{expires}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def _run(command: Sequence[str], *, stdin: str | None = None) -> str:
    result = subprocess.run(
        list(command), input=stdin, capture_output=True, text=True, timeout=_COMMAND_GUARD, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def remove_stale_beds() -> list[str]:
    """Delete the namespaces of NAT beds whose making process no longer runs and in which
    nothing runs any more; return their names."""
    return remove_stale_namespaces(_STALE_NAME)


@attrs.define
class Host(InNamespace):
    """One namespace of a bed: ``name`` is its role (``client``, ``worker``, ``public``,
    ``client-router``, ``worker-router``), ``address`` the one its services listen on (a
    router's: its public one)."""

    name: str
    namespace: str
    address: str
    _processes: list[subprocess.Popen] = attrs.field(factory=list, repr=False)


@attrs.define
class Router(Host):
    """A NAT router: ``lan_address`` on its private leg, ``address`` on its public one."""

    lan_address: str = ""
    private_network: str = ""
    nat: NatKind = NatKind.ENDPOINT_INDEPENDENT
    #: public TCP port -> (private address, private port)
    published: dict[int, tuple[str, int]] = attrs.field(factory=dict)

    def set_nat(self, kind: NatKind) -> None:
        """Switch the kind of NAT now (new flows get it; tracked flows keep their mapping)."""
        self.nat = NatKind(kind)
        self._apply()

    def publish_port(self, port: int, to_address: str, *, public_port: int | None = None) -> tuple[str, int]:
        """Forward TCP ``public_port`` (``port`` if not given) of the public address to
        ``to_address:port`` behind the router; return the public address and port."""
        public_port = port if public_port is None else public_port
        self.published[public_port] = (to_address, port)
        self._apply()
        return self.address, public_port

    def unpublish_port(self, public_port: int) -> None:
        """Stop forwarding ``public_port``; connections already made through it go on."""
        self.published.pop(public_port, None)
        self._apply()

    def ruleset(self) -> str:
        """The nftables table this router runs, as ``nft -f`` text."""
        dnat = "".join(
            f'    iifname "{PUBLIC_INTERFACE}" tcp dport {public_port} dnat to {address}:{port}\n'
            for public_port, (address, port) in sorted(self.published.items())
        )
        # Exceptions are separate accept rules before the chain's one drop (its policy):
        # nftables 1.0.6 merges adjacent payload matches of one rule into a single compare.
        udp_block = "    meta l4proto udp drop\n" if self.nat is NatKind.UDP_BLOCKED else ""
        out, lan = f'oifname "{PUBLIC_INTERFACE}"', f'iifname "{LAN_INTERFACE}"'
        inbound = f'iifname "{PUBLIC_INTERFACE}" oifname "{LAN_INTERFACE}"'
        return (
            f"table ip {NAT_TABLE} {{\n"
            f"  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n"
            f"  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    {out} {_MASQUERADE[self.nat]}\n  }}\n"
            f"  chain forward {{\n    type filter hook forward priority filter; policy drop;\n{udp_block}"
            f"    {lan} {out} accept\n"
            f"    {inbound} ct state established,related accept\n"
            f"    {inbound} ct status dnat accept\n"
            "  }\n"
            # Dropped before conntrack confirms it, an unsolicited packet to the router leaves no
            # entry behind. Delivered (and answered with an ICMP port unreachable), a peer's
            # early ICE check would leave an entry whose tuple the router's mapping of its own
            # host's reply flow then clashes with, and masquerade would pick another port: hole
            # punching fails behind an "endpoint-independent" NAT that does that.
            f"  chain input {{\n    type filter hook input priority filter; policy accept;\n"
            f'    iifname "{PUBLIC_INTERFACE}" ct state established,related accept\n'
            f'    iifname "{PUBLIC_INTERFACE}" drop\n'
            "  }\n}\n"
        )

    def _apply(self) -> None:
        # Declare, delete and remake in one transaction: no moment without the table's rules.
        _run(
            [*self.prefix, "nft", "-f", "-"],
            stdin=f"table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\n{self.ruleset()}",
        )


@attrs.define
class TurnServer:
    """coturn running in a bed's ``public`` namespace; a context manager that stops it."""

    address: str
    port: int
    realm: str
    secret: str
    relay_ports: tuple[int, int]
    directory: Path
    process: subprocess.Popen = attrs.field(repr=False)

    @property
    def stun_url(self) -> str:
        return f"stun:{self.address}:{self.port}"

    @property
    def turn_udp_url(self) -> str:
        return f"turn:{self.address}:{self.port}?transport=udp"

    @property
    def turn_tcp_url(self) -> str:
        return f"turn:{self.address}:{self.port}?transport=tcp"

    @property
    def log_path(self) -> Path:
        return self.directory / "turnserver.log"

    @property
    def secret_file(self) -> Path:
        """The shared secret in a file (mode 0600), for ``rtcxfer signal --turn-secret-file``."""
        return self.directory / "turn-secret"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def credentials(self, name: str, ttl: int = 600) -> tuple[str, str]:
        """TURN REST credentials (username, password) for ``name``, valid ``ttl`` seconds more."""
        return turn_rest_credentials(self.secret, name, int(time.time()) + ttl)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        end_process(self.process, grace)

    def __enter__(self) -> TurnServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _listening(host: Host, address: str, port: int) -> bool:
    """Whether something in ``host`` listens on ``address:port`` over both UDP and TCP."""
    found = _run([*host.prefix, "ss", "-H", "-n", "-l", "-u", "-t"])
    local = f"{address}:{port}"
    kinds = {line.split()[0] for line in found.splitlines() if len(line.split()) > 4 and line.split()[4] == local}
    return {"udp", "tcp"} <= kinds


@attrs.define
class NatBed:
    """A bed made by :func:`nat_bed` (see the module docstring)."""

    public: Host
    client_router: Router
    worker_router: Router
    client: Host
    worker: Host
    work_dir: Path
    #: The access links' rate (tc syntax), or None: unshaped.
    rate: str | None = None
    turn_servers: list[TurnServer] = attrs.field(factory=list, repr=False)

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.public, self.client_router, self.worker_router, self.client, self.worker)

    @property
    def namespaces(self) -> list[str]:
        return [host.namespace for host in self.hosts]

    def set_nat(self, *, client: NatKind | None = None, worker: NatKind | None = None) -> None:
        """Switch either router's kind of NAT (see :meth:`Router.set_nat`)."""
        if client is not None:
            self.client_router.set_nat(client)
        if worker is not None:
            self.worker_router.set_nat(worker)

    def publish_worker_port(self, port: int, *, public_port: int | None = None) -> tuple[str, int]:
        """Forward TCP ``public_port`` (``port`` if not given) of the worker router's public
        address to the worker's ``port``; return the public (address, port) a client dials."""
        return self.worker_router.publish_port(port, self.worker.address, public_port=public_port)

    def start_turn(
        self,
        secret: str | None = None,
        *,
        realm: str = TURN_REALM,
        port: int = TURN_PORT,
        relay_ports: tuple[int, int] = RELAY_PORTS,
        verbose: bool = True,
        options: Sequence[str] = (),
    ) -> TurnServer:
        """Start coturn on the public server address (UDP and TCP ``port``) with the TURN REST
        API's shared ``secret`` (a fresh random one if None) and return it once it listens; it
        is stopped on leaving its ``with`` block or the bed's. ``verbose``: coturn logs every
        session, request and answer (``user <...>: incoming packet ALLOCATE processed, success``,
        ``error 401``), which is what a test reads to see why ICE did what it did.
        ``options`` go to turnserver as they are (e.g. ``--denied-peer-ip=...``)."""
        if shutil.which("turnserver") is None:
            raise RuntimeError("cannot start a TURN server: missing turnserver (Debian: apt-get install coturn)")
        secret = secrets.token_urlsafe(24) if secret is None else secret
        directory = Path(tempfile.mkdtemp(prefix="turn-", dir=self.work_dir))
        address = self.public.address
        server_args = [
            "turnserver",
            "-n",  # no /etc/turnserver.conf: everything is on this line
            f"--listening-ip={address}",
            f"--relay-ip={address}",
            f"--listening-port={port}",
            f"--min-port={relay_ports[0]}",
            f"--max-port={relay_ports[1]}",
            f"--realm={realm}",
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--no-multicast-peers",
            "--no-software-attribute",
            f"--userdb={directory / 'turndb'}",
            f"--pidfile={directory / 'turnserver.pid'}",
            f"--log-file={directory / 'turnserver.log'}",
            "--simple-log",
            "--no-stdout-log",
            *(["--verbose"] if verbose else []),
            *options,
        ]
        with open(directory / "turnserver.stderr", "wb") as stderr:
            process = subprocess.Popen(
                self.public.command(server_args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=directory,
            )
        turn = TurnServer(address, port, realm, secret, tuple(relay_ports), directory, process)
        self.turn_servers.append(turn)
        secret_file = turn.secret_file
        secret_file.touch(mode=0o600)
        secret_file.write_text(secret + "\n")
        deadline = time.monotonic() + _START_GUARD
        while not _listening(self.public, address, port):
            if not turn.running() or time.monotonic() > deadline:
                turn.stop()
                raise RuntimeError(
                    f"coturn did not listen on {address}:{port} (exit {process.returncode}):\n{turn.log_text()[-3000:]}"
                )
            time.sleep(0.05)
        return turn

    def describe(self) -> str:
        published = ", ".join(
            f"{self.worker_router.address}:{public} -> {address}:{port}"
            for public, (address, port) in sorted(self.worker_router.published.items())
        )
        return (
            f"client {self.client.address} behind {self.client_router.nat.value} NAT "
            f"({self.client_router.address}), worker {self.worker.address} behind {self.worker_router.nat.value} NAT "
            f"({self.worker_router.address}), public server {self.public.address}"
            + (f", published {published}" if published else "")
            + (f", access links {self.rate}" if self.rate else "")
        )

    def _tear_down(self, made: Sequence[str], grace: float = 5.0) -> None:
        for turn in self.turn_servers:
            turn.stop(grace)
        for host in self.hosts:
            host.end_processes(grace)
        # Whatever still runs inside was started there by the test that owns the bed.
        for name in made:
            for pid in pids_inside(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in made:
            delete_namespace(name)


def _sysctl(host: Host, *settings: str) -> None:
    _run([*host.prefix, "sysctl", "-q", "-w", *settings])


def _disable_ipv6(host: Host) -> None:
    # No IPv6 (not even link-local): each leg's one IPv4 address is all a peer can offer.
    paths = " ".join(_IPV6_OFF.format(which) for which in ("all", "default"))
    _run([*host.prefix, "sh", "-c", f"for f in {paths}; do if [ -w $f ]; then echo 1 > $f; fi; done"])


def _veth(inside: Host, name: str, other: Host, other_name: str, mtu: int) -> None:
    _run(["ip", "-n", inside.namespace, "link", "add", name, "mtu", str(mtu), "type", "veth",
          "peer", "name", other_name, "mtu", str(mtu), "netns", other.namespace])  # fmt: skip


def _address(host: Host, interface: str, cidr: str) -> None:
    _run(["ip", "-n", host.namespace, "addr", "add", cidr, "dev", interface])
    _run(["ip", "-n", host.namespace, "link", "set", interface, "up"])


@contextlib.contextmanager
def nat_bed(
    *,
    client_nat: NatKind = NatKind.ENDPOINT_INDEPENDENT,
    worker_nat: NatKind = NatKind.ENDPOINT_INDEPENDENT,
    mtu: int = 1500,
    work_dir: str | os.PathLike[str] | None = None,
    rate: str | None = None,
    burst: str = "512kb",
) -> Iterator[NatBed]:
    """Make a bed (see the module docstring), yield it, and always remove it. TURN servers keep
    their files and logs in ``work_dir`` (a temporary directory removed with the bed if None).
    ``rate`` (tc syntax, e.g. ``"1gbit"``): a token bucket filter on both ends of the client's
    and of the worker's link to its router, as :func:`~rtcxfer.testing.two_hosts.two_hosts`
    shapes its one link; the public segment stays unshaped."""
    reason = missing_requirements(turn=False) or (two_hosts.missing_requirements(tc=True) if rate else None)
    if reason is not None:
        raise RuntimeError(f"cannot make a NAT bed: {reason}")
    remove_stale_beds()
    base = f"{NAME_PREFIX}{os.getpid()}-{next(_counter)}"
    own_dir = work_dir is None
    directory = Path(tempfile.mkdtemp(prefix="rtcxfer-nat-bed-")) if own_dir else Path(work_dir)
    directory.mkdir(parents=True, exist_ok=True)
    public = Host("public", f"{base}-public", PUBLIC_SERVER_ADDRESS)
    client_router = Router(
        "client-router", f"{base}-client-router", "198.51.100.2", lan_address="10.1.0.1",
        private_network=CLIENT_NETWORK, nat=NatKind(client_nat),
    )  # fmt: skip
    worker_router = Router(
        "worker-router", f"{base}-worker-router", "198.51.100.3", lan_address="10.2.0.1",
        private_network=WORKER_NETWORK, nat=NatKind(worker_nat),
    )  # fmt: skip
    client = Host("client", f"{base}-client", "10.1.0.2")
    worker = Host("worker", f"{base}-worker", "10.2.0.2")
    bed = NatBed(public, client_router, worker_router, client, worker, directory, rate)
    made: list[str] = []
    try:
        for host in bed.hosts:
            _run(["ip", "netns", "add", host.namespace])
            made.append(host.namespace)
            _disable_ipv6(host)
            _run(["ip", "-n", host.namespace, "link", "set", "lo", "up"])
        _run(["ip", "-n", public.namespace, "link", "add", BRIDGE, "mtu", str(mtu), "type", "bridge"])
        _address(public, BRIDGE, f"{public.address}/24")
        for router, private in ((client_router, client), (worker_router, worker)):
            leg = f"to-{private.name}"  # the router's public leg as the bridge sees it
            _veth(router, PUBLIC_INTERFACE, public, leg, mtu)
            _run(["ip", "-n", public.namespace, "link", "set", leg, "master", BRIDGE, "up"])
            _address(router, PUBLIC_INTERFACE, f"{router.address}/24")
            _veth(private, HOST_INTERFACE, router, LAN_INTERFACE, mtu)
            _address(router, LAN_INTERFACE, f"{router.lan_address}/24")
            _address(private, HOST_INTERFACE, f"{private.address}/24")
            _run(["ip", "-n", private.namespace, "route", "add", "default", "via", router.lan_address])
            _sysctl(router, "net.ipv4.ip_forward=1")
            router._apply()
            if rate is not None:
                for host, interface in ((private, HOST_INTERFACE), (router, LAN_INTERFACE)):
                    _run(["tc", "-n", host.namespace, "qdisc", "add", "dev", interface, "root", "tbf",
                          "rate", rate, "burst", burst, "latency", "50ms"])  # fmt: skip
        yield bed
    finally:
        bed._tear_down(made)
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
