"""Files that are not job packages, for the tests of the client's package check."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from rtcxfer.client.sample import build_sample_package


def bad_packages(directory: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not job packages, each with a word its refusal must contain."""
    good = build_sample_package(directory / "good.zip")
    random_bytes = directory / "corrupt.zip"
    random_bytes.write_bytes(os.urandom(4096))
    truncated = directory / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = directory / "notes.txt"
    text.write_text("just text\n")
    no_manifest = directory / "no-manifest.zip"
    with zipfile.ZipFile(no_manifest, "w") as archive:
        archive.writestr("main.py", "print(1)\n")
    bad_manifest = directory / "bad-manifest.zip"
    with zipfile.ZipFile(bad_manifest, "w") as archive:
        archive.writestr("rtcxfer.json", json.dumps({"command": []}))
    not_json = directory / "not-json.zip"
    with zipfile.ZipFile(not_json, "w") as archive:
        archive.writestr("rtcxfer.json", "{command: python")
    return {
        "random bytes": (random_bytes, "not a ZIP"),
        "truncated": (truncated, "not a ZIP"),
        "text": (text, "not a ZIP"),
        "no manifest": (no_manifest, "no rtcxfer.json"),
        "bad manifest": (bad_manifest, "command must be"),
        "not JSON": (not_json, "not valid JSON"),
    }
