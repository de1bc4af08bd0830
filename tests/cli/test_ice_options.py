"""The ICE and TLS options of ``rtcxfer signal``, ``worker``, ``submit`` and ``workers``: what
they build, and that a wrong one is a usage error (exit 2) saying what is wrong, never a
traceback, never echoing a credential. In process (click's runner); nothing listens or connects.
The same through real processes, and wss:// end to end: ``tests/cli/test_e2e_ice_and_tls.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtcxfer.cli.main import main
from rtcxfer.cli.options import peer_options
from rtcxfer.net.peer import PeerOptions
from rtcxfer.protocol.ice import IceServer


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``cli(*args)``: rtcxfer ARGS in process, in an empty directory, without the developer's settings."""
    for name in list(os.environ):
        if name.startswith("RTCXFER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str):
        return CliRunner().invoke(main, list(args))

    return run


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "job.zip"
    path.write_bytes(b"not read: the options are refused first")
    return path


def assert_usage_error(result, *says: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # click's own exit, not an exception of ours
    assert "Traceback" not in result.output
    for text in says:
        assert text in result.output, result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--stun", "turn:127.0.0.1"], ["--stun", "is a TURN URL"]),
        (["--turn", "stun:127.0.0.1"], ["--turn", "is a STUN URL"]),
        (["--stun", "stun:127.0.0.1:99999"], ["'stun:127.0.0.1:99999'", "1 to 65535"]),
        (["--turn", "turns:127.0.0.1?transport=udp"], ["runs on TCP"]),
        (["--turn", "turn:127.0.0.1"], ["--turn needs --turn-secret-file"]),
        (["--turn-secret-file", "secret"], ["give the TURN server's URL too"]),
        (["--turn", "turn:127.0.0.1", "--turn-secret-file", "missing"], ["cannot read the TURN secret file missing"]),
        (["--turn", "turn:127.0.0.1", "--turn-secret-file", "secret", "--turn-ttl", "10"], ["--turn-ttl"]),
        (["--certfile", "missing.pem", "--keyfile", "missing.key"], ["cannot use the TLS certificate", "missing.pem"]),
        (["--keyfile", "server.key"], ["--keyfile needs --certfile"]),
    ],
)
def test_signal_refuses_ice_and_tls_options_that_cannot_work(cli, tmp_path, args, says):
    (tmp_path / "secret").write_text("s3cret\n")
    assert_usage_error(cli("signal", "--port", "0", *args), *says)


def test_submit_refuses_credentials_in_a_url_without_echoing_them(cli, package):
    result = cli("submit", str(package), "--ice-server", "turn:alice:hunter2@turn.example.org")
    assert_usage_error(result, "--ice-server", "credentials do not belong in the URL", "turn:***@turn.example.org")
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ice-server", "turn:turn.example.org"], ["needs credentials", "--ice-username"]),
        (["--ice-server", "stun:s", "--ice-username", "u", "--ice-credential-file", "pw"], ["for a TURN server"]),
        (["--ice-server", "turn:t", "--ice-username", "u"], ["both"]),
        (["--ice-server", "turn:t", "--ice-username", "u", "--ice-credential-file", "missing"],
         ["cannot read the TURN credential file missing"]),
        (["--ice-server", "stun:[fe80::1%eth0]"], ["zone"]),
        (["--ca-file", "missing-ca.pem"], ["cannot use the CA file missing-ca.pem"]),
    ],
)
@pytest.mark.parametrize("command", ["submit", "worker"])
def test_peers_refuse_ice_options_that_cannot_work(cli, tmp_path, package, command, args, says):
    (tmp_path / "pw").write_text("password\n")
    first = [str(package)] if command == "submit" else ["--token", "t" * 32]
    assert_usage_error(cli(command, *first, *args), *says)


def test_workers_refuses_a_ca_file_it_cannot_use(cli):
    assert_usage_error(cli("workers", "--ca-file", "missing-ca.pem"), "cannot use the CA file missing-ca.pem")


def test_ice_options_in_rtcxfer_toml_are_checked_as_flags_are(cli, tmp_path):
    (tmp_path / "rtcxfer.toml").write_text('[signal]\nstun = ["stun:ok.example.org", "bogus"]\n')
    assert_usage_error(cli("signal", "--port", "0"), "'bogus'", "no scheme")


def test_a_static_turn_server_gets_its_credentials_from_the_options(tmp_path):
    credential = tmp_path / "pw"
    credential.write_text("  correct horse  \n")
    options = peer_options(("stun:s", "turn:t?transport=tcp", "turns:t"), False, "alice", credential)
    assert options == PeerOptions(
        loopback_only=False,
        ice_servers=[IceServer("stun:s"), IceServer(["turn:t?transport=tcp", "turns:t"], "alice", "correct horse")],
    )
    assert "correct horse" not in repr(options)
    assert peer_options((), False) == PeerOptions()
    assert peer_options((), True) == PeerOptions(loopback_only=False)
