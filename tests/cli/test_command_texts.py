"""What the ``rtcxfer`` command says without starting anything (click's runner, in process): its
help, a bad configuration value, a worker without a token, a manifest typo, the ``--signal``
address of the web page (issue 24, points 6, 9 and 10)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from rtcxfer.cli.main import main
from rtcxfer.cli.options import websocket_url
from rtcxfer.cli.submit import submit_json
from rtcxfer.client.packing import PackageError, check_directory_manifest, directory_members
from rtcxfer.protocol.manifest import MANIFEST_KEYS, Manifest, ManifestError
from rtcxfer.transport.host import BUILTIN_PLUGINS
from rtcxfer.worker.jobs import DEFAULT_JOB_ENV, NEVER_JOB_ENV
from tests.support.cli import REPO


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={"RTCXFER_CONFIG": "", **(env or {})}, catch_exceptions=False)


def one_line(text: str) -> str:
    """Help text as one line (click wraps it)."""
    return " ".join(text.split())


def test_the_top_level_help_names_every_built_in_transport():
    shown = one_line(invoke("--help").output)
    for name in BUILTIN_PLUGINS:
        assert f"({name})" in shown, (name, shown)


def test_the_job_env_help_lists_every_default_variable_and_the_readme_names_only_those():
    shown = one_line(invoke("worker", "--help").output)
    listed = re.search(r"By default only (.*?) are passed; (\S+) never\.", shown)
    assert listed, shown
    assert listed.group(1).split(", ") == list(DEFAULT_JOB_ENV)
    assert listed.group(2) == ", ".join(sorted(NEVER_JOB_ENV))
    # The README's sentence on a job's environment names no variable the worker does not pass.
    readme = one_line((REPO / "README.md").read_text())
    sentence = re.search(r"a job sees only (.*?)`RTCXFER_TOKEN` is never passed", readme)
    assert sentence, "the README's Job packages section says which variables a job sees"
    named = set(re.findall(r"`([A-Z_]+)`", sentence.group(1))) - {"RTCXFER_TOKEN"}
    assert named and named <= set(DEFAULT_JOB_ENV), named - set(DEFAULT_JOB_ENV)


@pytest.mark.parametrize(
    ("toml", "command", "expected"),
    [
        ('timeout = "soon"\n', ["submit", "x.zip"], "bad value for 'timeout': 'soon' is not a valid float"),
        ("[worker]\nslots = 0\n", ["worker", "--token", "t"], "bad value for 'slots': 0 is not in the range"),
        ('[submit]\nquiet = "maybe"\n', ["submit", "x.zip"], "bad value for 'quiet': 'maybe' is not a valid boolean"),
    ],
)
def test_a_bad_configuration_value_names_the_file_and_the_key(tmp_path, toml, command, expected):
    settings = tmp_path / "rtcxfer.toml"
    settings.write_text(toml)
    run = invoke("--config", str(settings), *command)
    assert run.exit_code == 2, run.output
    assert f"{settings}: {expected}" in run.output, run.output
    assert "Invalid value for '--" not in run.output, "not reported as if typed on the command line"


def test_a_worker_without_a_token_is_told_every_way_to_give_one():
    run = invoke("worker", env={"RTCXFER_TOKEN": "", "RTCXFER_TOKEN_FILE": ""})
    assert run.exit_code == 2, run.output
    shown = one_line(run.output)
    assert "a worker needs a token (--token, --token-file or RTCXFER_TOKEN)" in shown, shown
    assert "--insecure-no-token" in shown
    assert "--token-file" in one_line(invoke("worker", "--help").output.split("Options:")[0])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://gpu-gateway:8765/", "ws://gpu-gateway:8765/"),
        ("https://lab.example.org/", "wss://lab.example.org/"),
        ("HTTPS://lab.example.org:443/#room", "wss://lab.example.org:443/"),
        ("http://[::1]:8765", "ws://[::1]:8765"),
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765"),
        ("wss://lab.example.org", "wss://lab.example.org"),
        ("127.0.0.1:8765", "127.0.0.1:8765"),
    ],
)
def test_the_web_pages_address_is_the_signaling_servers(given, expected):
    assert websocket_url(given) == expected


def test_an_unknown_manifest_key_is_named_with_the_closest_known_one_and_every_known_key():
    with pytest.raises(ManifestError) as refused:
        Manifest.from_dict({"comand": ["python", "x.py"], "timeout": 5, "colour": "blue", "a\x1b[2Jb": 1})
    message = str(refused.value)
    assert message.startswith("rtcxfer.json has unknown keys: 'a\\x1b[2Jb', colour, comand (did you mean command?), ")
    assert "timeout (did you mean timeout_seconds?); " in message
    assert "\x1b" not in message, "a key that is not a plain word is quoted, escaped"
    assert message.endswith(f"known keys: {', '.join(MANIFEST_KEYS)}")


def test_a_directorys_manifest_is_refused_naming_the_directorys_own_file(tmp_path):
    job = tmp_path / "my-job"
    job.mkdir()
    (job / "rtcxfer.json").write_text(json.dumps({"comand": ["python", "main.py"]}))
    for check in (check_directory_manifest, directory_members):
        with pytest.raises(PackageError) as refused:
            check(job)
        assert str(refused.value).startswith(f"{job / 'rtcxfer.json'} has unknown keys: comand"), refused.value
        assert "(did you mean command?)" in str(refused.value)
    (job / "rtcxfer.json").write_text("{not json")
    with pytest.raises(PackageError, match=re.escape(f"{job / 'rtcxfer.json'} is not valid JSON")):
        check_directory_manifest(job)
    (job / "rtcxfer.json").write_text(json.dumps({"command": []}))
    with pytest.raises(PackageError, match=re.escape(f"{job / 'rtcxfer.json'}: command must be a non-empty list")):
        check_directory_manifest(job)


def test_the_json_help_and_the_readme_name_every_key_submit_json_prints():
    printed = json.loads(submit_json(None, 3, "no worker"))
    assert printed["submit_exit_code"] == 3 and printed["exit_status"] is None
    shown = one_line(invoke("submit", "--help").output)
    readme = one_line((REPO / "README.md").read_text())
    documented = readme[readme.index("`--json` prints one object at the end") :][:1500]
    for key in [*printed, *printed["seconds"]]:
        assert key in shown, (key, shown)
        assert f"`{key}`" in documented, (key, documented)
