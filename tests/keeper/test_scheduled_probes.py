"""ScheduledProbes: a live view's probes run on their schedule, with probes the test
answers (or never does)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from support.inventories import local_node, write_inventory

from rbee.control.keeper import probe_schedule, scheduled_probes
from rbee.control.keeper.node import Node
from rbee.control.keeper.scheduled_probes import ScheduledProbes
from rbee.control.keeper.status import HiveState, NodeStatus


def alpha(tmp_path: Path) -> Node:
    return write_inventory(tmp_path / "i.toml", local_node("alpha", 1, tmp_path)).get("alpha")


def test_a_stuck_probe_is_given_up_and_its_late_answer_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first probe ignores its cancellation and answers late: the node reads not
    answering, and the late answer is not taken; the next probe's is."""
    monkeypatch.setattr(scheduled_probes, "probe_deadline_s", lambda node: 0.05)
    monkeypatch.setattr(probe_schedule, "STUCK_GRACE_S", 0.05)
    node = alpha(tmp_path)
    landed: list[HiveState] = []
    calls = 0

    async def probe(node: Node, known: NodeStatus | None) -> NodeStatus:
        nonlocal calls
        calls += 1
        if calls == 1:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            return NodeStatus("alpha", "local", HiveState.UP)  # too late
        return NodeStatus("alpha", "local", HiveState.DOWN)

    async def scenario() -> None:
        probes = ScheduledProbes([node], 0.01, probe, lambda s: landed.append(s.state))
        probes.tick()
        await asyncio.sleep(0.2)
        probes.tick()  # stuck: given up, cancelled; it answers UP as it ends
        await asyncio.sleep(0.05)
        probes.tick()  # due again
        await asyncio.sleep(0.05)
        await probes.aclose()

    asyncio.run(scenario())
    assert landed[0] is HiveState.NOT_ANSWERING
    assert HiveState.UP not in landed  # the late answer
    assert landed[1:] and set(landed[1:]) == {HiveState.DOWN}


def test_a_status_its_taker_fails_on_is_logged_and_the_probes_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = alpha(tmp_path)
    taken = 0

    async def probe(node: Node, known: NodeStatus | None) -> NodeStatus:
        return NodeStatus("alpha", "local", HiveState.DOWN)

    def take(status: NodeStatus) -> None:
        nonlocal taken
        taken += 1
        raise RuntimeError("a bug in the view")

    async def scenario() -> None:
        probes = ScheduledProbes([node], 0.01, probe, take)
        for _ in range(3):
            probes.tick()
            await asyncio.sleep(0.03)
        await probes.aclose()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert taken >= 2
    assert "taking the status of alpha failed" in caplog.text
