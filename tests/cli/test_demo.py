"""`rtcxfer demo`, the README's main-job command, as a user runs it: one subprocess that runs a job
over each built-in transport in about a second, so it stays in the quick check (``-m "not slow"``)
as its smoke test of the command."""

import re
from pathlib import Path

from rtcxfer.client.sample import sample_text
from rtcxfer.testing.processes import run_cli
from tests.support.cli import environment


def test_demo_runs_the_sample_job_over_each_builtin_transport(tmp_path):
    result = run_cli("demo", "--dir", str(tmp_path / "demo"), env=environment(), cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for transport in ("shared-fs", "direct", "rtc-chunked"):
        line = re.search(
            rf"^ *{transport}: package via (\S+), results via (\S+); 2 files.* -> (.+)$", result.stdout, re.MULTILINE
        )
        assert line, result.stdout
        assert line.group(1) == line.group(2) == transport
        results = Path(line.group(3))
        assert (results / "copy" / "data.txt").read_bytes() == sample_text()
        assert (results / "summary.txt").read_text().startswith(f"lines={len(sample_text().splitlines())} ")
