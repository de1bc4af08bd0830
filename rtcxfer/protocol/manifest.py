"""The job package format: a ZIP file with ``rtcxfer.json`` at its root::

    {
      "name": "train-resnet",
      "command": ["python", "train.py", "--epochs", "3"],
      "timeout_seconds": 3600,
      "env": {"BATCH_SIZE": "64"}
    }

``command`` is a list of arguments (no shell) or a string split like a shell would split it.
The client checks a package with it before sending; the worker reads it to run the job.

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from rtcxfer.protocol.errors import JobError

MANIFEST_NAME = "rtcxfer.json"
MAX_MANIFEST_BYTES = 64 * 1024
#: The keys ``rtcxfer.json`` may hold.
MANIFEST_KEYS = ("command", "name", "timeout_seconds", "env")


class ManifestError(JobError):
    """The package has no usable ``rtcxfer.json``."""


@attrs.frozen
class Manifest:
    """What ``rtcxfer.json`` says about a job."""

    command: tuple[str, ...]
    name: str = "job"
    timeout_seconds: float | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def load(cls, package_dir: Path) -> Manifest:
        """Read and check the manifest at the root of an extracted package."""
        path = package_dir / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"the package has no {MANIFEST_NAME} at its root")
        raw = path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ManifestError(f"{MANIFEST_NAME} is not valid JSON: {error}") from None
        except RecursionError:
            raise ManifestError(f"{MANIFEST_NAME} is nested too deeply") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{MANIFEST_NAME} must hold a JSON object")
        unknown = set(data) - set(MANIFEST_KEYS)
        if unknown:
            raise ManifestError(unknown_keys_message(unknown))
        command = data.get("command")
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as error:
                raise ManifestError(f"command cannot be split: {error}") from None
        if not (isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)):
            raise ManifestError("command must be a non-empty list of strings (or one string)")
        name = data.get("name", "job")
        if not isinstance(name, str) or not name:
            raise ManifestError("name must be a non-empty string")
        timeout = data.get("timeout_seconds")
        is_number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if timeout is not None and not (is_number and math.isfinite(timeout) and timeout > 0):
            raise ManifestError("timeout_seconds must be a positive number")
        env = data.get("env", {})
        if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise ManifestError("env must map strings to strings")
        if any(not k or "=" in k or "\0" in k + v for k, v in env.items()):
            raise ManifestError("env has an invalid variable name or value")
        return cls(tuple(command), name, float(timeout) if timeout is not None else None, dict(env))


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def unknown_keys_message(unknown: set[str]) -> str:
    """What is wrong with a manifest holding the keys ``unknown``: each one (quoted unless it is
    a plain word: it is the sender's text), the closest known key where one is close (a typo),
    and the keys that are known: ``rtcxfer.json has unknown keys: comand (did you mean command?);
    known keys: command, name, timeout_seconds, env``."""
    named = []
    for key in sorted(unknown):
        shown = key if _PLAIN_KEY.fullmatch(key) else repr(key)
        close = difflib.get_close_matches(key, MANIFEST_KEYS, n=1)
        named.append(f"{shown} (did you mean {close[0]}?)" if close else shown)
    return f"{MANIFEST_NAME} has unknown keys: {', '.join(named)}; known keys: {', '.join(MANIFEST_KEYS)}"
