"""What the long actions (ssh-up, ssh-down, spawn, download…) are doing: one line per action,
its latest step and then its outcome, so each of several nodes acted on at once shows its own
progress; a bar moves while any of them runs."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static

LINE_STYLES = {"working": "", "done": "green", "failed": "red"}
NOTICE = -1  # the key of a line no action owns (e.g. "No worker selected")


@dataclass(frozen=True)
class ActivityLine:
    text: str
    kind: str  # working, done or failed


class ActivityBar(Horizontal):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: dict[int, ActivityLine] = {}  # by action, in the order they started

    def compose(self) -> ComposeResult:
        yield Static("Ready.", id="activity-text")
        yield ProgressBar(total=None, show_eta=False, id="activity-progress")

    def on_mount(self) -> None:
        self.query_one(ProgressBar).display = False

    @property
    def running(self) -> bool:
        return any(line.kind == "working" for line in self.lines.values())

    def working(self, action: int, text: str, fraction: float | None = None) -> None:
        if action not in self.lines and not self.running:
            self.lines = {}  # a new round of actions: the last round's outcomes go
        self._set(action, ActivityLine(text, "working"))
        bar = self.query_one(ProgressBar)
        if fraction is None:
            bar.update(total=None)  # an indeterminate, pulsing bar
        else:
            bar.update(total=100, progress=100 * fraction)

    def done(self, action: int, text: str) -> None:
        self._set(action, ActivityLine(text, "done"))

    def failed(self, action: int, text: str) -> None:
        self._set(action, ActivityLine(text, "failed"))

    def notice(self, text: str) -> None:
        """A word from the dashboard itself, beside the lines of the running actions."""
        if not self.running:
            self.lines = {}
        self.failed(NOTICE, text)

    def _set(self, action: int, line: ActivityLine) -> None:
        self.lines = {**self.lines, action: line}
        shown = Text("\n").join(
            Text(line.text, style=LINE_STYLES[line.kind]) for line in self.lines.values()
        )
        self.query_one("#activity-text", Static).update(shown)
        self.query_one(ProgressBar).display = self.running

    @property
    def text(self) -> str:
        """What the bar shows, as plain text."""
        return str(self.query_one("#activity-text", Static).content)
