"""Logging: rtcxfer logs through loguru and, as a library, stays quiet until asked.

Library modules import ``logger`` from here. Importing this module disables the
``rtcxfer`` loggers (loguru's advice for libraries); :func:`enable` turns them on, which the
``rtcxfer`` command does according to ``--log-level``.
"""

from __future__ import annotations

import sys

from loguru import logger

logger.disable("rtcxfer")
_enabled = False


def enable(level: str = "INFO", sink=None) -> None:
    """Send log records (rtcxfer's and its plugins') at ``level`` and above to ``sink``
    (stderr by default)."""
    global _enabled
    _enabled = True
    logger.remove()
    # diagnose=False: loguru would otherwise print the values of local variables in a traceback,
    # TURN credentials among them (aiortc's RTCConfiguration shows its RTCIceServers in full).
    logger.add(sink or sys.stderr, level=level.upper(), format="{time:HH:mm:ss.SSS} {level:<7} {name}: {message}",
               diagnose=False)
    # Every library that logs through loguru, so plugins (rtcxfer_s3, ...) show up too.
    logger.enable("")


def quiet_library(name: str) -> None:
    """For a plugin package ``name`` to call at import: stay quiet, as rtcxfer does, unless the
    application already called :func:`enable`. Plugins are imported after the ``rtcxfer``
    command enabled logging, so a plain ``logger.disable(name)`` would silence them for good."""
    if not _enabled:
        logger.disable(name)


__all__ = ["enable", "logger", "quiet_library"]
