"""The dashboard's main screen, pixel for pixel, at a fixed terminal size.

Its data cannot change between runs: one local node whose hive port is closed (down) and one
SSH node whose sshd port is closed (unreachable), no queen, a fixed clock in UTC, no refresh
during the shot. Regenerate after a deliberate change with `pytest tests/tui/test_tui_snapshot.py
--snapshot-update` and look at the SVG before committing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from support.inventories import CLOSED_PORT, local_node, unreachable_node, write_inventory

from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.tui.app import RbeeApp
from rbee.tui.queen_panel import QueenPanel
from rbee.tui.settings import TuiConfig

FIXED_CLOCK = 1_764_158_400.0  # 2025-11-26 12:00:00 UTC
TERMINAL = (120, 40)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_main_screen_with_a_down_and_an_unreachable_node(
    tmp_path: Path, utc: None, snap_compare: Callable[..., bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))  # where no queen runs
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("local", CLOSED_PORT, tmp_path / "state"),
        unreachable_node("gone", tmp_path / "known_hosts"),
    )
    registry = WorkerRegistry(tmp_path / "home" / "workers.db")
    app = RbeeApp(inventory, registry, TuiConfig(refresh_s=3600, clock=lambda: FIXED_CLOCK))

    async def settled(pilot: Pilot[None]) -> None:
        deadline = time.monotonic() + 20
        while (
            any(str(app.nodes_table.get_cell(n, "hive")) == "checking…" for n in app.nodes)
            or not app.main.query_one("#log").shown
            or not app.main.query_one(QueenPanel).checked
        ):
            assert time.monotonic() < deadline, "the probes did not come back"
            await pilot.pause(0.05)
        await pilot.pause()

    try:
        assert snap_compare(app, terminal_size=TERMINAL, run_before=settled)
    finally:
        registry.close()
