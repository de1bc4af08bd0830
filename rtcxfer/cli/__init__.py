"""The ``rtcxfer`` command."""

from rtcxfer.cli.main import main

__all__ = ["main"]
