"""The dashboard at 80x24 against a real local hive and worker (tiny model): the prompt is
one key away, its keys are hinted while typing, the answer has rows of its own, and a
prompt for the highlighted worker's model goes to that worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static
from textual.widgets._footer import FooterKey

from support.dashboard import hive_cell, wait_for
from support.hive_process import start_hive
from support.inventories import local_node, write_inventory

from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.tui.app import RbeeApp
from rbee.tui.settings import TuiConfig

TERMINAL = (80, 24)


@pytest.fixture
def one_hive(tmp_path: Path) -> Iterator[Inventory]:
    hive = start_hive(tmp_path / "hive", "--idle-timeout-s", "600")
    port = int(hive.url.rsplit(":", 1)[1])
    yield write_inventory(tmp_path / "inventory.toml", local_node("local", port, hive.state_dir))
    hive.stop()


async def ask(pilot: Pilot[None], app: RbeeApp) -> str:
    """A prompt from the prompt field, until its answer is complete."""
    app.query_one("#prompt", Input).value = "Once upon a time"
    await pilot.press("enter")
    panel = app.stream_panel
    await wait_for(
        pilot,
        lambda: panel.stream is None and panel.answer != "",
        timeout_s=120,
        what="the streamed answer",
    )
    return panel.answer


def test_an_answer_at_80x24_and_the_highlighted_worker_takes_the_next_prompt(
    one_hive: Inventory, registry: WorkerRegistry, deep_tiny_model: Path
) -> None:
    async def scenario() -> None:
        async with app.run_test(size=TERMINAL) as pilot:
            await wait_for(pilot, lambda: hive_cell(app, "local") == "up", what="local up")
            await pilot.press("p")  # one key from the tables to the prompt
            assert app.focused is app.query_one("#prompt", Input)
            hints = {str(key.description) for key in app.query(FooterKey)}
            assert {"cancel", "leave prompt"} <= hints, hints
            app.query_one("#stream-model", Input).value = f"file:{deep_tiny_model}"
            answer = await ask(pilot, app)
            box = app.stream_panel.query_one("#stream-answer-box")
            assert box.region.height >= 2, box.region  # rows of its own, on the screen
            assert box.region.bottom <= TERMINAL[1]
            text = app.stream_panel.query_one("#stream-answer", Static)
            seen, _ = app.screen.get_widget_at(box.region.x + 2, box.region.y)
            assert seen is text and str(text.render()) == answer  # on the screen, in full

            # The worker that answered, highlighted, takes the next prompt.
            await wait_for(pilot, lambda: app.workers_table.row_count == 1, what="its row")
            [worker] = registry.list()
            app.workers_table.focus()
            app.workers_table.move_cursor(row=0)
            await pilot.press("p")
            await ask(pilot, app)
            assert [w.worker_id for w in registry.list()] == [worker.worker_id]

    app = RbeeApp(one_hive, registry, TuiConfig(refresh_s=0.5, max_tokens=24))
    asyncio.run(scenario())
