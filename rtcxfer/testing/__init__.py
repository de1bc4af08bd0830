"""Helpers for testing rtcxfer and transport plugins (importable by third parties).

``EnginePair`` is sans-IO; ``linked_peers`` (real aiortc peers through a real signaling
server) is imported on first use, so importing this package does not load aiortc.
"""

from rtcxfer.testing.engine_pair import EnginePair, SessionPair

__all__ = ["EnginePair", "LinkedPeers", "PeerSide", "SessionPair", "linked_peers"]


def __getattr__(name: str):
    if name in ("LinkedPeers", "PeerSide", "linked_peers"):
        from rtcxfer.testing import peers

        return getattr(peers, name)
    raise AttributeError(name)
