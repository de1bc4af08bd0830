"""Reading ``docs/protocol.md`` for tests: its sections, tables, code blocks and the exchanges of
its worked examples, so that tests drive a worker with what the document says and compare the
worker's answers with what it promises."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
#: A data-channel line of a worked example: ``C->W TEXT`` or ``W->C TEXT``.
EXCHANGE_LINE = re.compile(r"^(C->W|W->C) (.*)$")
#: How a worked example shows a binary message: its length and the first 27 bytes in hex.
BINARY_LINE = re.compile(r"^<binary (\d+) bytes: ([0-9a-f]+)\.\.\.>$")


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of the same or a higher level."""
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    following = re.search(rf"^#{{1,{level}}} ", text[start + len(heading):], re.MULTILINE)
    return text[start: start + len(heading) + following.start()] if following else text[start:]


def flat(text: str) -> str:
    """``text`` with every run of white space (line breaks included) as one space."""
    return " ".join(text.split())


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced code block that starts a line."""
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


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``, cells stripped."""
    rows = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    end = next((i for i in range(2, len(rows)) if rows[i].startswith("| ---")), len(rows))
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:end]]


def first_code(cell: str) -> str:
    """The first `code` span of a table cell."""
    match = re.search(r"`([^`]+)`", cell)
    assert match, f"no code span in {cell!r}"
    return match.group(1)


def exchanges(text: str) -> list[list[tuple[str, str]]]:
    """The data-channel lines ``(direction, message)`` of each untagged code block of ``text``
    that has any."""
    found = []
    for language, lines in fenced_blocks(text):
        if language:
            continue
        exchange = [match.groups() for line in lines if (match := EXCHANGE_LINE.match(line))]
        if exchange:
            found.append(exchange)
    return found


def reason_pattern(documented: str) -> re.Pattern[str]:
    """A documented reason text (``Job <id>: cannot send results via ...``) as a pattern that
    a reason starting with it matches: ``<id>`` is any job id, ``...`` any text."""
    pattern = re.escape(documented).replace(re.escape("<id>"), r"[A-Za-z0-9._,+=@-]+")
    return re.compile(pattern.replace(re.escape("..."), ".*"), re.DOTALL)
