"""ClusterView's rules on probes that overlap (the background loop, a start's check and a
hive's bring-up may probe one node at once), with probes whose answers the test holds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from support.inventories import local_node, write_inventory

from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.probe_schedule import FULL_PROBE_EVERY
from rbee.control.keeper.status import HiveState, NodeStatus
from rbee.control.queen.cluster_view import ClusterView


class HeldProbes:
    """Stands in for the keeper's probe: each probe waits until the test answers it."""

    def __init__(self, nodes: list[Node]) -> None:
        self.pending: list[asyncio.Future[NodeStatus]] = []
        self.nodes = nodes

    async def probe(self, node: Node) -> NodeStatus:
        answer: asyncio.Future[NodeStatus] = asyncio.get_running_loop().create_future()
        self.pending.append(answer)
        return await answer


def status(state: HiveState) -> NodeStatus:
    return NodeStatus("alpha", "127.0.0.1", state, "0.1.0", ())


def test_an_older_probe_that_lands_last_does_not_overwrite_a_newer_one(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "inventory.toml", local_node("alpha", 1, tmp_path))
    node = inventory.get("alpha")
    probes = HeldProbes([node])
    view = ClusterView(cast(Keeper, probes), refresh_s=60)

    async def scenario() -> None:
        older = asyncio.ensure_future(view.refresh(node))
        await asyncio.sleep(0)
        newer = asyncio.ensure_future(view.refresh(node))
        await asyncio.sleep(0)
        first, second = probes.pending
        second.set_result(status(HiveState.UP))
        await newer
        first.set_result(status(HiveState.UNREACHABLE))
        assert (await older).state is HiveState.UP
        assert view.statuses["alpha"].state is HiveState.UP

    asyncio.run(scenario())


class CountedProbes:
    """Stands in for the keeper's probe: answers at once that the node is up, and keeps
    whether each probe was a full one (no `known` status) or asked for the workers alone."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.full: list[bool] = []

    async def probe(self, node: Node, known: NodeStatus | None = None) -> NodeStatus:
        self.full.append(known is None)
        return status(HiveState.UP)


def test_the_background_probes_follow_the_dashboards_schedule(tmp_path: Path) -> None:
    """An up node is asked for everything first, then for its workers alone, with a full
    probe every FULL_PROBE_EVERY; its workers standing still, less often."""
    inventory = write_inventory(tmp_path / "inventory.toml", local_node("alpha", 1, tmp_path))
    probes = CountedProbes([inventory.get("alpha")])
    view = ClusterView(cast(Keeper, probes), refresh_s=0.02)

    async def scenario() -> None:
        view.start()
        await asyncio.sleep(1.0)
        await view.aclose()

    asyncio.run(scenario())
    assert probes.full[: FULL_PROBE_EVERY + 1] == [True] + [False] * (FULL_PROBE_EVERY - 1) + [True]
    assert view.statuses["alpha"].is_up
