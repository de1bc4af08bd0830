"""Helpers for testing rtcxfer and transport plugins (importable by third parties).

``EnginePair`` is sans-IO; ``run_async`` (a coroutine run with a hang guard) and
``linked_peers`` (real aiortc peers through a real signaling server) are imported on first use,
so importing this package loads neither asyncio nor aiortc.

Real ``rtcxfer`` processes: :mod:`rtcxfer.testing.processes` (one process) and
:mod:`rtcxfer.testing.cluster` (a signaling server, workers, submits); the files of test jobs:
:mod:`rtcxfer.testing.job_files`; the transport contract suite: :mod:`rtcxfer.testing.contract`.
"""

from rtcxfer.testing.engine_pair import EnginePair, SessionPair

__all__ = ["EnginePair", "LinkedPeers", "PeerSide", "SessionPair", "linked_peers", "run_async"]


def __getattr__(name: str):
    if name == "run_async":
        from rtcxfer.testing.coroutines import run_async

        return run_async
    if name in ("LinkedPeers", "PeerSide", "linked_peers"):
        from rtcxfer.testing import peers

        return getattr(peers, name)
    raise AttributeError(name)
