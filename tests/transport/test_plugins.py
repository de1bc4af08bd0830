"""Plugin discovery with real distributions installed by pip, exactly as a third party would."""

import os
import subprocess
import sys

import pytest

from rtcxfer.protocol.frames import SharedInputPath
from rtcxfer.transport.base import Transport
from rtcxfer.transport.hookspecs import hookimpl
from rtcxfer.transport.host import PluginHost, PluginWarning
from tests.support.cli import REPO
from tests.support.distributions import install, make_distribution

ECHO_MODULE = """
from rtcxfer.protocol import frames
from rtcxfer.transport.hookspecs import hookimpl
from rtcxfer.transport.base import Transport


@frames.frame_type("ECHO_BYTES")
class EchoBytes(frames.Frame):
    transfer_id: str = frames.token()
    text: str = frames.text(greedy=True)


class EchoTransport(Transport):
    name = "echo"
    rank = 5
    frame_types = (EchoBytes,)
    description = "a throwaway transport from a test"


@hookimpl
def rtcxfer_frame_types():
    return [EchoBytes]


@hookimpl
def rtcxfer_register_transports(register):
    register(EchoTransport)


@hookimpl
def rtcxfer_claim_frame(frame):
    return "echo" if EchoTransport.claims(frame) else None
"""

@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """A directory holding two pip-installed plugin distributions: one good, one broken (pip and
    the ``rtcxfer`` command as subprocesses: the tests that use it are slow)."""
    root = tmp_path_factory.mktemp("plugin-dists")
    good = make_distribution(root, "rtcxfer-echo", "1.2.3", "rtcxfer_echo", "echo", ECHO_MODULE)
    broken = make_distribution(
        root,
        "rtcxfer-broken",
        "0.0.1",
        "rtcxfer_broken",
        "broken",
        "raise ImportError('this plugin needs a library that is not installed')\n",
    )
    target = install(root / "site", good, broken)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO)])
    for name in ("RTCXFER_BLOCK_PLUGINS", "RTCXFER_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    return env


def run_in(env, *args, **extra_env):
    return subprocess.run(
        [sys.executable, *args], env={**env, **extra_env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_installed_plugin_is_listed_with_its_distribution_and_version(plugin_env):
    result = run_in(plugin_env, "-m", "rtcxfer.cli", "plugins")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"shared-fs", "direct", "rtc-chunked", "echo"} <= set(lines)  # other installed plugins may appear too
    assert "rtcxfer-echo 1.2.3" in lines["echo"]
    assert "rtcxfer 0.1.0" in lines["shared-fs"]


@pytest.mark.slow
def test_plugin_that_fails_to_import_is_skipped_with_a_warning(plugin_env):
    result = run_in(plugin_env, "-m", "rtcxfer.cli", "plugins")
    assert result.returncode == 0
    assert "skipped plugin broken" in result.stderr
    assert "needs a library that is not installed" in result.stderr


CLAIM_SCRIPT = """
from rtcxfer.protocol.engine import Engine
from rtcxfer.transport.host import PluginHost
host = PluginHost()
session = Engine(host.claim, catalogue=host.catalogue)
event = session.receive("ECHO_BYTES::t1::hello::world")
print(type(event).__name__, getattr(event, "handler", None), getattr(event, "frame", None))
"""


@pytest.mark.slow
def test_installed_plugin_claims_the_frame_type_it_defines(plugin_env):
    result = run_in(plugin_env, "-W", "ignore", "-c", CLAIM_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "FrameReceived echo EchoBytes(transfer_id='t1', text='hello::world')"


@pytest.mark.slow
def test_blocking_a_plugin_by_name_removes_it(plugin_env):
    listed = run_in(plugin_env, "-m", "rtcxfer.cli", "plugins", RTCXFER_BLOCK_PLUGINS="echo,broken")
    assert "echo" not in listed.stdout and "skipped" not in listed.stderr
    assert "blocked: broken, echo" in listed.stderr
    claimed = run_in(plugin_env, "-c", CLAIM_SCRIPT, RTCXFER_BLOCK_PLUGINS="echo,broken")
    assert claimed.stdout.startswith("ProtocolViolation None")


@pytest.mark.slow
def test_disabling_autoload_keeps_only_the_builtins(plugin_env):
    result = run_in(plugin_env, "-m", "rtcxfer.cli", "plugins", RTCXFER_DISABLE_PLUGIN_AUTOLOAD="1")
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert names == ["shared-fs", "direct", "rtc-chunked"]


def test_builtin_transports_can_be_blocked_too():
    host = PluginHost(autoload=False, blocked=["shared-fs"])
    assert [info.name for info in host.transports()] == ["direct", "rtc-chunked"]
    assert host.claim(SharedInputPath("x")) is None


def test_plugin_breaking_the_contract_is_skipped_not_fatal():
    class NotATransport:
        name = "bogus"

    class Misbehaving:
        @hookimpl
        def rtcxfer_register_transports(self, register):
            register(NotATransport)

    class Misspelled:
        @hookimpl
        def rtcxfer_register_transport(self, register):  # a typo of the hook's name
            pass

    class Duplicate(Transport):
        name = "shared-fs"

    class Squatter:
        @hookimpl
        def rtcxfer_register_transports(self, register):
            register(Duplicate)

    host = PluginHost(autoload=False)
    for plugin, name in [(Misbehaving(), "misbehaving"), (Misspelled(), "misspelled"), (Squatter(), "squatter")]:
        with pytest.warns(PluginWarning, match=name):
            assert host.register(plugin, name) is False
    assert [info.name for info in host.transports()] == ["shared-fs", "direct", "rtc-chunked"]
    assert host.transport("shared-fs").distribution == "rtcxfer"
    assert set(host.failures) == {"misbehaving", "misspelled", "squatter"}
