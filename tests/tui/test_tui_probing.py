"""The dashboard's probes against real hives: a wedged one (SIGSTOP) reads `not answering`
with how long it has been silent, within its deadline, while the other rows refresh."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.dashboard import hive_cell, wait_for
from support.hive_process import HiveProcess, start_hive
from support.inventories import local_node, write_inventory

from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.probe import probe_deadline_s
from rbee.control.keeper.probe_schedule import QUIET_FACTOR
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.tui.app import RbeeApp
from rbee.tui.log_panel import LogPanel
from rbee.tui.settings import TuiConfig

SIZE = (140, 44)


@pytest.fixture
def two_hives(tmp_path: Path) -> Iterator[tuple[Inventory, HiveProcess]]:
    """wedged and steady: a hive each; the test freezes wedged's (it is let go after)."""
    hives = [start_hive(tmp_path / name) for name in ("wedged", "steady")]
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        *(
            local_node(name, int(hive.url.rsplit(":", 1)[1]), hive.state_dir)
            for name, hive in zip(("wedged", "steady"), hives, strict=True)
        ),
    )
    yield inventory, hives[0]
    psutil.Process(hives[0].proc.pid).resume()  # SIGCONT, whatever the test did
    for hive in hives:
        hive.stop()


def test_a_wedged_hive_reads_not_answering_while_the_others_refresh(
    two_hives: tuple[Inventory, HiveProcess], registry: WorkerRegistry
) -> None:
    inventory, wedged_hive = two_hives
    # The next probe (a quiet node's, at the latest) plus its deadline, and the row's redraw.
    refresh_s = 0.25
    deadline_s = refresh_s * QUIET_FACTOR + probe_deadline_s(inventory.get("wedged")) + 1

    def steady_checked() -> str:
        return str(app.nodes_table.get_cell("steady", "last checked"))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(
                pilot,
                lambda: hive_cell(app, "wedged") == hive_cell(app, "steady") == "up",
                what="both hives up",
            )
            psutil.Process(wedged_hive.proc.pid).suspend()  # SIGSTOP: connects, never answers
            loop = asyncio.get_running_loop()
            frozen_at = loop.time()
            checked = {steady_checked()}
            while not hive_cell(app, "wedged").startswith("not answering"):
                assert hive_cell(app, "wedged") == "up"  # the old answer, until the deadline
                assert loop.time() - frozen_at < deadline_s, "still no verdict"
                checked.add(steady_checked())
                await pilot.pause(0.1)
            assert len(checked) > 1, "the steady node's row stood still meanwhile"
            first = silent_s(hive_cell(app, "wedged"))
            # It counts up while the hive stays silent, and its neighbour keeps refreshing.
            await wait_for(
                pilot,
                lambda: silent_s(hive_cell(app, "wedged")) >= first + 2,
                timeout_s=10,
                what="the silence counting up",
            )
            assert hive_cell(app, "steady") == "up"
            assert steady_checked() not in checked

            psutil.Process(wedged_hive.proc.pid).resume()
            app.action_refresh()  # `r`: a person who knows it is back
            await wait_for(pilot, lambda: hive_cell(app, "wedged") == "up", what="back up")

    app = RbeeApp(inventory, registry, TuiConfig(refresh_s=refresh_s))
    asyncio.run(scenario())


def silent_s(cell: str) -> int:
    match = re.fullmatch(r"not answering \((\d+) s\)", cell)
    assert match, cell
    return int(match.group(1))


def test_the_logs_failure_line_goes_once_the_hive_is_back(
    tmp_path: Path, registry: WorkerRegistry
) -> None:
    hive = start_hive(tmp_path / "hive")
    port = int(hive.url.rsplit(":", 1)[1])
    inventory = write_inventory(
        tmp_path / "inventory.toml", local_node("local", port, hive.state_dir)
    )

    def log_lines() -> list[str]:
        return list(app.query_one(LogPanel).shown)

    async def scenario() -> None:
        nonlocal hive
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: hive_cell(app, "local") == "up", what="local up")
            hive.stop()
            await wait_for(
                pilot,
                lambda: any(line.startswith("Cannot follow the log") for line in log_lines()),
                what="the log's failure",
            )
            await wait_for(pilot, lambda: hive_cell(app, "local") == "down", what="down")
            hive = start_hive(tmp_path / "hive", port=port)
            await wait_for(pilot, lambda: hive_cell(app, "local") == "up", what="up again")
            await wait_for(pilot, lambda: log_lines() != [], what="the log again")
            assert not any("Cannot follow" in line for line in log_lines()), log_lines()

    app = RbeeApp(inventory, registry, TuiConfig(refresh_s=0.25))
    try:
        asyncio.run(scenario())
    finally:
        hive.stop()
