"""``static/protocol.json``: the protocol table the browser client loads, and the command that
writes it.

The table (:mod:`rtcxfer.protocol.schema`) is made from the frames of the core protocol and of
the built-in transports, never from plugins that happen to be installed, so the committed file
is the same on every machine. After changing a frame definition, run::

    python -m rtcxfer.web.protocol_table

and commit the file; ``--check`` only compares (exit status 1 if the file is stale). A test
fails while the committed file differs from what the definitions give.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rtcxfer.protocol.schema import protocol_table_json
from rtcxfer.transport.host import PluginHost

#: The file next to the web page.
PROTOCOL_TABLE_PATH = Path(__file__).resolve().parent / "static" / "protocol.json"
#: The command that writes :data:`PROTOCOL_TABLE_PATH`.
REGENERATE_COMMAND = "python -m rtcxfer.web.protocol_table"


def builtin_protocol_table_json() -> str:
    """The table of the core frames and the built-in transports' frames, as the file holds it."""
    return protocol_table_json(PluginHost(autoload=False).catalogue)


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        sys.stderr.write(f"usage: {REGENERATE_COMMAND} [--check]\n")
        return 2
    wanted = builtin_protocol_table_json()
    current = PROTOCOL_TABLE_PATH.read_text(encoding="utf-8") if PROTOCOL_TABLE_PATH.exists() else None
    if current == wanted:
        sys.stderr.write(f"{PROTOCOL_TABLE_PATH} is up to date\n")
        return 0
    if check:
        sys.stderr.write(f"{PROTOCOL_TABLE_PATH} is stale: run {REGENERATE_COMMAND}\n")
        return 1
    PROTOCOL_TABLE_PATH.write_text(wanted, encoding="utf-8")
    sys.stderr.write(f"wrote {PROTOCOL_TABLE_PATH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
