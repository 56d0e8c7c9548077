"""Workers of the selected node, or of every node: id, model, state, slots, speed, idle time."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from rbee.control.keeper.status import WorkerStatus

from .cells import clipped

COLUMNS = ("worker", "model", "state", "slots", "tok/s", "idle left", "url", "node")
STATE_STYLES = {
    "idle": "green",
    "busy": "bold cyan",
    "loading": "yellow",
    "starting": "yellow",
    "failed": "bold red",
    "draining": "dim",
}
# Cells that keep every column in view at 120 columns; the line under the table has the
# selected worker's model, url and error in full.
MODEL_WIDTH = 24
STATE_WIDTH = 20
URL_WIDTH = 28


def _short_model(ref: str) -> str:
    """file:/a/long/path/x.gguf reads file:…/x.gguf; other references are short already."""
    if ref.startswith("file:") and ref.count("/") > 1:
        return f"file:…/{ref.rsplit('/', 1)[1]}"
    return ref


def _idle_left(worker: WorkerStatus) -> str:
    left = worker.idle_left_s
    if left is None:
        return "-"
    minutes, seconds = divmod(int(left), 60)
    return f"{minutes}:{seconds:02d}"


class WorkersTable(DataTable[str | Text]):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.shown_workers: dict[str, WorkerStatus] = {}  # the rows', by worker id

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column, key=column)

    @property
    def selected(self) -> WorkerStatus | None:
        """The worker of the row under the cursor."""
        if self.row_count == 0:
            return None
        row_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return self.shown_workers[str(row_key.value)]

    def show(self, workers: list[WorkerStatus]) -> None:
        """Replaces the rows, keeping the cursor on the same worker when it is still there."""
        if workers == list(self.shown_workers.values()):
            return  # redrawing the same rows costs a repaint for every probe
        keep = self.selected
        self.clear()
        self.shown_workers = {w.worker_id: w for w in workers}
        for w in workers:
            speed = "-" if w.last_tokens_per_s is None else f"{w.last_tokens_per_s:.1f}"
            state = Text(w.state, style=STATE_STYLES.get(w.state, ""))
            if w.error:
                state.append(f" ({w.error})", style="red")
            state.truncate(STATE_WIDTH, overflow="ellipsis")
            self.add_row(
                w.worker_id,
                clipped(_short_model(w.model_ref), MODEL_WIDTH),
                state,
                f"{w.slots_busy}/{w.slots_total}",
                speed,
                _idle_left(w),
                clipped(w.url, URL_WIDTH),
                w.node,
                key=w.worker_id,
            )
        if keep is not None and keep.worker_id in self.shown_workers:
            self.move_cursor(row=self.get_row_index(keep.worker_id))
