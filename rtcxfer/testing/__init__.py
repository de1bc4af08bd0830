"""Helpers for testing rtcxfer and transport plugins (importable by third parties)."""

from rtcxfer.testing.session_pair import SessionPair

__all__ = ["SessionPair"]
