"""`rtcxfer demo`, the README's main-job command, as a user runs it."""

import os
import re
import subprocess
import sys
from pathlib import Path

from rtcxfer.client.sample import sample_text

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_the_sample_job_over_each_builtin_transport(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCXFER_") and k != "SHARED_STORAGE_ROOT"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "rtcxfer.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
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
