"""Driving the dashboard (RbeeApp) with Textual's Pilot: waiting, and reading its rows."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot

from rbee.tui.app import RbeeApp


async def wait_for(
    pilot: Pilot[None],
    check: Callable[[], bool],
    timeout_s: float = 30.0,
    what: str = "the condition",
) -> None:
    """Lets the app run until `check()` holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def hive_cell(app: RbeeApp, node: str) -> str:
    return str(app.nodes_table.get_cell(node, "hive"))


def all_shown(app: RbeeApp) -> bool:
    """Every node's row has its probe's answer (rows are redrawn together, shortly after)."""
    return all(not hive_cell(app, name).startswith("checking") for name in app.nodes)


def select_node(app: RbeeApp, node: str) -> None:
    app.nodes_table.move_cursor(row=app.nodes_table.get_row_index(node))
