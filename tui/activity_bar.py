"""What the latest long action (ssh-up, ssh-down, spawn, download…) is doing, with a bar."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static


class ActivityBar(Horizontal):
    def compose(self) -> ComposeResult:
        yield Static("Ready.", id="activity-text")
        yield ProgressBar(total=None, show_eta=False, id="activity-progress")

    def on_mount(self) -> None:
        self.query_one(ProgressBar).display = False

    def working(self, text: str, fraction: float | None = None) -> None:
        self._say(text, "working")
        bar = self.query_one(ProgressBar)
        bar.display = True
        if fraction is None:
            bar.update(total=None)  # an indeterminate, pulsing bar
        else:
            bar.update(total=100, progress=100 * fraction)

    def done(self, text: str, *, others_running: bool = False) -> None:
        self._say(text, "done")
        self.query_one(ProgressBar).display = others_running

    def failed(self, text: str, *, others_running: bool = False) -> None:
        self._say(text, "failed")
        self.query_one(ProgressBar).display = others_running

    def _say(self, text: str, kind: str) -> None:
        label = self.query_one("#activity-text", Static)
        label.update(text)
        label.set_classes(kind)

    @property
    def text(self) -> str:
        return str(self.query_one("#activity-text", Static).content)
