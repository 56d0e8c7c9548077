"""What the keeper says to a person: status and progress on stderr, the answer on stdout.

So `rbee infer … > out.txt` captures only the answer.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console as RichConsole
from rich.markup import escape
from rich.table import Table

BAR_WIDTH = 24


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "█" * filled + "-" * (width - filled) + "]"


class ActionableError(Exception):
    """A failure the person can act on: what went wrong, details, and what to do."""

    def __init__(self, message: str, *details: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.suggestion = suggestion

    def in_words(self) -> str:
        """Message, details and suggestion as plain lines (for screens that are not stderr)."""
        lines = [self.message, *self.details]
        if self.suggestion:
            lines.append(f"Suggestion: {self.suggestion}")
        return "\n".join(lines)


class Console:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._err = RichConsole(file=err or sys.stderr, highlight=False, soft_wrap=True)
        self._data = RichConsole(file=self._out, highlight=False)
        self._progress_open = False

    def status(self, message: str) -> None:
        self._end_progress()
        self._err.print(message, markup=False)

    def error(self, message: str, *details: str, suggestion: str | None = None) -> None:
        self._end_progress()
        self._err.print(f"[bold red]Error:[/] {escape(message)}")
        for line in details:
            self._err.print(line, markup=False)
        if suggestion:
            self._err.print(f"[yellow]Suggestion:[/] {escape(suggestion)}")

    def explain(self, error: ActionableError) -> None:
        self.error(error.message, *error.details, suggestion=error.suggestion)

    def progress(self, line: str) -> None:
        """One line redrawn in place (a terminal) or printed as it changes (a log file)."""
        if self._err.is_terminal:
            self._err.file.write("\r\x1b[2K" + line)
            self._err.file.flush()
            self._progress_open = True
        else:
            self._err.print(line, markup=False)

    def line(self, text: str) -> None:
        """A line of the command's output (stdout)."""
        self._end_progress()
        self._out.write(text + "\n")
        self._out.flush()

    def table(self, table: Table) -> None:
        self._end_progress()
        self._data.print(table)

    def request_sent(self) -> None:
        """The prompt is on its way to the worker (the dashboard times the first token from
        here); nothing to print on a terminal."""

    def token(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def end_answer(self) -> None:
        self._out.write("\n")
        self._out.flush()

    def _end_progress(self) -> None:
        if self._progress_open:
            self._err.file.write("\n")
            self._progress_open = False
