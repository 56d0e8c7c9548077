"""The nodes of the inventory: hive state, workers, free RAM, when last checked, trouble."""

from __future__ import annotations

import time

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from rbee.control.keeper.node import Node
from rbee.control.keeper.status import HiveState, NodeStatus, gigabytes

from .cells import clipped

STATE_STYLES = {
    HiveState.UP: "bold green",
    HiveState.DOWN: "yellow",
    HiveState.UNREACHABLE: "bold red",
    HiveState.NOT_ANSWERING: "bold red",
    HiveState.VERSION_MISMATCH: "bold magenta",
    HiveState.AUTH_FAILED: "bold red",
}
COLUMNS = ("node", "host", "hive", "workers", "free RAM", "last checked", "problem")
# Cells of the problem column that keep every column in view at 120 columns; the line under
# the table has the selected node's problem in full.
PROBLEM_WIDTH = 40


class NodesTable(DataTable[str | Text]):
    def __init__(self, nodes: list[Node], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.inventory_nodes = nodes
        self.marked: set[str] = set()  # nodes that ssh-up / ssh-down act on together

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column, key=column)
        for node in self.inventory_nodes:
            host = "local" if node.is_local else node.host
            self.add_row(
                node.name, host, Text("checking…", style="dim"), "-", "-", "-", "", key=node.name
            )

    @property
    def selected_node(self) -> str | None:
        if self.row_count == 0:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def toggle_mark(self, name: str) -> None:
        self.marked ^= {name}
        self.update_cell(
            name, "node", f"● {name}" if name in self.marked else name, update_width=True
        )

    def show(self, status: NodeStatus, checked_at: float, silent_s: float | None = None) -> None:
        """The node's row as `status` has it; `silent_s`: how long its hive has been
        silent, if it is."""
        up = status.is_up
        self._set(status.name, "hive", Text(str(status.state), style=STATE_STYLES[status.state]))
        self._set(status.name, "workers", str(len(status.workers)) if up else "-")
        self._set(status.name, "free RAM", gigabytes(status.ram_available_mb))
        # Always 8 wide: measuring it (the whole column, for a cell narrower than the
        # column) for every probe was most of an idle dashboard's CPU at 60 nodes.
        checked = time.strftime("%H:%M:%S", time.localtime(checked_at))
        self.update_cell(status.name, "last checked", checked)
        self._set(status.name, "problem", clipped(status.problem or "", PROBLEM_WIDTH, "red"))
        if silent_s is not None:
            self.show_silence(status.name, silent_s)

    def show_silence(self, name: str, silent_s: float) -> None:
        """`not answering (40 s)`: how long the node's hive has left probes unanswered, in
        steps of 5 s, then of minutes: a count that moved every second repainted the table
        every second for each silent node (docs/fleet.md)."""
        seconds = int(silent_s)
        since = f"{seconds // 5 * 5} s" if seconds < 60 else f"{seconds // 60} min"
        text = f"{HiveState.NOT_ANSWERING} ({since})"
        self._set(name, "hive", Text(text, style=STATE_STYLES[HiveState.NOT_ANSWERING]))

    def _set(self, row: str, column: str, value: str | Text) -> None:
        """Updates a cell that changed. The column is measured again only when the cell
        outgrows it or was its widest: Textual measures every cell of a column for a cell
        narrower than the column, which at 60 nodes was most of an idle dashboard's CPU."""
        old = self.get_cell(row, column)
        if old == value:
            return
        widest = self.columns[ColumnKey(column)].content_width
        new_width, old_width = _width(value), _width(old)
        measure = new_width > widest or (old_width >= widest and new_width < old_width)
        self.update_cell(row, column, value, update_width=measure)


def _width(value: object) -> int:
    return cell_len(value.plain if isinstance(value, Text) else str(value))
