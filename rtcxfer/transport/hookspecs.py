"""The pluggy hook specifications: the whole contract between rtcxfer and its plugins.

A transport plugin is a module (or object) with functions marked ``@hookimpl`` whose names
are the hooks below. rtcxfer's own transports are plugins registered exactly like
third-party ones; third-party plugins are found through the ``rtcxfer.transports`` entry
point group (see :mod:`rtcxfer.transport.host`).

pluggy calls hooks with keyword arguments and runs implementations last-registered-first,
so a plugin installed later can override a built-in for a *firstresult* hook. Decision hooks
here are plain functions: an ``async def`` implementation would return a coroutine, which is
never ``None`` and so would always "win". The objects they hand over do the I/O.

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from rtcxfer.protocol.frames import Frame
    from rtcxfer.transport.base import Transport

PROJECT_NAME = "rtcxfer"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def rtcxfer_frame_types() -> Sequence[type[Frame]]:
    """Return the frame classes this plugin adds to the wire protocol.

    Called once per plugin manager; every implementation's result is collected (not
    firstresult). Declare each class with :func:`rtcxfer.protocol.frames.frame_type`; a type name that
    another plugin already declared with a different class is an error reported at load time.
    """


@hookspec
def rtcxfer_register_transports(register: Callable[[type[Transport]], None]) -> None:
    """Hand over transport classes by calling ``register(TransportClass)`` once for each.

    Called once per plugin manager; every implementation runs (not firstresult). A transport
    class subclasses :class:`rtcxfer.transport.base.Transport` and sets ``name`` (unique on the
    wire, e.g. ``"shared-fs"``), ``rank`` (higher is preferred by automatic selection) and
    ``frame_types`` (the frame classes it owns).
    """


@hookspec(firstresult=True)
def rtcxfer_claim_frame(frame: Frame) -> str | None:
    """Return the name of the transport that handles ``frame``, or ``None`` to pass.

    firstresult: the first non-``None`` answer wins, asking the most recently registered
    plugin first, so an installed plugin can take over a frame type from a built-in. Must be
    a plain (not ``async``) function and must not do I/O: it only decides.
    """
