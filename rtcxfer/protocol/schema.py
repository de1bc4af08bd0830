"""The protocol table: the frame definitions as data, for clients written in another language.

:func:`protocol_table` turns a :class:`~rtcxfer.protocol.frames.FrameCatalogue` into plain
JSON-able values: the protocol version, the separator and size limits, the pattern of each
field kind, the binary chunk header byte by byte, every frame type with its fields in wire
order, and the frame types that report an error. :func:`protocol_table_json` writes it as
text that depends on nothing but the definitions (sorted keys, fields in wire order), so a
copy kept in a repository can be compared byte for byte with what the code says.

The browser client loads such a copy (``rtcxfer/web/static/protocol.json``, written by
``python -m rtcxfer.web.protocol_table``) instead of keeping a schema of its own, and a test
holds ``docs/protocol.md`` to it.

Shape of the table (``TABLE_FORMAT`` 1)::

    {
      "table_format": 1,
      "protocol_version": 2,
      "separator": "::",
      "type_name_pattern": "[A-Z][A-Z0-9_]{0,63}",
      "max_frame_chars": 65536,
      "max_echo_chars": 200,
      "field_kinds": {"token": {"pattern": "..."}, "hex": {"alphabet": "0123456789abcdef"}, ...},
      "chunk_header": {"magic": "525801", "size": 27, "byte_order": "big",
                       "fields": [{"name": "magic", "offset": 0, "size": 3, "kind": "bytes"}, ...]},
      "error_reports": ["FILE_ERROR", ...],
      "frame_types": {"FILE_ACK": {"fields": [{"name": "transfer_id", "kind": "hex", "length": 32,
                                               "greedy": false, "optional": false}, ...]}, ...}
    }

A field kind's ``pattern`` must match the whole field text; it is written in the syntax
Python's :mod:`re` and JavaScript's ``RegExp`` share. ``float`` text must in addition be the
shortest round-trip form of its value, and ``text`` has no pattern: only a non-greedy text
field is restricted (non-empty, no ``::``, no ``:`` at either end).

This module imports no asyncio, aiortc, fsspec or loguru.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

from rtcxfer.protocol.engine import ERROR_REPORTS
from rtcxfer.protocol.errors import LocalProtocolError
from rtcxfer.protocol.frames import (
    CHUNK_HEADER_BYTE_ORDER,
    CHUNK_HEADER_FIELDS,
    CHUNK_HEADER_SIZE,
    CHUNK_MAGIC,
    FIELD_KINDS,
    FLOAT_PATTERN,
    HEX_DIGITS,
    INT_PATTERN,
    MAX_ECHO_CHARS,
    MAX_FRAME_CHARS,
    PROTOCOL_VERSION,
    SEPARATOR,
    TOKEN_PATTERN,
    TYPE_NAME_PATTERN,
    FieldSpec,
    Frame,
    FrameCatalogue,
)

#: The version of the table's own shape; a reader refuses a table of a format it does not know.
TABLE_FORMAT = 1

_BYTE_ORDERS = {">": "big", "!": "big", "<": "little"}
#: What each struct code of the chunk header is, in the table's words.
_HEADER_KINDS = {"s": "bytes", "B": "uint", "H": "uint", "I": "uint", "Q": "uint"}


def field_description(spec: FieldSpec) -> dict[str, Any]:
    """One field as the table writes it; ``length`` is ``None`` except for ``hex`` fields."""
    if spec.kind not in FIELD_KINDS:
        raise LocalProtocolError(f"field {spec.name!r} has unknown kind {spec.kind!r}")
    return {
        "name": spec.name,
        "kind": spec.kind,
        "length": spec.length,
        "greedy": spec.greedy,
        "optional": spec.optional,
    }


def field_kinds() -> dict[str, dict[str, str]]:
    """What the text of each field kind must look like."""
    return {
        "text": {},
        "token": {"pattern": TOKEN_PATTERN.pattern},
        "hex": {"alphabet": HEX_DIGITS},
        "int": {"pattern": INT_PATTERN.pattern},
        "float": {"pattern": FLOAT_PATTERN.pattern},
    }


def chunk_header() -> dict[str, Any]:
    """The binary chunk header: its magic (hex), size, byte order and fields with their offsets."""
    fields = []
    offset = 0
    for name, code in CHUNK_HEADER_FIELDS:
        size = struct.calcsize(CHUNK_HEADER_BYTE_ORDER + code)
        fields.append({"name": name, "offset": offset, "size": size, "kind": _HEADER_KINDS[code[-1]]})
        offset += size
    if offset != CHUNK_HEADER_SIZE:
        raise LocalProtocolError(f"chunk header fields add up to {offset} bytes, not {CHUNK_HEADER_SIZE}")
    return {
        "magic": CHUNK_MAGIC.hex(),
        "size": CHUNK_HEADER_SIZE,
        "byte_order": _BYTE_ORDERS[CHUNK_HEADER_BYTE_ORDER],
        "fields": fields,
    }


def protocol_table(
    catalogue: FrameCatalogue, error_reports: Iterable[type[Frame]] = ERROR_REPORTS
) -> dict[str, Any]:
    """The protocol of ``catalogue`` as JSON-able data (see this module's docstring)."""
    reports = sorted(frame_class.TYPE for frame_class in error_reports)
    missing = [name for name in reports if name not in catalogue]
    if missing:
        raise LocalProtocolError(f"error reports not in the catalogue: {', '.join(missing)}")
    return {
        "table_format": TABLE_FORMAT,
        "protocol_version": PROTOCOL_VERSION,
        "separator": SEPARATOR,
        "type_name_pattern": TYPE_NAME_PATTERN.pattern,
        "max_frame_chars": MAX_FRAME_CHARS,
        "max_echo_chars": MAX_ECHO_CHARS,
        "field_kinds": field_kinds(),
        "chunk_header": chunk_header(),
        "error_reports": reports,
        "frame_types": {
            frame_class.TYPE: {"fields": [field_description(spec) for spec in frame_class.FIELDS]}
            for frame_class in sorted(catalogue, key=lambda frame_class: frame_class.TYPE)
        },
    }


def protocol_table_json(catalogue: FrameCatalogue, error_reports: Iterable[type[Frame]] = ERROR_REPORTS) -> str:
    """:func:`protocol_table` as JSON text: sorted keys, two-space indent, a final newline.
    The same definitions always give the same bytes."""
    table = protocol_table(catalogue, error_reports)
    return json.dumps(table, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def field_specs(description: dict[str, Any]) -> tuple[FieldSpec, ...]:
    """The :class:`FieldSpec` objects of one ``frame_types`` entry of a table (a table read
    back: what a reader of the table understands a frame type to be)."""
    return tuple(
        FieldSpec(
            field["name"], field["kind"], greedy=field["greedy"], optional=field["optional"], length=field["length"]
        )
        for field in description["fields"]
    )


__all__ = [
    "TABLE_FORMAT",
    "chunk_header",
    "field_description",
    "field_kinds",
    "field_specs",
    "protocol_table",
    "protocol_table_json",
]
