"""What `rbee ssh-up`, `ssh-down` and `deploy` print while they act on many nodes at once.

On a terminal: a live row per node (its latest step, then its outcome), and once all are
done the rows that fit the screen (failures first when they do not) and a summary line,
`58 up, 2 failed: n55 (refused), n58 (timed out)`; each failure in a line or two. Piped: one
line per node as it ends, a failure in full (`NODE: Error: message`, its details and what
to do, indented, as console.explain prints them), then the summary; of the steps, only
those not every node goes through (an install's). Sixty nodes of two lines each hid six
errors in 117 lines (issue 15)."""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field

from rich.console import Console as RichConsole
from rich.console import Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .attempts import ATTEMPT_STEP
from .console import Console
from .events import KeeperEvent, Step
from .hive_control import ROUTINE_STEPS
from .runner import CommandTimeout
from .ssh_errors import SSHConnectError
from .words import ActionableError

LINE_WIDTH = 80
SUMMARY_WIDTH = 160  # the summary names failed nodes in about two lines of 80 columns
SHORT_REASON_WIDTH = 28
# An SSH connection's failure kind (ssh_errors.py) in the summary's words.
_CONNECT_REASONS = {
    "refused": "refused",
    "timeout": "timed out",
    "auth": "auth failed",
    "host_key": "host key",
    "unreachable": "unreachable",
    "lost": "connection lost",
    "config": "ssh config",
}
# Words of an ActionableError's message (hive_control.py, words.py) in the summary's words.
_MESSAGE_REASONS = (
    ("not answering", "not answering"),
    ("not installed", "not installed"),
    ("Version mismatch", "version mismatch"),
    ("did not start", "did not start"),
    ("Authentication failed", "auth failed"),
    ("older than this rbee", "old rbee-hive"),
)


def short_reason(error: Exception) -> str:
    """Why a node failed, in a word or three (the summary's parenthesis)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, SSHConnectError):
            return _CONNECT_REASONS.get(cause.kind, cause.kind)
        if isinstance(cause, CommandTimeout):
            return "timed out"
        cause = cause.__cause__
    message = error.message if isinstance(error, ActionableError) else str(error)
    for words, reason in _MESSAGE_REASONS:
        if words in message:
            return reason
    return _clipped(message.split("\n")[0], SHORT_REASON_WIDTH)


def failure_lines(name: str, error: Exception) -> list[str]:
    """The whole failure, for a log: `NODE: Error: message`, then its details and what to do,
    indented, each line as it is (a log is searched: a phrase is never cut in two)."""
    if isinstance(error, ActionableError):
        message, details, suggestion = error.message, error.details, error.suggestion
    else:
        message, details, suggestion = str(error), (), None
    first, *rest = _without(name, message).splitlines() or [""]
    parts = [*rest, *(line for detail in details for line in detail.splitlines())]
    if suggestion:
        parts.append(f"Suggestion: {suggestion}")
    return [f"{name}: Error: {first}", *(f"  {part.strip()}" for part in parts if part.strip())]


def _wrapped(text: str, width: int, indent: str) -> list[str]:
    return textwrap.wrap(
        text,
        width,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [text]


def _without(name: str, text: str) -> str:
    """`text` without the node's name in front (the keeper's errors name it)."""
    prefix = f"{name}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _clipped(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_line(row: _Row) -> str:
    error = row.error
    message = error.message if isinstance(error, ActionableError) else str(error)
    return _without(row.name, message.split("\n")[0])


def _second_line(error: Exception) -> str | None:
    if not isinstance(error, ActionableError):
        return None
    if error.suggestion:
        return f"Suggestion: {error.suggestion}"
    lines = [line.strip() for d in error.details for line in d.splitlines() if line.strip()]
    return lines[0] if lines else None


@dataclass
class _Row:
    name: str
    step: str = "waiting"
    said: str | None = None  # the outcome line when it succeeded
    error: Exception | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.said is not None or self.error is not None


class NodeListener:
    """One node's listener (events.py): its steps update its row."""

    def __init__(self, progress: FleetProgress, row: _Row) -> None:
        self._progress = progress
        self._row = row

    def heard(self, event: KeeperEvent) -> None:
        if isinstance(event, Step):
            self.status(event.text)

    def status(self, text: str) -> None:
        self._row.step = _without(self._row.name, text)
        self._progress.stepped(self._row)


class FleetProgress:
    """The rows of one command over `names`; `done` counts successes in the summary (`up`,
    `stopped`, `installed`). Use as a context manager: the live display runs inside it."""

    def __init__(self, console: Console, names: list[str], done: str) -> None:
        self._console = console
        self._rows = {name: _Row(name) for name in names}
        self._done = done
        self._terminal = console.terminal
        self._live: Live | None = None

    def __enter__(self) -> FleetProgress:
        if self._terminal is not None:
            self._live = Live(
                get_renderable=self._render,
                console=self._terminal,
                refresh_per_second=8,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._print_final(self._terminal)
        if any(row.done for row in self._rows.values()):
            for line in _wrapped(self.summary(), LINE_WIDTH, "  "):
                self._console.status(line)

    def listener(self, name: str) -> NodeListener:
        return NodeListener(self, self._rows[name])

    def changed(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def stepped(self, row: _Row) -> None:
        """A node's new step: its row on a terminal; a line in a log unless every node goes
        through it (an install's steps show, `asking its hive` does not)."""
        routine = row.step.startswith((*ROUTINE_STEPS, ATTEMPT_STEP))
        if self._live is None and not routine:
            self._console.status(f"{row.name}: {row.step}")
        self.changed()

    def succeeded(self, name: str, said: str) -> None:
        row = self._rows[name]
        row.said = said
        if self._live is None:
            self._console.status(said)
        self.changed()

    def failed(self, name: str, error: Exception) -> None:
        row = self._rows[name]
        row.error = error
        if self._live is None:
            for line in failure_lines(name, error):
                self._console.status(line)
        self.changed()

    @property
    def any_failed(self) -> bool:
        return any(row.error is not None for row in self._rows.values())

    def summary(self) -> str:
        """`58 up, 2 failed: n55 (refused), n58 (timed out)` (the failed names cut to fit
        about two lines); nodes left unfinished (Ctrl+C) are counted too."""
        rows = list(self._rows.values())
        ok = sum(row.said is not None for row in rows)
        failed = [row for row in rows if row.error is not None]
        unfinished = sum(not row.done for row in rows)
        counts = [f"{ok} {self._done}"]
        if failed:
            counts.append(f"{len(failed)} failed")
        if unfinished:
            counts.append(f"{unfinished} unfinished")
        line = ", ".join(counts)
        if not failed:
            return line
        named = ""
        for i, row in enumerate(failed):
            assert row.error is not None
            item = f"{row.name} ({short_reason(row.error)})"
            more = f", … {len(failed) - i} more"
            if len(line) + len(named) + len(item) + len(more) + 4 > SUMMARY_WIDTH:
                named += more if named else f" {len(failed)} nodes"
                break
            named += (", " if named else "") + item
        return f"{line}: {named}"

    # ----------------------------------------------------------------- the terminal

    def _render(self) -> RenderableType:
        assert self._terminal is not None
        rows = list(self._rows.values())
        finished = sum(row.done for row in rows)
        # The header, the rows that fit, a line for the rest: failures and nodes still
        # working before finished successes.
        room = max(1, self._terminal.size.height - 3)
        shown = sorted(rows, key=lambda r: (r.said is not None, 0))[:room]
        order = {name: i for i, name in enumerate(self._rows)}
        shown.sort(key=lambda r: order[r.name])
        table = Table.grid(padding=(0, 1))
        table.add_column(width=2)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis")
        for row in shown:
            table.add_row(*self._cells(row))
        parts: list[RenderableType] = [Text(f"{finished}/{len(rows)} nodes done"), table]
        if len(shown) < len(rows):
            hidden = [row for row in rows if row not in shown]
            done = sum(row.done for row in hidden)
            parts.append(Text(f"… {len(hidden)} more ({done} done)", style="dim"))
        return Group(*parts)

    def _cells(self, row: _Row) -> tuple[RenderableType, str, str]:
        if row.error is not None:
            return Text("✗", style="red"), row.name, f"failed: {short_reason(row.error)}"
        if row.said is not None:
            return Text("✓", style="green"), row.name, self._outcome(row)
        waited = time.monotonic() - row.started
        return Spinner("dots"), row.name, f"{row.step} ({waited:.0f} s)"

    def _outcome(self, row: _Row) -> str:
        assert row.said is not None
        return _without(row.name, row.said)

    def _print_final(self, terminal: RichConsole | None) -> None:
        """What stays on the screen: every node's line when they fit, else the failures
        only; a failure in two lines: its message, and what to do (else its first detail).
        The whole text: piped (`rbee ssh-up … 2>&1 | cat`)."""
        if terminal is None:
            return
        rows = list(self._rows.values())
        failed = [row for row in rows if row.error is not None]
        fits = len(rows) + len(failed) + 1 < terminal.size.height
        width = terminal.size.width
        for row in rows if fits else failed:
            if row.said is not None:
                self._console.status(_clipped(row.said, width))
            elif row.error is not None:
                self._console.status(_clipped(f"✗ {row.name}: {_first_line(row)}", width))
                if second := _second_line(row.error):
                    self._console.status(_clipped(f"  {second}", width))
