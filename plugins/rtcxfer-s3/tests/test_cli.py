"""``rtcxfer plugins`` lists the installed s3 transport with its distribution and version."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rtcxfer.testing.processes import cli_environment, describe, run_cli


def run_plugins(**env: str) -> subprocess.CompletedProcess:
    run = run_cli("plugins", env=cli_environment(**env), cwd=Path.cwd())
    assert run.returncode == 0, describe(run)
    return run


def test_plugins_lists_s3_with_its_distribution_and_version():
    lines = run_plugins().stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["s3"][:5] == ["s3", "50", "s3", "rtcxfer-s3", "0.1.0"]
    order = [line.split()[0] for line in lines[1:]]
    assert order.index("shared-fs") < order.index("s3") < order.index("rtc-chunked")


def test_s3_can_be_blocked_like_any_plugin():
    result = run_plugins(RTCXFER_BLOCK_PLUGINS="s3")
    assert "s3 " not in result.stdout and "blocked: s3" in result.stderr
