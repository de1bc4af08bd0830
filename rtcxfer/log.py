"""Logging: rtcxfer logs through loguru and, as a library, stays quiet until asked.

Library modules import ``logger`` from here. Importing this module disables the
``rtcxfer`` loggers (loguru's advice for libraries); :func:`enable` turns them on, which the
``rtcxfer`` command does according to ``--log-level``.
"""

from __future__ import annotations

import sys

from loguru import logger

logger.disable("rtcxfer")


def enable(level: str = "INFO", sink=None) -> None:
    """Send log records (rtcxfer's and its plugins') at ``level`` and above to ``sink``
    (stderr by default)."""
    logger.remove()
    logger.add(sink or sys.stderr, level=level.upper(), format="{time:HH:mm:ss.SSS} {level:<7} {name}: {message}")
    # Every library that logs through loguru, so plugins (rtcxfer_s3, ...) show up too.
    logger.enable("")


__all__ = ["enable", "logger"]
