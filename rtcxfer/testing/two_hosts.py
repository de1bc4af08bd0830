"""Two "machines" on one Linux box: two network namespaces joined by a veth pair.

For tests and benchmarks that must cross a real IP path (a path MTU, IP fragmentation, a rate
limit, a firewall) without sending a packet anywhere but between namespaces they made::

    from rtcxfer.testing.two_hosts import two_hosts

    with two_hosts(drop_fragments=True, rate="1gbit") as bed:
        server = bed.b.spawn(["python3", "-m", "http.server", "--bind", bed.b.address, "8000"])
        bed.a.run(["curl", f"http://{bed.b.address}:8000/"], check=True)

What a bed is:

* two namespaces, ``bed.a`` and ``bed.b`` (:class:`Host`), each with ``lo`` up and one veth
  end (``veth0``) of ``mtu`` bytes (1500 by default), IPv6 off; addresses from a private /30
  that exist only inside those two namespaces; no default route, so nothing else is reachable.
  The veth pair is created inside the namespaces, so the host's own namespace never sees it.
* ``drop_fragments`` (or later :meth:`TwoHosts.set_drop_fragments`): an nftables rule in both
  namespaces drops every incoming IP fragment (``ip frag-off & 0x3fff != 0``) before the kernel
  reassembles it, as NATs and firewalls that drop fragments do; datagrams that fit the MTU
  pass, larger ones vanish.
* ``rate`` (tc syntax, e.g. ``"1gbit"``): a token bucket filter on both veth ends.
* ``block_tcp``: TCP between the two is dropped, except to and from ``allow_tcp_ports`` (for a
  signaling server, say); loopback inside a namespace is unaffected.

Names derive from this process's pid and a counter (``rtcxfer-<pid>-<n>-a``), so parallel beds
never clash; a bed left behind by a process that died (its pid no longer runs, and nothing runs
inside it) is removed when the next bed is made. Everything is removed on exit from the
``with`` block, also on an exception; processes started with :meth:`Host.spawn` are ended
first, by their own pid.

Needs root and the ``ip``, ``nft`` (only with ``drop_fragments`` or ``block_tcp``) and ``tc``
(only with ``rate``) commands: :func:`missing_requirements` says what is missing, for a skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence

import attrs

from rtcxfer.testing.namespace_host import InNamespace, delete_namespace, remove_stale_namespaces

__all__ = ["NAME_PREFIX", "Host", "TwoHosts", "missing_requirements", "remove_stale_beds", "two_hosts"]

NAME_PREFIX = "rtcxfer-"
"""Every namespace a bed makes is named ``rtcxfer-<pid>-<n>-a`` or ``...-b``."""

INTERFACE = "veth0"
_STALE_NAME = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d+)-(\d+)-[ab]$")
_counter = itertools.count()
_IPV6_OFF = "/proc/sys/net/ipv6/conf/all/disable_ipv6"
_COMMAND_GUARD = 30.0  # seconds; ip and nft answer in milliseconds


def missing_requirements(*, nft: bool = True, tc: bool = False) -> str | None:
    """Why a bed cannot be made here (a reason for ``pytest.skip``), or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    wanted = ["ip"] + (["nft"] if nft else []) + (["tc"] if tc else [])
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if missing:
        return f"missing {' and '.join(missing)} (Debian: apt-get install nftables iproute2)"
    return None


def _run(command: Sequence[str], *, stdin: str | None = None) -> None:
    result = subprocess.run(
        list(command), input=stdin, capture_output=True, text=True, timeout=_COMMAND_GUARD, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def remove_stale_beds() -> list[str]:
    """Delete the namespaces of beds whose making process no longer runs and in which nothing
    runs any more; return their names."""
    return remove_stale_namespaces(_STALE_NAME)


@attrs.define
class Host(InNamespace):
    """One side of a bed: a namespace, its address and its peer's."""

    namespace: str
    address: str
    peer_address: str
    _processes: list[subprocess.Popen] = attrs.field(factory=list, repr=False)


@attrs.define
class TwoHosts:
    """A bed made by :func:`two_hosts`: hosts ``a`` and ``b`` and how their link was set up."""

    a: Host
    b: Host
    mtu: int
    drop_fragments: bool
    rate: str | None
    block_tcp: bool
    allow_tcp_ports: tuple[int, ...]

    def set_drop_fragments(self, drop: bool) -> None:
        """Start or stop dropping IP fragments now, in both namespaces (a path that changes)."""
        if drop == self.drop_fragments:
            return
        for host in (self.a, self.b):
            if drop:
                _run([*host.prefix, "nft", "-f", "-"], stdin=_table(_FRAGMENT_TABLE, [_FRAGMENT_RULE], _BEFORE_DEFRAG))
            else:
                _run([*host.prefix, "nft", "delete", "table", "ip", _FRAGMENT_TABLE])
        self.drop_fragments = drop

    def describe(self) -> str:
        parts = [f"veth MTU {self.mtu}", "IP fragments dropped" if self.drop_fragments else "IP fragments pass"]
        if self.rate:
            parts.append(f"rate {self.rate}")
        if self.block_tcp:
            allowed = ", ".join(map(str, self.allow_tcp_ports)) or "none"
            parts.append(f"TCP blocked (ports allowed: {allowed})")
        return ", ".join(parts)


_FRAGMENT_TABLE = "rtcxfer_fragments"
_FRAGMENT_RULE = "ip frag-off & 0x3fff != 0 drop"
# Before conntrack's defragmentation (priority -400), which would otherwise reassemble the
# fragments before any rule could see them.
_BEFORE_DEFRAG = -500
_TCP_TABLE = "rtcxfer_tcp"


def _table(name: str, rules: Sequence[str], priority: int = 0) -> str:
    """An nftables table whose rules see the traffic arriving on the veth."""
    lines = "".join(f'    iifname "{INTERFACE}" {rule}\n' for rule in rules)
    chain = f"  chain prerouting {{\n    type filter hook prerouting priority {priority};\n{lines}  }}\n"
    return f"table ip {name} {{\n{chain}}}\n"


def _tcp_rules(allow_tcp_ports: Sequence[int]) -> list[str]:
    rules = []
    if allow_tcp_ports:
        ports = ", ".join(str(port) for port in allow_tcp_ports)
        rules += [f"tcp dport {{ {ports} }} accept", f"tcp sport {{ {ports} }} accept"]
    return [*rules, "meta l4proto tcp drop"]


def _subnet(index: int) -> tuple[str, str]:
    # A /30 in 10.213.0.0/16 from the pid and the counter: the addresses exist only inside the
    # bed, so a collision would be harmless anyway; distinct ones keep logs unambiguous.
    slot = (os.getpid() * 7 + index) % 16384
    third, fourth = divmod(slot * 4, 256)
    return f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"


@contextlib.contextmanager
def two_hosts(
    *,
    mtu: int = 1500,
    drop_fragments: bool = False,
    rate: str | None = None,
    burst: str = "512kb",
    block_tcp: bool = False,
    allow_tcp_ports: Sequence[int] = (),
) -> Iterator[TwoHosts]:
    """Make a bed (see the module docstring), yield it, and always remove it."""
    reason = missing_requirements(nft=drop_fragments or block_tcp, tc=rate is not None)
    if reason is not None:
        raise RuntimeError(f"cannot make a two-host bed: {reason}")
    remove_stale_beds()
    index = next(_counter)
    base = f"{NAME_PREFIX}{os.getpid()}-{index}"
    address_a, address_b = _subnet(index)
    a = Host(f"{base}-a", address_a, address_b)
    b = Host(f"{base}-b", address_b, address_a)
    made: list[str] = []
    try:
        for host in (a, b):
            _run(["ip", "netns", "add", host.namespace])
            made.append(host.namespace)
        _run(
            [
                "ip",
                "-n",
                a.namespace,
                "link",
                "add",
                INTERFACE,
                "type",
                "veth",
                "peer",
                "name",
                INTERFACE,
                "netns",
                b.namespace,
            ]
        )
        for host in (a, b):
            # No IPv6 (not even link-local): the veth's one IPv4 address is all a peer can offer.
            _run([*host.prefix, "sh", "-c", f"if [ -w {_IPV6_OFF} ]; then echo 1 > {_IPV6_OFF}; fi"])
            _run(["ip", "-n", host.namespace, "link", "set", "lo", "up"])
            _run(["ip", "-n", host.namespace, "link", "set", INTERFACE, "mtu", str(mtu), "up"])
            _run(["ip", "-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", INTERFACE])
            if block_tcp:
                _run([*host.prefix, "nft", "-f", "-"], stdin=_table(_TCP_TABLE, _tcp_rules(allow_tcp_ports)))
            if rate is not None:
                _run(["tc", "-n", host.namespace, "qdisc", "add", "dev", INTERFACE, "root", "tbf",
                      "rate", rate, "burst", burst, "latency", "50ms"])  # fmt: skip
        bed = TwoHosts(a, b, mtu, False, rate, block_tcp, tuple(allow_tcp_ports))
        bed.set_drop_fragments(drop_fragments)
        yield bed
    finally:
        for host in (a, b):
            host.end_processes()
        for name in made:
            delete_namespace(name)
