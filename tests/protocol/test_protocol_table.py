"""The protocol table (``rtcxfer.protocol.schema``) and its committed copy, ``static/protocol.json``,
which the browser client loads: the table says what the frame definitions say, and the copy is
current."""

from __future__ import annotations

import json
import re

import pytest

from rtcxfer.protocol import schema
from rtcxfer.protocol.engine import ERROR_REPORTS
from rtcxfer.protocol.errors import LocalProtocolError
from rtcxfer.protocol.frames import (
    BUILTIN_FRAME_TYPES,
    FieldSpec,
    Frame,
    FrameCatalogue,
    frame_type,
    hex_digits,
    integer,
    pack_chunk_header,
    text,
)
from rtcxfer.transport.host import PluginHost
from rtcxfer.web import WebAssets, protocol_table

BUILTIN = PluginHost(autoload=False).catalogue


@frame_type("ECHO_NOTE")
class EchoNote(Frame):
    """A plugin's own frame type."""

    note_id: str = hex_digits(16)
    body: str = text(greedy=True)
    count: int | None = integer(optional=True)


def test_the_committed_table_is_what_the_frame_definitions_give() -> None:
    committed = protocol_table.PROTOCOL_TABLE_PATH.read_text(encoding="utf-8")
    assert committed == protocol_table.builtin_protocol_table_json(), (
        f"{protocol_table.PROTOCOL_TABLE_PATH.name} is stale: run `{protocol_table.REGENERATE_COMMAND}` and commit it"
    )


def test_the_page_is_served_the_committed_table_as_json() -> None:
    content_type, body = WebAssets().files["/protocol.json"]
    assert content_type == "application/json"
    assert body == protocol_table.PROTOCOL_TABLE_PATH.read_bytes()


def test_every_frame_type_reads_back_to_its_declared_fields() -> None:
    table = json.loads(schema.protocol_table_json(BUILTIN))
    assert sorted(table["frame_types"]) == sorted(frame_class.TYPE for frame_class in BUILTIN)
    assert list(table["frame_types"]) == sorted(table["frame_types"])
    for frame_class in BUILTIN:
        assert schema.field_specs(table["frame_types"][frame_class.TYPE]) == frame_class.FIELDS, frame_class.TYPE
    assert {"DIRECT_OFFER", "DIRECT_RESULT", "FILE_META", "SHARED_PROBE", "HELLO"} <= set(table["frame_types"])


def test_fields_keep_wire_order_kind_length_greedy_and_optional() -> None:
    fields = schema.protocol_table(BUILTIN)["frame_types"]["JOB_COMPLETE"]["fields"]
    assert fields == [
        {"name": "job_id", "kind": "token", "length": None, "greedy": False, "optional": False},
        {"name": "relative_path", "kind": "text", "length": None, "greedy": True, "optional": False},
        {"name": "file_count", "kind": "int", "length": None, "greedy": False, "optional": True},
        {"name": "total_mb", "kind": "float", "length": None, "greedy": False, "optional": True},
    ]
    meta = schema.protocol_table(BUILTIN)["frame_types"]["FILE_META"]["fields"]
    assert [(f["name"], f["kind"], f["length"]) for f in meta] == [
        ("transfer_id", "hex", 32),
        ("name", "text", None),
        ("size", "int", None),
        ("sha256", "hex", 64),
        ("chunk_size", "int", None),
    ]


def test_the_session_constants_and_error_reports_are_the_codecs() -> None:
    table = schema.protocol_table(BUILTIN)
    assert table["table_format"] == schema.TABLE_FORMAT
    assert table["protocol_version"] == 2
    assert table["separator"] == "::"
    assert table["max_frame_chars"] == 65536
    assert table["max_echo_chars"] == 200
    assert table["error_reports"] == sorted(frame_class.TYPE for frame_class in ERROR_REPORTS)
    assert table["error_reports"] == ["FILE_ERROR", "JOB_FAILED", "PATH_ERROR", "PROTOCOL_ERROR"]
    assert all(re.fullmatch(table["type_name_pattern"], frame_class.TYPE) for frame_class in BUILTIN)


def test_the_field_kind_patterns_decide_as_the_codec_does() -> None:
    kinds = schema.protocol_table(BUILTIN)["field_kinds"]
    assert set(kinds) == {"text", "token", "hex", "int", "float"}
    samples = ["", "a", "job-1", "a b", "a:b", "0", "01", "17", "1" * 21, "3.0", "1e-05", "x" * 129, "é"]
    for kind in ("token", "int"):
        declared = FieldSpec("x", kind)
        for sample in samples:
            matches = re.fullmatch(kinds[kind]["pattern"], sample) is not None
            assert matches == (declared.problem_with_text(sample) is None), (kind, sample)
    assert kinds["hex"] == {"alphabet": "0123456789abcdef"}


def test_the_chunk_header_layout_reads_what_pack_chunk_header_writes() -> None:
    header = schema.protocol_table(BUILTIN)["chunk_header"]
    assert header["size"] == 27 and header["byte_order"] == "big"
    packed = pack_chunk_header("0f" * 16, 2**40 + 5)
    fields = {field["name"]: field for field in header["fields"]}
    assert [field["name"] for field in header["fields"]] == ["magic", "transfer_id", "offset"]

    def raw(name: str) -> bytes:
        return packed[fields[name]["offset"]: fields[name]["offset"] + fields[name]["size"]]

    assert raw("magic").hex() == header["magic"] == "525801"
    assert raw("transfer_id").hex() == "0f" * 16
    assert int.from_bytes(raw("offset"), header["byte_order"]) == 2**40 + 5
    assert sum(field["size"] for field in header["fields"]) == len(packed) == header["size"]


def test_a_plugins_frame_type_is_in_the_table_of_its_catalogue() -> None:
    table = schema.protocol_table(FrameCatalogue([*BUILTIN_FRAME_TYPES, EchoNote]))
    assert table["frame_types"]["ECHO_NOTE"]["fields"] == [
        {"name": "note_id", "kind": "hex", "length": 16, "greedy": False, "optional": False},
        {"name": "body", "kind": "text", "length": None, "greedy": True, "optional": False},
        {"name": "count", "kind": "int", "length": None, "greedy": False, "optional": True},
    ]


def test_the_text_depends_on_the_definitions_only() -> None:
    forwards = schema.protocol_table_json(FrameCatalogue([*BUILTIN_FRAME_TYPES, EchoNote]))
    backwards = schema.protocol_table_json(FrameCatalogue([EchoNote, *reversed(BUILTIN_FRAME_TYPES)]))
    assert forwards == backwards
    assert forwards.endswith("}\n") and forwards.isascii()
    assert json.loads(forwards) == schema.protocol_table(FrameCatalogue([*BUILTIN_FRAME_TYPES, EchoNote]))


def test_error_reports_outside_the_catalogue_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="FILE_ERROR"):
        schema.protocol_table(FrameCatalogue([EchoNote]), error_reports=ERROR_REPORTS)
    assert schema.protocol_table(FrameCatalogue([EchoNote]), error_reports=())["error_reports"] == []


def test_the_command_writes_the_file_and_check_tells_a_stale_one(tmp_path, monkeypatch, capsys) -> None:
    target = tmp_path / "protocol.json"
    monkeypatch.setattr(protocol_table, "PROTOCOL_TABLE_PATH", target)
    assert protocol_table.main(["--check"]) == 1
    assert "is stale: run python -m rtcxfer.web.protocol_table" in capsys.readouterr().err
    assert not target.exists()
    assert protocol_table.main([]) == 0
    assert target.read_text(encoding="utf-8") == protocol_table.builtin_protocol_table_json()
    assert protocol_table.main(["--check"]) == 0
    target.write_text(target.read_text(encoding="utf-8").replace('"greedy": true', '"greedy": false', 1))
    assert protocol_table.main(["--check"]) == 1
    assert protocol_table.main(["--bogus"]) == 2
