"""``docs/protocol.md`` stays true: what a real job puts on the wire is described there, and every
example in it decodes with the codec."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from rtcxfer.protocol.frames import unpack_chunk
from rtcxfer.testing.transcript import Transcript, record_job
from rtcxfer.transport.host import PluginHost

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
#: The frames of the core protocol and of the built-in transports (not of installed plugins).
BUILTIN = PluginHost(autoload=False).catalogue
DIRECTION = re.compile(r"^(?:C->W|W->C) ")
FRAME_LINE = re.compile(r"^[A-Z][A-Z0-9_]*(?:::|$)")


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced code block."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, lines))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of the same or a higher level."""
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    following = re.search(rf"^#{{1,{level}}} ", text[start + len(heading):], re.MULTILINE)
    return text[start: start + len(heading) + following.start()] if following else text[start:]


def _documented_frame_types(text: str) -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", _section(text, "### 4.2"), re.MULTILINE))


def _example_frames(text: str) -> list[str]:
    """Every concrete frame in the document's untagged code blocks (templates and diagrams,
    which hold ``<placeholders>`` or arrows, are not frames)."""
    frames = []
    for language, lines in _fenced_blocks(text):
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
    for _, lines in _fenced_blocks(_section(text, heading)):
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


def test_every_builtin_frame_type_is_described_and_nothing_else() -> None:
    assert _documented_frame_types(_doc()) == {frame.TYPE for frame in BUILTIN}


def test_every_example_frame_decodes_and_reencodes_exactly() -> None:
    examples = _example_frames(_doc())
    assert len(examples) >= 40, "the examples were not found"
    for text in examples:
        assert BUILTIN.decode(text).encode() == text, text
    # ... and every frame type has at least one example.
    assert {text.split("::")[0] for text in examples} == {frame.TYPE for frame in BUILTIN}


def test_every_json_example_parses_and_names_a_documented_message() -> None:
    text = _doc()
    signaling = _section(text, "## 1. Signaling")
    documented = set(re.findall(r'"type": "([a-z-]+)"', signaling))
    examples = [line for language, lines in _fenced_blocks(text) if language == "json" for line in lines]
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

    return asyncio.run(both())


@pytest.mark.parametrize("transport", ["rtc-chunked", "shared-fs", "direct"])
def test_what_a_real_job_sends_is_described(transcripts, transport) -> None:
    transcript = transcripts[transport]
    assert transcript.result is not None and transcript.result.ok, transcript.result
    text = _doc()
    frame_types = _documented_frame_types(text)
    for frame in transcript.frames():
        assert frame.split("::")[0] in frame_types, frame
    for chunk in transcript.chunks():
        unpack_chunk(chunk)  # the documented header, or FrameDecodeError
    signaling = _section(text, "## 1. Signaling")
    for message in transcript.signaling():
        assert f'"type": "{message["type"]}"' in signaling, message
        payload = message.get("payload")
        if payload is not None:
            assert f'"kind": "{payload["kind"]}"' in signaling, payload


@pytest.mark.parametrize(
    ("transport", "heading"), [("rtc-chunked", "### 9.1"), ("shared-fs", "### 9.2"), ("direct", "### 9.3")]
)
def test_worked_example_is_the_sequence_of_a_real_run(transcripts, transport, heading) -> None:
    documented = _example_sequence(_doc(), heading)
    assert documented, f"no worked example under {heading}"
    recorded = _recorded_sequence(transcripts[transport])
    assert _without_timing(documented) == _without_timing(recorded)


def test_the_authentication_test_vector_is_what_rtcxfer_computes() -> None:
    from rtcxfer.protocol import auth

    section = _section(_doc(), "### 3.1")
    transcript = auth.Transcript("11" * 32, "22" * 32, ":".join(["AA"] * 32), ":".join(["BB"] * 32),
                                 "shared-fs,direct,rtc-chunked")
    assert f"client proof: {auth.client_proof('s3cret', transcript)}" in section
    assert f"worker proof: {auth.worker_proof('s3cret', transcript, 'rtc-chunked')}" in section
    assert f"`{auth.signaling_token('ROOMSECRET')}`" in section
    start = transcript.message(b"client").hex()[:58]
    assert start == "727463786665722d617574682d763200000006636c69656e7400000040"
    assert "`727463786665722d617574682d7632`" in section
