"""``rtcxfer plugins`` lists the installed s3 transport with its distribution and version."""

from __future__ import annotations

import os
import subprocess
import sys


def run_plugins(**env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RTCXFER_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "rtcxfer.cli", "plugins"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=True,
    )


def test_plugins_lists_s3_with_its_distribution_and_version():
    lines = run_plugins().stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["s3"][:5] == ["s3", "50", "s3", "rtcxfer-s3", "0.1.0"]
    order = [line.split()[0] for line in lines[1:]]
    assert order.index("shared-fs") < order.index("s3") < order.index("rtc-chunked")


def test_s3_can_be_blocked_like_any_plugin():
    result = run_plugins(RTCXFER_BLOCK_PLUGINS="s3")
    assert "s3 " not in result.stdout and "blocked: s3" in result.stderr
