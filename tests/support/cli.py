"""The repository's own ``rtcxfer`` command for the tests' subprocesses: this source tree first on
their ``PYTHONPATH``, so that they run the code under test whatever is installed."""

from __future__ import annotations

from pathlib import Path

from rtcxfer.testing.processes import cli_environment

#: The repository's root.
REPO = Path(__file__).resolve().parents[2]


def environment(log_level: str = "WARNING", **extra: str) -> dict[str, str]:
    """:func:`~rtcxfer.testing.processes.cli_environment` with this source tree first on
    ``PYTHONPATH`` and ``extra`` on top."""
    return cli_environment(log_level, import_path=REPO, **extra)
