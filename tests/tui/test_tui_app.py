"""`rbee tui` driven by Textual's Pilot against a real local hive and worker (tiny model), a
real loopback sshd node, and a node whose sshd refuses connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList, Sparkline
from textual.worker import WorkerState

from support.dashboard import all_shown, hive_cell, select_node, wait_for
from support.hive_process import start_hive
from support.inventories import local_node, unreachable_node, write_inventory
from support.model_server import ModelServer
from support.operators import node_table
from support.sshd import start_sshd

from rbee.control.keeper.events import Unheard
from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.words import ActionableError
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.dataplane.protocol.model_refs import DEFAULT_MODEL_REF
from rbee.tui.app import RbeeApp
from rbee.tui.messages import ActionDone, ActionProgress
from rbee.tui.settings import TuiConfig

SIZE = (140, 44)


@pytest.fixture
def cluster_inventory(tmp_path: Path) -> Iterator[Inventory]:
    """local: a running hive; alpha: a real sshd whose hive is not started; gone: refused."""
    hive = start_hive(tmp_path / "hive", "--idle-timeout-s", "600")
    sshd = start_sshd(tmp_path / "sshd", "alpha")
    port = int(hive.url.rsplit(":", 1)[1])
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("local", port, hive.state_dir),
        node_table("alpha", sshd, tmp_path / "alpha-hive"),
        unreachable_node("gone", tmp_path / "known_hosts"),
    )
    yield inventory
    asyncio.run(_quietly_down(inventory))
    sshd.stop()
    hive.stop()


async def _quietly_down(inventory: Inventory) -> None:
    async with Keeper(inventory) as keeper:
        with contextlib.suppress(ActionableError):  # never started, or the test stopped it
            await keeper.hive_down(inventory.get("alpha"), Unheard())


def test_nodes_fill_and_an_unreachable_node_says_why(
    cluster_inventory: Inventory, registry: WorkerRegistry
) -> None:
    async def scenario() -> None:
        app = RbeeApp(cluster_inventory, registry, TuiConfig(refresh_s=0.5))
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: all_shown(app), what="three probes")
            assert hive_cell(app, "local") == "up"
            assert hive_cell(app, "alpha") == "down"
            assert hive_cell(app, "gone") == "unreachable"
            assert str(app.nodes_table.get_cell("local", "free RAM")).endswith(" GB")
            await pilot.click("#nodes", offset=(3, 3))  # alpha's row (border, header, local)
            assert app.nodes_table.selected_node == "alpha"
            assert app.workers_table.border_title == "workers: alpha"
            [all_key] = [k for k in app.query("FooterKey") if getattr(k, "key", "") == "a"]
            await pilot.click(all_key)  # the footer's keys take the mouse too
            assert app.workers_table.border_title == "workers: every node"
            await pilot.press("down")  # onto gone, with the keyboard
            assert app.nodes_table.selected_node == "gone"
            problem = str(app.query_one("#node-problem").content)
            assert "Connection refused by 127.0.0.1:1" in problem and "Suggestion:" in problem
            await wait_for(
                pilot,
                lambda: any(
                    "Cannot follow the log" in line for line in app.query_one("#log").shown
                ),
                what="the log panel's error",
            )
            first = str(app.nodes_table.get_cell("local", "last checked"))
            await wait_for(
                pilot,
                lambda: str(app.nodes_table.get_cell("local", "last checked")) != first,
                what="a live refresh",
            )

    asyncio.run(scenario())


def test_model_output_and_errors_show_as_text_not_markup(
    tmp_path: Path, registry: WorkerRegistry
) -> None:
    inventory = write_inventory(
        tmp_path / "inventory.toml", unreachable_node("gone", tmp_path / "known_hosts")
    )
    answer = "a [bold]b[/bold] [/INST] list[int]"

    async def scenario() -> None:
        app = RbeeApp(inventory, registry, TuiConfig())
        async with app.run_test(size=SIZE) as pilot:
            panel = app.stream_panel
            panel.started()
            panel.add_token(answer, 7, 0.1, 10.0)
            panel.failed("[Errno 111] Connection refused")
            await pilot.pause()
            assert str(panel.query_one("#stream-answer").render()) == answer
            assert str(panel.query_one("#stream-stats").render()).startswith("[Errno 111]")

    asyncio.run(scenario())


def test_ssh_up_by_key_while_the_ui_keeps_answering(
    cluster_inventory: Inventory, registry: WorkerRegistry
) -> None:
    outcomes: dict[str, str] = {}

    def keep(message: object) -> None:
        if isinstance(message, ActionDone):
            outcomes[message.node] = message.text

    async def scenario() -> None:
        app = RbeeApp(cluster_inventory, registry, TuiConfig())
        async with app.run_test(size=SIZE, message_hook=keep) as pilot:
            await wait_for(pilot, lambda: hive_cell(app, "alpha") == "down", what="alpha down")
            select_node(app, "local")
            await pilot.press("space")  # marks local; then alpha, with the keyboard
            await pilot.press("down", "space", "u")
            assert app.nodes_table.marked == {"local", "alpha"}
            assert str(app.nodes_table.get_cell("alpha", "node")) == "● alpha"
            ssh_ups = [w for w in app.workers if w.group == "actions"]
            # alpha's at least: local's hive answers at once, so its ssh-up may be done
            assert any("name='alpha'" in w.description for w in ssh_ups)
            # The activity bar gives each node a line of its own: its latest step…
            await wait_for(pilot, lambda: len(app.activity.lines) == 2, what="a line per node")
            assert [line.text.split(":")[0] for line in app.activity.lines.values()] == [
                "local",
                "alpha",
            ]
            # While the ssh-ups are in flight, the prompt takes typing: each key is handled
            # (the value grows) while an ssh-up worker is still running.
            prompt = app.query_one("#prompt", Input)
            prompt.focus()
            handled_in_flight = 0
            for key in "hello":
                await pilot.press(key)
                in_flight = any(w.state is WorkerState.RUNNING for w in ssh_ups)
                if in_flight and prompt.value.endswith(key):
                    handled_in_flight += 1
            assert prompt.value == "hello"
            assert handled_in_flight > 0, f"ssh-up ended first: {app.activity.text}"
            await wait_for(pilot, lambda: len(outcomes) == 2, what="both ssh-ups' outcomes")
            assert "rbee-hive 0.1.0 up" in outcomes["alpha"]
            assert "already running" in outcomes["local"]
            # …then its outcome.
            local_line, alpha_line = app.activity.lines.values()
            assert (local_line.text, alpha_line.text) == (outcomes["local"], outcomes["alpha"])
            assert local_line.kind == alpha_line.kind == "done"
            assert not app.activity.running
            await wait_for(pilot, lambda: hive_cell(app, "alpha") == "up", what="alpha up")

            app.nodes_table.focus()
            select_node(app, "local")
            await pilot.press("space")  # unmarked: ssh-down stops alpha alone
            await pilot.press("d", "y")  # the confirmation
            await wait_for(
                pilot, lambda: "rbee-hive stopped" in app.activity.text, what="ssh-down's outcome"
            )
            assert len(app.activity.lines) == 1  # a new round: the ssh-ups' lines went
            await wait_for(pilot, lambda: hive_cell(app, "alpha") == "down", what="alpha down")
            assert hive_cell(app, "local") == "up"

    asyncio.run(scenario())


def test_spawn_stream_and_stop_a_worker(
    cluster_inventory: Inventory, registry: WorkerRegistry, deep_tiny_model: Path
) -> None:
    ref = f"file:{deep_tiny_model}"

    async def scenario() -> None:
        app = RbeeApp(cluster_inventory, registry, TuiConfig())
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: hive_cell(app, "local") == "up", what="local up")
            select_node(app, "local")
            await pilot.press("s")  # the model picker
            picker = app.screen.query_one("#model-ref", Input)
            assert picker.value == DEFAULT_MODEL_REF
            picker.value = ref
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda: (
                    app.workers_table.row_count == 1
                    and str(app.workers_table.get_row_at(0)[2]) == "idle"
                ),
                what="an idle worker row",
            )
            worker = app.workers_table.selected
            assert worker is not None and worker.node == "local"
            worker_id = worker.worker_id
            assert registry.get(worker_id) is not None
            detail = str(app.query_one("#worker-detail").content)
            assert ref in detail and worker.url in detail  # in full, under the table

            app.workers_table.focus()
            app.workers_table.move_cursor(row=0)
            await pilot.pause()
            assert app.query_one("#stream-model", Input).value == ref
            app.query_one("#prompt", Input).focus()
            app.query_one("#prompt", Input).value = "Once upon a time"
            await pilot.press("enter")
            panel = app.stream_panel
            await wait_for(
                pilot,
                lambda: panel.stream is None and panel.answer != "",
                what="the streamed answer",
            )
            stats = str(panel.query_one("#stream-stats").content)
            assert "TTFT" in stats and "tok/s" in stats and stats.endswith("done"), stats
            assert len(panel.query_one(Sparkline).data or []) == 1

            # A long answer, canceled with `c` once tokens flow.
            panel.max_tokens = 8000
            app.query_one("#prompt", Input).focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: panel.answer != "", what="the long answer's first tokens")
            assert panel.stream is not None, "the long answer ended before it could be canceled"
            box = panel.query_one("#stream-answer-box")
            await wait_for(
                pilot,
                lambda: 0 < box.max_scroll_y == box.scroll_y,
                what="the panel following the answer past its height",
            )
            await pilot.press("escape", "c")
            await wait_for(pilot, lambda: panel.stream is None, what="the cancel", timeout_s=10)
            assert str(panel.query_one("#stream-stats").content).startswith("Canceled")
            assert len(panel.query_one(Sparkline).data or []) == 1  # only answers count

            app.workers_table.focus()
            await pilot.press("x")
            await pilot.press("y")
            await wait_for(
                pilot, lambda: app.workers_table.row_count == 0, what="the worker row to go"
            )
            assert f"{worker_id} stopped" in app.activity.text
            assert registry.get(worker_id) is None

    asyncio.run(scenario())


def test_spawn_a_model_picked_from_the_catalog(
    cluster_inventory: Inventory, registry: WorkerRegistry, tiny_model: Path
) -> None:
    ref = f"file:{tiny_model}"

    async def scenario() -> None:
        async with Keeper(cluster_inventory, registry) as keeper:
            await keeper.download_model(cluster_inventory.get("local"), ref, Unheard())
        app = RbeeApp(cluster_inventory, registry, TuiConfig())
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "local" in app.statuses, what="local probed")
            assert ref in app.statuses["local"].models
            select_node(app, "local")
            await pilot.press("s", "tab")  # the picker, then from its input to the catalog
            catalog = app.screen.query_one("#catalog", OptionList)
            assert catalog.has_focus
            prompts = [
                str(catalog.get_option_at_index(i).prompt) for i in range(catalog.option_count)
            ]
            for _ in prompts:  # down the list to the model, as a person would
                if catalog.highlighted == prompts.index(ref):
                    break
                await pilot.press("down")
            assert catalog.highlighted == prompts.index(ref), prompts
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda: (
                    app.workers_table.row_count == 1
                    and str(app.workers_table.get_row_at(0)[2]) == "idle"
                ),
                what="an idle worker row",
            )
            worker = app.workers_table.selected
            assert worker is not None and worker.model_ref == ref
            assert f"{worker.worker_id} started for {ref}" in app.activity.text

    asyncio.run(scenario())


def test_download_shows_its_progress(
    cluster_inventory: Inventory, registry: WorkerRegistry, tiny_model: Path
) -> None:
    data = tiny_model.read_bytes()
    seen: list[ActionProgress] = []

    def keep(message: object) -> None:
        if isinstance(message, ActionProgress) and message.fraction is not None:
            seen.append(message)

    async def scenario(url: str) -> None:
        app = RbeeApp(cluster_inventory, registry, TuiConfig())
        async with app.run_test(size=SIZE, message_hook=keep) as pilot:
            await wait_for(pilot, lambda: hive_cell(app, "local") == "up", what="local up")
            select_node(app, "local")
            await pilot.press("m")
            app.screen.query_one("#model-ref", Input).value = url
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda: "is in the catalog" in app.activity.text,
                what="the download's outcome",
            )
            assert seen and "MB @" in seen[-1].text
            await wait_for(
                pilot,
                lambda: url in app.statuses["local"].models,
                what="the model in the node's catalog",
            )

    with ModelServer() as internet:  # throttled: the download takes about a second
        asyncio.run(scenario(internet.add("/m/tiny.gguf", data, bytes_per_s=len(data))))
