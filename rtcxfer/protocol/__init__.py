"""The sans-IO protocol: what goes over the wire, with no I/O at all (in the style of h11).

* :mod:`~rtcxfer.protocol.frames`: the codec between data-channel text and frame objects, and
  the catalogue of frame types;
* :mod:`~rtcxfer.protocol.engine`: one session's protocol state: messages in, events out;
* :mod:`~rtcxfer.protocol.errors`: the typed errors (peer's fault vs ours);
* :mod:`~rtcxfer.protocol.auth`: the mutual challenge-response authentication;
* :mod:`~rtcxfer.protocol.legacy`: sleap-rtc's legacy data-channel dialect.

Nothing in this package imports asyncio, aiortc, fsspec, websockets or loguru (an
import-linter contract keeps it so); it is tested without a network and fuzzed.
"""
