"""The worker side: :class:`RTCWorkerClient` (the specification's name for the worker), its
sessions, the one job pipeline that native and legacy sessions drive, and the job runner.

``from rtcxfer.worker import RTCWorkerClient`` works; the class is loaded on first use, so
importing a light module of this package (``rtcxfer.worker.slots``) stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["RTCWorkerClient"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("rtcxfer.worker.rtc_worker_client"), name)
    raise AttributeError(f"module 'rtcxfer.worker' has no attribute {name!r}")
