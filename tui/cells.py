"""Table cells of bounded width: a long value ends in an ellipsis; the line under the table
carries it in full."""

from __future__ import annotations

from rich.text import Text


def clipped(value: str, width: int, style: str = "") -> Text:
    """`value` cut to `width` cells, its end an ellipsis when it was longer."""
    text = Text(value, style=style)
    text.truncate(width, overflow="ellipsis")
    return text
