"""``docs/protocol.md`` stays true: its frame table, field kinds, limits and chunk header are the
protocol table's (``rtcxfer/web/static/protocol.json``, generated from the frame definitions and
held to them by tests/protocol/test_protocol_table.py), what a real job puts on the wire is described
there, and every example in it decodes with the codec."""

from __future__ import annotations

import json
import re

import pytest

from rtcxfer.protocol.frames import unpack_chunk
from rtcxfer.testing import run_async
from rtcxfer.testing.transcript import Transcript, record_job
from rtcxfer.transport.host import PluginHost
from rtcxfer.web.protocol_table import PROTOCOL_TABLE_PATH
from tests.docs.protocol_doc import doc_text, fenced_blocks
from tests.docs.protocol_doc import section as doc_section

#: The frames of the core protocol and of the built-in transports (not of installed plugins).
BUILTIN = PluginHost(autoload=False).catalogue
#: The machine-readable protocol table the document must agree with.
TABLE = json.loads(PROTOCOL_TABLE_PATH.read_text(encoding="utf-8"))
DIRECTION = re.compile(r"^(?:C->W|W->C) ")
FRAME_LINE = re.compile(r"^[A-Z][A-Z0-9_]*(?:::|$)")
#: One entry of the fields column of section 4.2: `name` kind, maybe (greedy) or (optional).
DOCUMENTED_FIELD = re.compile(r"`([a-z][a-z0-9_]*)` (token|text|int|float|hex\((\d+)\))(?: \((greedy|optional)\))?")
FRAME_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", re.MULTILINE)


def _documented_frame_types(text: str) -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", doc_section(text, "### 4.2"), re.MULTILINE))


def _documented_fields(frame: str, cell: str) -> list[dict[str, object]]:
    """The fields of one row of section 4.2's table, in the protocol table's form."""
    fields = []
    for entry in cell.strip().split(", "):
        match = DOCUMENTED_FIELD.fullmatch(entry)
        assert match, f"docs/protocol.md 4.2, {frame}: cannot read the field {entry!r} (`name` kind [(greedy)])"
        name, kind, length, flag = match.groups()
        fields.append(
            {
                "name": name,
                "kind": "hex" if length else kind,
                "length": int(length) if length else None,
                "greedy": flag == "greedy",
                "optional": flag == "optional",
            }
        )
    return fields


def _table_rows(section: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``section``, cells stripped."""
    rows = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _example_frames(text: str) -> list[str]:
    """Every concrete frame in the document's untagged code blocks (templates and diagrams,
    which hold ``<placeholders>`` or arrows, are not frames)."""
    frames = []
    for language, lines in fenced_blocks(text):
        if language:
            continue
        for line in lines:
            line = DIRECTION.sub("", line)
            if FRAME_LINE.match(line) and "<" not in line and "->" not in line and "<-" not in line:
                frames.append(line)
    return frames


def _example_sequence(text: str, heading: str) -> list[tuple[str, str]]:
    """(direction, frame type or 'chunk') of the data-channel lines of one worked example."""
    sequence = []
    for _, lines in fenced_blocks(doc_section(text, heading)):
        for line in lines:
            direction, _, rest = line.partition(" ")
            if direction in ("C->W", "W->C"):
                sequence.append((direction, "chunk" if rest.startswith("<binary") else rest.split("::")[0]))
    return sequence


def _recorded_sequence(transcript: Transcript) -> list[tuple[str, str]]:
    return [
        (direction, message.split("::")[0] if isinstance(message, str) else "chunk")
        for direction, message in transcript.lines
        if not direction.startswith("SIG")
    ]


def _without_timing(sequence: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The sequence without what depends on timing: how many output lines and progress reports
    a run sends (they are rate-limited and coalesced), and the worker's report that its own
    direct attempt failed, which may come just before or after the client's choice."""
    return [
        step
        for step in sequence
        if step[1] not in ("JOB_LOG", "JOB_PROGRESS") and step != ("W->C", "DIRECT_RESULT")
    ]


def test_the_frame_table_is_the_protocol_table() -> None:
    rows = FRAME_ROW.findall(doc_section(doc_text(), "### 4.2"))
    documented = [frame for frame, _ in rows]
    assert len(documented) == len(set(documented)), "a frame type has two rows in docs/protocol.md 4.2"
    table = TABLE["frame_types"]
    only_documented, only_in_table = set(documented) - set(table), set(table) - set(documented)
    assert not only_documented, f"described in docs/protocol.md 4.2 but not in protocol.json: {only_documented}"
    assert not only_in_table, f"in protocol.json but not described in docs/protocol.md 4.2: {only_in_table}"
    for frame, cell in rows:
        assert _documented_fields(frame, cell) == table[frame]["fields"], f"docs/protocol.md 4.2, {frame}"
    # ... and protocol.json is made of the built-in frame types (tests/protocol/test_protocol_table.py holds the rest).
    assert set(documented) == {frame.TYPE for frame in BUILTIN}


def test_the_syntax_section_gives_the_tables_kinds_and_limits() -> None:
    section = doc_section(doc_text(), "### 4.1")
    kinds = {re.sub(r"\(N\)$", "", row[0].strip("`")): row[1] for row in _table_rows(section)}
    assert set(kinds) == set(TABLE["field_kinds"])
    assert kinds["token"] == f"`{TABLE['field_kinds']['token']['pattern']}`"
    assert f"`TYPE` matches `{TABLE['type_name_pattern']}`" in section
    assert f"the separator is exactly `{TABLE['separator']}`" in section
    assert f"A frame is at most {TABLE['max_frame_chars']} characters." in section
    errors = " ".join(doc_section(doc_text(), "### 4.4").split())
    sentence = errors[errors.index("Error reports ("): errors.index("are never answered")]
    assert sorted(re.findall(r"`([A-Z_]+)`", sentence)) == TABLE["error_reports"]
    assert f"cut to {TABLE['max_echo_chars']} characters" in errors


def test_the_chunk_header_section_is_the_tables_layout() -> None:
    section = doc_section(doc_text(), "### 5.1")
    header = TABLE["chunk_header"]
    assert f"a {header['size']}-byte header" in section
    rows = _table_rows(section)
    documented = [(row[0], row[1].replace(" ", "_")) for row in rows if row[1] != "payload"]
    assert documented == [
        (f"{field['offset']}-{field['offset'] + field['size'] - 1}", field["name"]) for field in header["fields"]
    ]
    magic = " ".join(header["magic"][i: i + 2] for i in range(0, len(header["magic"]), 2))
    assert rows[0][2].startswith(f"`{magic}`")
    assert f"**{header['byte_order']}-endian**" in rows[2][2]


def test_every_example_frame_decodes_and_reencodes_exactly() -> None:
    examples = _example_frames(doc_text())
    assert len(examples) >= 40, "the examples were not found"
    for text in examples:
        assert BUILTIN.decode(text).encode() == text, text
    # ... and every frame type has at least one example.
    assert {text.split("::")[0] for text in examples} == {frame.TYPE for frame in BUILTIN}


def test_every_json_example_parses_and_names_a_documented_message() -> None:
    text = doc_text()
    signaling = doc_section(text, "## 1. Signaling")
    documented = set(re.findall(r'"type": "([a-z-]+)"', signaling))
    examples = [line for language, lines in fenced_blocks(text) if language == "json" for line in lines]
    assert examples
    for line in examples:
        message = json.loads(line)
        if "type" in message:
            assert message["type"] in documented


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory) -> dict[str, Transcript]:
    async def both() -> dict[str, Transcript]:
        return {
            transport: await record_job(transport, tmp_path_factory.mktemp(transport))
            for transport in ("rtc-chunked", "shared-fs", "direct")
        }

    return run_async(both())


@pytest.mark.parametrize("transport", ["rtc-chunked", "shared-fs", "direct"])
def test_what_a_real_job_sends_is_described(transcripts, transport) -> None:
    transcript = transcripts[transport]
    assert transcript.result is not None and transcript.result.ok, transcript.result
    text = doc_text()
    frame_types = _documented_frame_types(text)
    for frame in transcript.frames():
        assert frame.split("::")[0] in frame_types, frame
    for chunk in transcript.chunks():
        unpack_chunk(chunk)  # the documented header, or FrameDecodeError
    signaling = doc_section(text, "## 1. Signaling")
    for message in transcript.signaling():
        assert f'"type": "{message["type"]}"' in signaling, message
        payload = message.get("payload")
        if payload is not None:
            assert f'"kind": "{payload["kind"]}"' in signaling, payload


@pytest.mark.parametrize(
    ("transport", "heading"), [("rtc-chunked", "### 9.1"), ("shared-fs", "### 9.2"), ("direct", "### 9.3")]
)
def test_worked_example_is_the_sequence_of_a_real_run(transcripts, transport, heading) -> None:
    documented = _example_sequence(doc_text(), heading)
    assert documented, f"no worked example under {heading}"
    recorded = _recorded_sequence(transcripts[transport])
    assert _without_timing(documented) == _without_timing(recorded)


def test_the_authentication_test_vector_is_what_rtcxfer_computes() -> None:
    from rtcxfer.protocol import auth

    section = doc_section(doc_text(), "### 3.1")
    transcript = auth.Transcript("11" * 32, "22" * 32, ":".join(["AA"] * 32), ":".join(["BB"] * 32),
                                 "shared-fs,direct,rtc-chunked")
    assert f"client proof: {auth.client_proof('s3cret', transcript)}" in section
    assert f"worker proof: {auth.worker_proof('s3cret', transcript, 'rtc-chunked')}" in section
    assert f"`{auth.signaling_token('ROOMSECRET')}`" in section
    start = transcript.message(b"client").hex()[:58]
    assert start == "727463786665722d617574682d763200000006636c69656e7400000040"
    assert "`727463786665722d617574682d7632`" in section


def test_the_documented_turn_credentials_are_those_of_the_documented_secret() -> None:
    import base64
    import hashlib
    import hmac

    doc = doc_text()
    assert "the credentials in the examples above are those of the secret `north-wind`" in doc
    credentials = []
    for line in re.findall(r'^\{"type": "(?:registered|ice-servers)".*"ice_servers".*$', doc, re.M):
        credentials += [entry for entry in json.loads(line)["ice_servers"] if "credential" in entry]
    assert len(credentials) == 2
    for entry in credentials:
        digest = hmac.new(b"north-wind", entry["username"].encode(), hashlib.sha1).digest()
        assert entry["credential"] == base64.b64encode(digest).decode()
