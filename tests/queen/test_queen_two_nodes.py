"""Eight streams at once through the queen over two nodes (this machine's hive and an sshd
node's), two slots per worker, one worker per node: every request completes, both nodes get
work, the queue drains and nothing leaks."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from support.hive_process import start_hive
from support.inventories import local_node
from support.operators import node_table
from support.queen_process import sdk, start_queen, wait_until_it_sees
from support.sshd import start_sshd

from rbee.control.keeper.events import Unheard
from rbee.control.keeper.inventory import load_inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.worker_registry import WorkerRegistry

STREAMS = 8


def test_eight_streams_over_two_nodes_all_complete_and_leave_no_slot_taken(
    tmp_path: Path, tiny_model: Path
) -> None:
    sshd = start_sshd(tmp_path / "sshd", "alpha")
    hive = start_hive(tmp_path / "local-hive", "--idle-timeout-s", "600")
    inventory_path = tmp_path / "inventory.toml"
    inventory_path.write_text(
        local_node("local", int(hive.url.rsplit(":", 1)[1]), hive.state_dir)
        + node_table("alpha", sshd, tmp_path / "alpha-hive")
        + f'\n[models.tiny]\nref = "file:{tiny_model}"\nslots = 2\n'
    )
    inventory = load_inventory(inventory_path)

    home = tmp_path / "home"
    registry = WorkerRegistry(home / "workers.db")  # the queen's: it holds their keys

    async def start_workers() -> None:
        """alpha's hive up, then one warm 2-slot worker on each node, so that all eight
        requests meet four free slots and a queue (starting on demand is tested apart)."""
        async with Keeper(inventory, registry) as keeper:
            await keeper.hive_up(inventory.get("alpha"), Unheard())
            for node in keeper.nodes:
                worker_id = await keeper.spawn_worker(
                    node, f"file:{tiny_model}", Unheard(), slots=2
                )
                await keeper.wait_worker_ready(node, worker_id, Unheard(), timeout_s=60)

    async def alpha_down() -> None:
        async with Keeper(inventory, registry) as keeper:
            await keeper.hive_down(inventory.get("alpha"), Unheard())

    queen = None
    try:
        asyncio.run(start_workers())
        queen = start_queen(inventory_path, home)
        wait_until_it_sees(queen, workers=2)
        client = sdk(queen)

        def one(n: int) -> tuple[str, int]:
            raw = client.completions.with_raw_response.create(
                model="tiny", prompt=f"Story {n}: once upon a time", max_tokens=200, stream=True
            )
            chunks = [c for c in raw.parse() if c.choices]
            return raw.headers["x-rbee-node"], len(chunks)

        with ThreadPoolExecutor(STREAMS) as pool:
            answers = list(pool.map(one, range(STREAMS)))
        assert all(chunks > 0 for _node, chunks in answers), answers
        assert {node for node, _chunks in answers} == {"local", "alpha"}, answers
        seen = httpx.get(f"{queen.url}/v1/cluster").json()
        assert seen["queued"] == {}
        assert [w["in_flight"] for w in seen["workers"]] == [0, 0]
        assert sorted(w["node"] for w in seen["workers"]) == ["alpha", "local"]
        assert sum(n["routed"] for n in seen["nodes"]) == STREAMS
    finally:
        if queen is not None:
            queen.stop()
        asyncio.run(alpha_down())
        registry.close()
        sshd.stop()
        hive.stop()
