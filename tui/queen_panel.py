"""The queen of this machine, when one runs: where it listens, the requests waiting per
model and those it routed to each node; one line saying none runs otherwise.

The panel asks the keeper's facade (`Keeper.probe_queen`) in a Textual worker of its own, on
the dashboard's refresh, and skips a tick while the previous ask is out: a wedged queen
never holds up the screen.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.widgets import Static

from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.queen_status import QueenStatus
from rbee.control.keeper.words import START_QUEEN

from .cells import clipped
from .messages import QueenProbed, while_running

MODEL_WIDTH = 40  # a model reference in the queue line; longer ones end in "…"


class QueenPanel(Static):
    def __init__(self, keeper: Keeper, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._keeper = keeper
        self._probing = False
        self.checked = False  # whether an answer came yet
        self.status: QueenStatus | None = None  # the latest answer (None: no queen runs)

    def on_mount(self) -> None:
        self.border_title = "queen"
        self.update(Text("checking…", style="dim"))

    def refresh_queen(self) -> None:
        """Asks again, unless the last ask has not come back yet."""
        if not self._probing:
            self._probing = True
            self._probe()

    @work(group="queen", exit_on_error=False)
    async def _probe(self) -> None:
        try:
            status = await self._keeper.probe_queen()
        finally:
            self._probing = False
        self.post_message(QueenProbed(status))

    @while_running
    def on_queen_probed(self, message: QueenProbed) -> None:
        self.show(message.status)

    def show(self, status: QueenStatus | None) -> None:
        self.checked = True
        self.status = status
        text = describe(status)
        if text != self.content:  # an update lays the screen out again: only on a change
            self.update(text)

    @property
    def text(self) -> str:
        """What the panel shows, as plain text."""
        return str(self.content)


def describe(status: QueenStatus | None) -> Text:
    if status is None:
        return Text(f"no queen running: {START_QUEEN}", style="dim")
    head = Text(status.url, style="bold")
    if status.problem is not None:
        return Text.assemble(head, "  ", Text(status.problem, style="red"))
    workers = f"{status.workers} worker{'s' if status.workers != 1 else ''}"
    queued = [
        Text.assemble(clipped(model, MODEL_WIDTH), f" {n}")
        for model, n in sorted(status.queued.items())
    ]
    routed = [Text(f"{node} {n}") for node, n in status.routed.items()]
    return Text("\n").join(
        [
            Text.assemble(head, f"  {workers}"),
            Text.assemble("queued  ", Text(" · ").join(queued) if queued else "none"),
            Text.assemble("routed  ", Text(" · ").join(routed) if routed else "none yet"),
        ]
    )
