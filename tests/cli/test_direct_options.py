"""``rtcxfer worker --direct-port`` and ``--direct-advertise`` (and their ``rtcxfer.toml`` keys):
what transport options they make, and that a wrong one is a usage error (exit 2) saying what is
wrong, before anything connects. In process (click's runner); the options at work through NAT:
``tests/transports/test_direct_nat.py``."""

from __future__ import annotations

import os
import socket
from contextlib import closing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rtcxfer.cli.main import main
from rtcxfer.cli.worker import direct_options


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``worker(*args)``: rtcxfer worker ARGS in process, in an empty directory, without the
    developer's settings; it never gets as far as connecting (every case is refused first)."""
    for name in list(os.environ):
        if name.startswith("RTCXFER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str):
        return CliRunner().invoke(main, ["worker", "--token", "t" * 32, *args])

    return run


def test_the_options_become_the_direct_transports_port_and_advertised_address():
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert direct_options(None, None) == {}
    assert direct_options(port, None) == {"direct": {"port": port}}
    assert direct_options(port, "203.0.113.7:40123") == {"direct": {"port": port, "advertise": "203.0.113.7:40123"}}
    assert direct_options(port, "[2001:DB8::1]:443") == {"direct": {"port": port, "advertise": "[2001:db8::1]:443"}}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--direct-advertise", "203.0.113.7:40123"], "--direct-advertise needs --direct-port"),
        (["--direct-port", "9000", "--direct-advertise", "gpu.example.org:40123"], "is not an IP address"),
        (["--direct-port", "9000", "--direct-advertise", "203.0.113.7"], "is not IPv4:PORT or [IPv6]:PORT"),
        (["--direct-port", "9000", "--direct-advertise", "2001:db8::1:443"], "is not IPv4:PORT or [IPv6]:PORT"),
        (["--direct-port", "9000", "--direct-advertise", "0.0.0.0:40123"], "is unspecified"),
        (["--direct-port", "9000", "--direct-advertise", "224.0.0.9:40123"], "multicast"),
        (["--direct-port", "9000", "--direct-advertise", "203.0.113.7:0"], "is not a TCP port"),
        (["--direct-port", "70000"], "70000 is not in the range"),
    ],
)
def test_a_wrong_direct_option_is_a_usage_error_saying_why(worker, args, said):
    run = worker(*args)
    assert run.exit_code == 2, run.output
    assert said in run.output, run.output
    assert "Traceback" not in run.output


def test_a_direct_port_in_use_is_refused_before_the_worker_starts(worker):
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = worker("--direct-port", str(port))
    assert run.exit_code == 2, run.output
    assert f"cannot listen on TCP port {port}" in run.output, run.output


def test_the_configuration_file_knows_the_direct_options(worker, tmp_path):
    (tmp_path / "rtcxfer.toml").write_text('[worker]\ndirect-advertise = "203.0.113.7:40123"\n')
    run = worker()
    assert run.exit_code == 2 and "--direct-advertise needs --direct-port" in run.output, run.output


def test_direct_options_are_usage_errors_not_exceptions():
    with pytest.raises(click.UsageError):
        direct_options(None, "203.0.113.7:1")
