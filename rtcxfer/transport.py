"""The base class every transport plugin subclasses.

A transport moves the bytes of one file between the peers in its own way: a relative path on
storage both mount, chunks over the data channel, an object store. The class attributes
below are the sans-IO part of the contract that discovery, selection and dispatch rely on.

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

from typing import ClassVar

from rtcxfer.frames import Frame


class Transport:
    """A way to move a file's bytes. Subclasses set the class attributes below."""

    #: Unique name used on the wire and on the command line, e.g. ``"shared-fs"``.
    name: ClassVar[str] = ""
    #: Automatic selection prefers the transport with the highest rank both peers offer.
    rank: ClassVar[int] = 0
    #: The frame classes this transport owns; :meth:`claims` answers from them.
    frame_types: ClassVar[tuple[type[Frame], ...]] = ()
    #: One line for ``rtcxfer plugins``.
    description: ClassVar[str] = ""

    @classmethod
    def claims(cls, frame: Frame) -> bool:
        """Whether a frame received from the peer belongs to this transport."""
        return isinstance(frame, cls.frame_types)
