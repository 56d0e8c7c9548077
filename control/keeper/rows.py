"""Listings at the terminal's width: one line per row in aligned columns, and under a row the
texts that do not fit a column (a node's problem, a worker's URL on a narrow terminal).

A rich Table squeezes a long cell into a narrow column, one word per line, and cuts ids and
URLs with `…` so they cannot be copied. Here a long text goes on its own indented line(s)
under its row, wrapped between words at the width; ids, URLs and paths are never cut.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.text import Text

GAP = "  "  # between columns
INDENT = "  "  # a row's lines under it
NO_BREAK = "\u00a0"
MIN_SHRUNK = 6  # a shrinking column keeps this many characters at least (with its `…`)


@dataclass(frozen=True)
class Column:
    header: str
    width: int = 0  # at least this wide: for values not known yet (rows shown as they come)
    below: bool = False  # on a narrow terminal, on its own line under the row, whole
    shrinks: bool = False  # may be cut with `…` to fit (a value the inventory also holds)


Cell = str | Text


class Rows:
    """The layout of one listing at `width` columns, chosen once from the headers and the
    values known (`values`, one sequence of cells per row), so rows shown one at a time line
    up (a value wider than its column's known values pushes the rest of its line along).
    Columns marked `below` move under their row, widest first, until the rest fits; then
    `shrinks` columns are cut; a line still too wide is cut at the end."""

    def __init__(
        self, columns: Sequence[Column], width: int, values: Iterable[Sequence[Cell]] = ()
    ) -> None:
        self.columns = tuple(columns)
        self.width = width
        widths = [max(len(c.header), c.width) for c in self.columns]
        for row in values:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        self._widths = widths
        self._inline = list(range(len(self.columns)))
        movable = sorted(
            (i for i, c in enumerate(self.columns) if c.below), key=lambda i: -widths[i]
        )
        while self._line_width() > width and movable:
            self._inline.remove(movable.pop(0))
        for i in self._inline:
            excess = self._line_width() - width
            if excess > 0 and self.columns[i].shrinks:
                widths[i] = max(MIN_SHRUNK, len(self.columns[i].header), widths[i] - excess)

    @property
    def moved(self) -> tuple[str, ...]:
        """The headers of the columns shown under their row."""
        return tuple(c.header for i, c in enumerate(self.columns) if i not in self._inline)

    def header(self) -> Text:
        return self._line([Text(c.header, style="bold") for c in self.columns])

    def row(self, cells: Sequence[Cell], details: Sequence[Cell] = ()) -> list[Text]:
        """The row's line, then its moved cells (`header: value`, whole), then `details`, each
        wrapped at the width between words (a word longer than the width stays whole).
        Cells left out at the end are empty."""
        cells = [*cells, *[""] * (len(self.columns) - len(cells))]
        lines = [self._line(cells)]
        for i, column in enumerate(self.columns):
            if i not in self._inline and cells[i]:
                lines.append(Text.assemble(f"{INDENT}{column.header}: ", cells[i]))
        for detail in details:
            lines.extend(wrapped(detail, self.width))
        return lines

    def _line(self, cells: Sequence[Cell]) -> Text:
        last = len(self._inline) - 1
        parts = []
        for n, i in enumerate(self._inline):
            given = cells[i]
            cell = Text(given) if isinstance(given, str) else given.copy()
            if self.columns[i].shrinks:
                cell.truncate(self._widths[i], overflow="ellipsis")
            if n != last:  # the last one is not padded: no trailing spaces in a pipe
                cell.pad_right(self._widths[i] - len(cell))
            parts.append(cell)
        line = Text(GAP).join(parts)
        line.rstrip()
        line.truncate(self.width, overflow="ellipsis")
        return line

    def _line_width(self) -> int:
        return sum(self._widths[i] for i in self._inline) + len(GAP) * (len(self._inline) - 1)


def wrapped(text: Cell, width: int) -> list[Text]:
    """`text` as indented lines of at most `width` characters, broken between words only, and
    never inside a `quoted command` (a reader copies it whole), in `text`'s style. A word or
    a command longer than the width stays whole on a line of its own."""
    plain, style = (text, "") if isinstance(text, str) else (text.plain, text.style)
    # textwrap breaks at ASCII spaces only: the commands' spaces become unbreakable ones.
    parts = plain.split("`")
    plain = "`".join(p.replace(" ", NO_BREAK) if i % 2 else p for i, p in enumerate(parts))
    lines = textwrap.wrap(
        plain,
        max(20, width),
        initial_indent=INDENT,
        subsequent_indent=INDENT * 2,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [Text(line.replace(NO_BREAK, " "), style=style) for line in lines]
