"""A TOML file's text in messages: the line of a table or key, and values as TOML spells them.

tomllib keeps no positions, so a loader that reports problems by line (the inventory) finds
them here by scanning the text.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A TOML key: "quoted", 'literal' or bare.
_KEY_PART = r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+'
_HEADER = re.compile(rf"\s*\[\[?\s*((?:{_KEY_PART})(?:\s*\.\s*(?:{_KEY_PART}))*)\s*\]")
_KEY_LINE = re.compile(rf"\s*({_KEY_PART})\s*[.=]")


class TomlLines:
    """Line numbers of tables and keys, found by scanning the text: tomllib keeps no positions.

    Best effort (a line inside a multi-line string can look like a key); a problem whose line
    is not found is reported without one.
    """

    def __init__(self, text: str) -> None:
        self._tables: dict[tuple[str, ...], int] = {}
        self._keys: dict[tuple[tuple[str, ...], str], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if header := _HEADER.match(line):
                table = tuple(_unquote(p) for p in re.findall(_KEY_PART, header[1]))
                # `[a.b]` also defines `a` when no `[a]` comes first.
                for end in range(1, len(table) + 1):
                    self._tables.setdefault(table[:end], number)
            elif key := _KEY_LINE.match(line):
                self._keys.setdefault((table, _unquote(key[1])), number)

    def table(self, table: tuple[str, ...]) -> int | None:
        """`[a.b]`, or `b = {…}` under `[a]`."""
        if not table:
            return None
        return self._tables.get(table) or self._keys.get((table[:-1], table[-1]))

    def key(self, table: tuple[str, ...], key: str) -> int | None:
        """The key's line, else its table's: a missing or nested key is reported there."""
        return self.table((*table, key)) or self.table(table)


def _unquote(part: str) -> str:
    if part.startswith('"'):
        try:
            return str(json.loads(part))
        except ValueError:
            return part[1:-1]
    if part.startswith("'"):
        return part[1:-1]
    return part


def quoted(text: str) -> str:
    """Double-quoted with escapes, so control characters in a name never reach a terminal."""
    cut = text if len(text) <= 80 else text[:80] + "…"
    return json.dumps(cut, ensure_ascii=False)


def shown(value: Any) -> str:
    """A value as TOML spells it, for "got …"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    return str(value)
