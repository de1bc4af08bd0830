"""The contract between a file being received and what unpacks it while it arrives.

An application that knows what a file holds may take its bytes as they arrive instead of
having them written whole and read again once complete: the worker extracts a job's package
while it is received (:class:`rtcxfer.files.stream_unzip.StreamingUnzip`). The receiving side
(:class:`rtcxfer.files.receiving.IncomingFile`) asks the application's :data:`UnpackerFactory`
when a file starts arriving from its first byte, then feeds the :class:`Unpacker` every byte in
order. Until the whole file is verified nothing it unpacked is handed over.

Whatever the unpacker cannot handle is not an error by itself: it raises :class:`CannotUnpack`,
gives back every byte it holds (:meth:`Unpacker.restore`) and the file is written and
published as usual. The same happens when a transfer stops part-way and its partial is kept for
a resume: a resumed file is never unpacked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["CannotUnpack", "Unpacker", "UnpackerFactory", "WriteAt"]

#: ``write_at(offset, data)``: put ``data`` at ``offset`` of the file being received.
WriteAt = Callable[[int, memoryview], None]


class CannotUnpack(Exception):  # noqa: N818 - a verdict, not a failure: the file goes on the usual way
    """The unpacker cannot take this file (a feature it does not stream): write it as usual."""


class Unpacker(Protocol):
    """Takes the bytes of one file as they arrive. Blocking methods: each call is one step."""

    def feed(self, data: memoryview, keep: WriteAt) -> None:
        """Take the next bytes of the file, in order. Bytes it does not store itself go to
        ``keep(offset, bytes)`` (the partial file), so that :meth:`restore` can rebuild the file.

        Raises :class:`CannotUnpack` after passing every byte fed so far that it holds in memory
        to ``keep``; an :class:`~rtcxfer.protocol.errors.ArchiveError`,
        :class:`~rtcxfer.protocol.errors.StorageFullError` or ``OSError`` when the contents are
        unusable (the file is then only hashed to its end, and the error handed over with it);
        whatever ``keep`` raises, unchanged."""

    def finish(self) -> Any:
        """After the last byte (and its verification): check the whole and return what was
        unpacked. Raises what :meth:`feed` raises."""

    def restore(self, write_at: WriteAt) -> None:
        """Write every byte fed so far that did not go to ``keep`` back with ``write_at``."""

    def discard(self) -> None:
        """Remove everything unpacked (never raises)."""


#: ``factory(name, size)``: an :class:`Unpacker` for the file the peer announced, or ``None``.
UnpackerFactory = Callable[[str, int], "Unpacker | None"]
