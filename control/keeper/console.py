"""What the keeper says to a person: status and progress on stderr, the answer on stdout.

So `rbee infer … > out.txt` captures only the answer.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console as RichConsole
from rich.markup import escape
from rich.table import Table

from .events import (
    AnswerEnded,
    Downloaded,
    Downloading,
    DownloadRetrying,
    Failed,
    KeeperEvent,
    Loading,
    Queued,
    RequestSent,
    Routed,
    StartingWorker,
    Step,
    Token,
    timeline_text,
)
from .words import ActionableError

BAR_WIDTH = 24


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "█" * filled + "-" * (width - filled) + "]"


class Console:
    """The terminal, and the listener (events.py) of the flows the command line runs."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._err = RichConsole(file=err or sys.stderr, highlight=False, soft_wrap=True)
        self._data = RichConsole(file=self._out, highlight=False)
        self._progress_open = False

    @property
    def terminal(self) -> RichConsole | None:
        """stderr's console when it is a terminal (for live displays), else None."""
        return self._err if self._err.is_terminal else None

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

    def heard(self, event: KeeperEvent) -> None:
        match event:
            case Step(text):
                self.status(text)
            case Token(text):
                self._out.write(text)
                self._out.flush()
            case AnswerEnded():
                self._out.write("\n")
                self._out.flush()
            case Failed(error):
                self.explain(error)
            case Loading(done, total) if total:
                self.progress(
                    f"Loading model to VRAM... {bar(done / total)} "
                    f"{100 * done // total}% ({done}/{total} layers)"
                )
            case Downloading(bytes_done=done, bytes_total=total, mb_per_s=speed) if total:
                self.progress(
                    f"Downloading model... {bar(done / total)} {100 * done // total}% "
                    f"({done / 1e6:.1f} MB / {total / 1e6:.1f} MB) @ {speed:.1f} MB/s"
                )
            case DownloadRetrying(attempt=attempt, attempts=attempts, delay_ms=delay_ms):
                self.status(
                    f"Retrying download (attempt {attempt}/{attempts})... delay {delay_ms}ms"
                )
            case Downloaded():
                self.status("Model downloaded.")
            case Queued() | StartingWorker() | Routed():
                self.status(str(timeline_text(event)))
            case RequestSent() | Loading() | Downloading():
                pass  # nothing to print: no measure yet, or only timing for the dashboard

    def _end_progress(self) -> None:
        if self._progress_open:
            self._err.file.write("\n")
            self._progress_open = False
