"""Plain-text tables for the terminal."""

from __future__ import annotations


def render_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """``rows`` under ``header``, each column as wide as its widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])
