"""The dashboard's queen panel, driven by Textual's Pilot, against a real `rbee queen`
process in front of a real local hive: none running, then one with a request waiting in its
queue and requests routed to the node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from textual.widgets import Input, Label, Static

from support.queen_cluster import queen_cluster
from support.queen_process import start_queen
from test_tui_app import SIZE, wait_for

from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.tui.app import RbeeApp
from rbee.tui.queen_panel import MODEL_WIDTH, QueenPanel
from rbee.tui.settings import TuiConfig


async def long_stream(queen_url: str, request_id: str, started: asyncio.Event) -> None:
    """A long answer from `deep` through the queen, until it is canceled."""
    body = {"model": "deep", "prompt": "Once", "max_tokens": 8192, "request_id": request_id}
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream("POST", f"{queen_url}/v1/inference", json=body) as answer,
    ):
        async for line in answer.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["type"] == "token":
                started.set()


def test_the_panel_shows_the_queen_its_queue_and_its_routes(
    tmp_path: Path,
    deep_tiny_model: Path,
    registry: WorkerRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with queen_cluster(tmp_path, {"deep": deep_tiny_model}) as cluster:
        monkeypatch.setenv("RBEE_HOME", str(cluster.home))

        async def scenario() -> None:
            # `deep` is slow on purpose: a short answer
            config = TuiConfig(refresh_s=0.3, max_tokens=8)
            app = RbeeApp(cluster.inventory, registry, config)
            async with app.run_test(size=SIZE) as pilot:
                panel = app.query_one(QueenPanel)
                await wait_for(pilot, lambda: panel.checked, what="the queen panel's answer")
                assert panel.text.startswith("no queen running: start one with `rbee queen")

                queen = start_queen(cluster.inventory.path, cluster.home)
                try:
                    await wait_for(
                        pilot, lambda: panel.text.startswith(queen.url), what="the queen"
                    )
                    # One request holds deep's one slot, a second waits in its queue.
                    first, second = asyncio.Event(), asyncio.Event()
                    streams = [
                        asyncio.create_task(long_stream(queen.url, "req-a", first)),
                    ]
                    await wait_for(pilot, first.is_set, 60, "the first request's tokens")
                    await wait_for(
                        pilot,
                        lambda: "queued  none\nrouted  local 1" in panel.text,
                        what="the first request routed, none waiting",
                    )
                    streams.append(asyncio.create_task(long_stream(queen.url, "req-b", second)))
                    model = f"file:{deep_tiny_model}"
                    waiting = (
                        f"queued  {model[: MODEL_WIDTH - 1]}… 1"
                        if len(model) > MODEL_WIDTH
                        else f"queued  {model} 1"
                    )
                    await wait_for(
                        pilot,
                        lambda: f"{waiting}\nrouted  local 1" in panel.text,
                        what="the second request waiting in the queue line",
                    )
                    async with httpx.AsyncClient() as http:  # the waiting one first: never routed
                        for request_id in ("req-b", "req-a"):
                            await http.delete(f"{queen.url}/v1/inference/{request_id}")
                    await asyncio.wait_for(asyncio.gather(*streams), 30)
                    await wait_for(
                        pilot, lambda: "queued  none" in panel.text, what="the queue emptied"
                    )
                    assert "routed  local 1" in panel.text

                    # A prompt from the stream panel, through the queen (g), by model name.
                    await pilot.press("g")
                    assert app.query_one("#stream-node", Label).content == "via queen"
                    app.query_one("#stream-model", Input).value = "deep"
                    prompt = app.query_one("#prompt", Input)
                    prompt.value = "Once upon"
                    prompt.focus()
                    await pilot.press("enter")
                    stats = app.query_one("#stream-stats", Static)
                    await wait_for(
                        pilot, lambda: str(stats.content).endswith("done"), 60, "the answer"
                    )
                    assert app.stream_panel.answer
                    await wait_for(
                        pilot, lambda: "routed  local 2" in panel.text, what="a second route"
                    )
                finally:
                    queen.stop()
                await wait_for(
                    pilot, lambda: panel.text.startswith("no queen running"), what="no queen"
                )

        asyncio.run(scenario())
