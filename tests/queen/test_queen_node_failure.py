"""A node switched off while it serves: two nodes (this machine's hive and an sshd node's)
each hold a warm worker of one model; the sshd node's sshd and hive are killed, its
workers too, as a machine that loses power. Requests go on to the other node, and
/v1/cluster says the node is down within a quiet node's probe interval and a probe's
deadline."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from support.hive_process import start_hive
from support.inventories import local_node
from support.operators import node_table
from support.queen_process import sdk, start_queen, wait_until_it_sees
from support.sshd import start_sshd

from rbee.control.hive.settings import HiveSettings
from rbee.control.keeper.events import Unheard
from rbee.control.keeper.inventory import load_inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.probe import probe_deadline_s
from rbee.control.keeper.probe_schedule import QUIET_FACTOR
from rbee.control.keeper.settings import DEFAULT_REFRESH_S
from rbee.control.keeper.worker_registry import WorkerRegistry


def switch_off(processes: list[psutil.Process]) -> None:
    """SIGKILL to each process and all its children at once: nothing gets to say goodbye."""
    doomed = [c for p in processes for c in p.children(recursive=True)] + processes
    for process in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(doomed, timeout=5)


def test_a_node_switched_off_is_skipped_and_shown_down(tmp_path: Path, tiny_model: Path) -> None:
    sshd = start_sshd(tmp_path / "sshd", "alpha")
    hive = start_hive(tmp_path / "local-hive", "--idle-timeout-s", "600")
    inventory_path = tmp_path / "inventory.toml"
    alpha_state = tmp_path / "alpha-hive"
    inventory_path.write_text(
        local_node("local", int(hive.url.rsplit(":", 1)[1]), hive.state_dir)
        + node_table("alpha", sshd, alpha_state)
        + f'\n[models.tiny]\nref = "file:{tiny_model}"\n'
    )
    inventory = load_inventory(inventory_path)
    home = tmp_path / "home"
    registry = WorkerRegistry(home / "workers.db")

    async def start_workers() -> None:
        """A warm worker on each node, both nodes at once (alpha's hive started first)."""
        async with Keeper(inventory, registry) as keeper:

            async def warm(node: Node) -> None:
                if node.name == "alpha":
                    await keeper.hive_up(node, Unheard())
                worker_id = await keeper.spawn_worker(node, f"file:{tiny_model}", Unheard())
                await keeper.wait_worker_ready(node, worker_id, Unheard(), timeout_s=60)

            await asyncio.gather(*(warm(node) for node in keeper.nodes))

    async def alpha_down() -> None:
        async with Keeper(inventory, registry) as keeper:
            await keeper.hive_down(inventory.get("alpha"), Unheard())

    queen = None
    switched_off = False
    try:
        asyncio.run(start_workers())
        queen = start_queen(inventory_path, home)
        wait_until_it_sees(queen, workers=2)
        client = sdk(queen)

        def served_by(n: int) -> str:
            raw = client.completions.with_raw_response.create(
                model="tiny", prompt=f"Story {n}: once upon a time", max_tokens=16
            )
            assert raw.parse().usage is not None
            return raw.headers["x-rbee-node"]

        def four_at_once() -> set[str]:
            """Which nodes served four requests sent at once (one slot per worker)."""
            with ThreadPoolExecutor(4) as pool:
                return set(pool.map(served_by, range(4)))

        assert four_at_once() == {"alpha", "local"}

        alpha_hive = HiveSettings(state_dir=alpha_state).pid_file.check().process
        assert sshd.proc is not None and alpha_hive is not None
        switch_off([psutil.Process(sshd.proc.pid), alpha_hive])
        switched_off = True
        off = time.monotonic()

        assert four_at_once() == {"local"}
        limit = DEFAULT_REFRESH_S * QUIET_FACTOR + probe_deadline_s(inventory.get("alpha"))
        while True:
            seen = httpx.get(f"{queen.url}/v1/cluster").json()
            [alpha] = [n for n in seen["nodes"] if n["name"] == "alpha"]
            if alpha["state"] != "up":
                break
            assert time.monotonic() - off < limit + 1, f"alpha still up after {limit:g} s"
            time.sleep(0.1)
        assert [w["node"] for w in seen["workers"]] == ["local"]
        assert alpha["problem"]
    finally:
        if queen is not None:
            queen.stop()
        if not switched_off:
            asyncio.run(alpha_down())
        registry.close()
        sshd.stop()
        hive.stop()
