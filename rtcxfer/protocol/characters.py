"""Which characters of a peer's text are refused wherever a person may see that text.

A peer chooses the text of a path, a label, a GPU model: shown raw in a log line or a terminal
table, a bidi override (U+202E) reverses what follows, a zero-width character (U+200B) or an
isolate (U+2066) hides it, a line separator forges a new line, a control character moves the
cursor. Those are refused outright, by Unicode category, rather than escaped later: the same
rule for paths (:mod:`rtcxfer.files.paths`) and worker descriptions
(:mod:`rtcxfer.protocol.worker_description`).

This module imports nothing of rtcxfer and no I/O library.
"""

from __future__ import annotations

import unicodedata

#: Cc: C0/C1 controls and DEL; Cf: format characters (bidi overrides and isolates, zero-width
#: characters); Cs: lone surrogates (``os.fsencode`` would make arbitrary bytes of them);
#: Zl/Zp: line and paragraph separators.
UNSHOWABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def first_unshowable(text: str) -> str | None:
    """The first character of ``text`` in :data:`UNSHOWABLE_CATEGORIES`, or ``None``."""
    return next((char for char in text if unicodedata.category(char) in UNSHOWABLE_CATEGORIES), None)
