"""rtcxfer: send a job to a remote worker over a WebRTC data channel and get its results back.

The control channel is a WebRTC data channel; the bytes of each file travel by whichever
transport plugin fits (shared storage, chunks over the channel, an object store, ...).

The package is layered, each layer importing only those below it (import-linter keeps it so)::

    cli                  the rtcxfer command
    client | worker      RTCClient; RTCWorkerClient, its sessions and the one job pipeline
    transports           the built-in transport plugins
    net                  signaling, the WebRTC peer, the link between a channel and a session
    files | web          disk safety and the receiving side of a file; the browser client
    transport            the contract for transport plugins: Transport, hookspecs, the host
    protocol             sans-IO: frames, engine, errors, authentication, the legacy codec

The names most programs need are importable from here (``from rtcxfer import RTCClient``);
they are loaded on first use, so ``import rtcxfer`` stays cheap.
"""

from __future__ import annotations

import importlib

from rtcxfer import moved

__version__ = "0.1.0"

#: The public API: name -> the module that defines it.
PUBLIC = {
    "RTCClient": "rtcxfer.client.rtc_client",
    "JobResult": "rtcxfer.client.rtc_client",
    "ClientEvent": "rtcxfer.client.rtc_client",
    "list_workers": "rtcxfer.client.room",
    "build_sample_package": "rtcxfer.client.sample",
    "RTCWorkerClient": "rtcxfer.worker.rtc_worker_client",
    "JobContext": "rtcxfer.worker.jobs",
    "WorkerLimits": "rtcxfer.worker.limits",
    "SignalingServer": "rtcxfer.net.signaling.server",
    "SignalingClient": "rtcxfer.net.signaling.client",
    "PeerOptions": "rtcxfer.net.peer",
    "IceServer": "rtcxfer.protocol.ice",
    "IceServerConfig": "rtcxfer.protocol.ice",
    "signaling_token": "rtcxfer.protocol.auth",
    "Transport": "rtcxfer.transport.base",
    "TransportContext": "rtcxfer.transport.base",
    "hookimpl": "rtcxfer.transport.hookspecs",
    "PluginHost": "rtcxfer.transport.host",
}

__all__ = ["__version__", *PUBLIC]

moved.install()


def __getattr__(name: str) -> object:
    module = PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'rtcxfer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC})
