"""The sample job package that ``rtcxfer demo`` runs and the tests use.

Its program counts the words of ``data.txt``, reports progress, and writes a summary and a
copy of its input to ``$RTCXFER_OUTPUT_DIR``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

SAMPLE_PROGRAM = """\
import hashlib, os, pathlib, sys

out = pathlib.Path(os.environ["RTCXFER_OUTPUT_DIR"])
data = pathlib.Path("data.txt").read_bytes()
lines = data.splitlines()
print(f"sample job: {len(lines)} lines, {len(data)} bytes", flush=True)
words = 0
for index, line in enumerate(lines, 1):
    words += len(line.split())
    if index % max(1, len(lines) // 4) == 0 or index == len(lines):
        print(f"RTCXFER_PROGRESS {index} {len(lines)}", flush=True)
(out / "summary.txt").write_text(f"lines={len(lines)} words={words} sha256={hashlib.sha256(data).hexdigest()}\\n")
(out / "copy").mkdir()
(out / "copy" / "data.txt").write_bytes(data)
print("sample job: done", flush=True)
"""


def sample_text(lines: int = 2000) -> bytes:
    """Deterministic text for the sample job."""
    return "".join(f"line {n} of the rtcxfer sample job: the quick brown fox\n" for n in range(lines)).encode()


def build_sample_package(
    path: Path, *, data: bytes | None = None, program: str = SAMPLE_PROGRAM, manifest: dict | None = None
) -> Path:
    """Write a job package ZIP at ``path`` and return it."""
    manifest = (
        manifest
        if manifest is not None
        else {"name": "word-count", "command": ["python", "job.py"], "timeout_seconds": 600}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rtcxfer.json", json.dumps(manifest, indent=2))
        archive.writestr("job.py", program)
        archive.writestr("data.txt", sample_text() if data is None else data)
    return path
