"""Serving clients of sleap-rtc's existing data-channel protocol (``rtcxfer worker --legacy``).

* :mod:`rtcxfer.legacy.protocol`: the sans-IO codec (messages to events, the texts sent back,
  the byte count of an upload);
* :mod:`rtcxfer.legacy.session`: the worker's side of one legacy session (uploads to disk, the
  job, results zipped back or written to shared storage).

The dialect is chosen per session by the client's first message (:func:`speaks_legacy`):
``HELLO`` is rtcxfer's, anything else is the legacy protocol's.
"""

from __future__ import annotations

HELLO_TYPE = "HELLO"


def speaks_legacy(first_message: object) -> bool:
    """Whether a session whose first message is ``first_message`` speaks the legacy protocol."""
    if not isinstance(first_message, str):
        return True
    return first_message.partition("::")[0] != HELLO_TYPE
