"""What the keeper says to a person: status and progress on stderr, the answer on stdout.

So `rbee infer … > out.txt` captures only the answer.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import TracebackType
from typing import TextIO

from rich.console import Console as RichConsole
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

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

    @property
    def width(self) -> int:
        """The output's width in columns (the terminal's; $COLUMNS or 80 in a pipe)."""
        return self._data.width

    def rows(self, lines: Sequence[Text]) -> None:
        """Lines of a listing (rows.py), on stdout; styled on a terminal only."""
        self._end_progress()
        for line in lines:
            # soft_wrap: a line wider than the output (a long path) is not broken in two.
            self._data.print(line, soft_wrap=True)

    def rows_as_they_come(
        self, head: Sequence[Text], pending: Sequence[Sequence[Text]]
    ) -> Arrivals:
        """A listing whose rows arrive in any order (see Arrivals); `pending`: each row's
        lines until it arrives."""
        self._end_progress()
        return Arrivals(self, self._data, head, pending)

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


class Arrivals:
    """Rows shown as they arrive: on a terminal, a live view redrawn as each one does (those
    still awaited show their pending lines); in a pipe or a file, no redrawing: each row is
    printed once it and every row before it arrived, so the output keeps the rows' order.

    Used as a context manager; `arrived(index, lines)` gives a row."""

    def __init__(
        self,
        console: Console,
        data: RichConsole,
        head: Sequence[Text],
        pending: Sequence[Sequence[Text]],
    ) -> None:
        self._console = console
        self._head = list(head)
        self._rows: list[Sequence[Text]] = list(pending)
        self._arrived = [False] * len(pending)
        self._printed = 0  # rows printed so far, in a pipe
        self._live = (
            Live(console=data, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
            if data.is_terminal
            else None
        )

    def __enter__(self) -> Arrivals:
        if self._live is None:
            self._console.rows(self._head)
        else:
            self._live.update(self._view())
            self._live.start(refresh=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
        elif exc is None:  # every row arrived (else the error says what happened)
            self._print_ready(everything=True)

    def arrived(self, index: int, lines: Sequence[Text]) -> None:
        self._rows[index] = lines
        self._arrived[index] = True
        if self._live is not None:
            self._live.update(self._view(), refresh=True)
        else:
            self._print_ready()

    def _view(self) -> Group:
        return Group(*self._head, *(line for row in self._rows for line in row))

    def _print_ready(self, everything: bool = False) -> None:
        while self._printed < len(self._rows) and (everything or self._arrived[self._printed]):
            self._console.rows(self._rows[self._printed])
            self._printed += 1
