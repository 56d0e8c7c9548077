"""The nodes of the inventory: hive state, workers, free RAM, when last checked, trouble."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

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

    def show(self, status: NodeStatus, checked_at: float) -> None:
        up = status.is_up
        values: dict[str, str | Text] = {
            "hive": Text(str(status.state), style=STATE_STYLES[status.state]),
            "workers": str(len(status.workers)) if up else "-",
            "free RAM": gigabytes(status.ram_available_mb),
            "last checked": time.strftime("%H:%M:%S", time.localtime(checked_at)),
            "problem": clipped(status.problem or "", PROBLEM_WIDTH, "red"),
        }
        for column, value in values.items():
            self.update_cell(status.name, column, value, update_width=True)
