"""The selected node's hive log, followed live."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from rbee.control.keeper.status import LogLine

from .settings import LOG_LINES


class LogPanel(RichLog):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(max_lines=LOG_LINES, wrap=True, min_width=1, auto_scroll=True, id=id)
        self.node: str | None = None
        self.shown: list[str] = []  # the lines as text, newest last (what tests and people read)

    def follow(self, node: str) -> None:
        self.node = node
        self.border_title = f"log: {node}"
        self.shown = []
        self.clear()

    def add(self, line: LogLine) -> None:
        # A narrow panel: the time of day and the message; the full line is `rbee logs`'s.
        time_of_day = line.ts[11:19] or line.ts
        self._write(
            f"{time_of_day} {line.level:<5} {line.message}",
            "red" if line.level in ("ERROR", "CRITICAL") else "",
        )

    def problem(self, text: str) -> None:
        self._write(f"Cannot follow the log: {text}", "red")

    def _write(self, text: str, style: str) -> None:
        self.shown = [*self.shown, text][-LOG_LINES:]
        self.write(Text(text, style=style))
