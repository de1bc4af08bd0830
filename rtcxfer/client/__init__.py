"""The client side: :class:`RTCClient`, choosing a worker, packing a job and the pack cache.

``from rtcxfer.client import RTCClient`` works; the class is loaded on first use, so importing a
light module of this package (``rtcxfer.client.worker_choice``) stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["ClientEvent", "JobResult", "RTCClient"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("rtcxfer.client.rtc_client"), name)
    raise AttributeError(f"module 'rtcxfer.client' has no attribute {name!r}")
