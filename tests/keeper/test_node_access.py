"""NodeAccess and the Keeper's kept connections: what reaching a node costs and when."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import psutil
import pytest

from support.hive_process import start_hive
from support.inventories import local_node, unreachable_node, write_inventory

from rbee.control.keeper import events
from rbee.control.keeper.events import KeeperEvent
from rbee.control.keeper.infer import EXIT_INTERRUPTED, InferRequest
from rbee.control.keeper.inventory_errors import InventoryError
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node_access import NodeAccess, NodeConnections


def test_the_key_is_read_when_first_needed(tmp_path: Path) -> None:
    """Stopping a hive needs no key: a node whose key variable is unset is still reached,
    and the missing key is named only when a call needs it."""
    node = write_inventory(
        tmp_path / "inventory.toml",
        local_node("local", 1, tmp_path / "s", extra='api_key_env = "RBEE_TEST_ABSENT_KEY"'),
    ).get("local")
    access = NodeAccess(node)
    with pytest.raises(InventoryError, match="RBEE_TEST_ABSENT_KEY"):
        _ = access.hive_key


def test_closed_connections_open_no_more(tmp_path: Path) -> None:
    node = write_inventory(
        tmp_path / "inventory.toml", unreachable_node("gone", tmp_path / "known_hosts")
    ).get("gone")
    connections = NodeConnections()
    connections.access(node)
    asyncio.run(connections.aclose())
    with pytest.raises(RuntimeError, match="closed"):
        connections.access(node)


class Steps:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def heard(self, event: KeeperEvent) -> None:
        if isinstance(event, events.Step):
            self.texts.append(event.text)


def test_a_cancel_while_connecting_ends_at_once(tmp_path: Path) -> None:
    """Ctrl+C while an SSH node's connection is being opened (here: a port that accepts and
    never says a word, so each attempt would wait for the whole connect timeout)."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        f'[nodes.mute]\nhost = "127.0.0.1"\nport = {port}\nknown_hosts = "{known_hosts}"\n'
        "use_ssh_config = false\n",
    )
    steps = Steps()

    async def scenario() -> tuple[int, float]:
        async with Keeper(inventory) as keeper:
            run = keeper.infer(inventory.get("mute"), InferRequest("hi", "pkg:x"), steps)
            running = asyncio.ensure_future(run.run())
            await asyncio.sleep(0.5)
            run.cancel()
            started = time.monotonic()
            code = await asyncio.wait_for(running, 5)
            return code, time.monotonic() - started

    try:
        code, took = asyncio.run(scenario())
    finally:
        silent.close()
    assert code == EXIT_INTERRUPTED and took < 1
    assert steps.texts[0].startswith(f"Attempt 1: Connecting to 127.0.0.1:{port}")
    assert steps.texts[-1] == "Canceled."


def test_probes_reuse_the_nodes_pool_and_hold_no_more_fds(tmp_path: Path) -> None:
    """One connection pool per node for every probe (a pool per probe loaded the CA bundle
    and opened a connection each time), closed with the node's access."""
    hive = start_hive(tmp_path / "hive")
    port = int(hive.url.rsplit(":", 1)[1])
    inventory = write_inventory(
        tmp_path / "inventory.toml", local_node("local", port, hive.state_dir)
    )
    node = inventory.get("local")
    me = psutil.Process()

    async def scenario() -> None:
        async with Keeper(inventory) as keeper:
            known = await keeper.probe(node)
            pool = keeper.access(node).http
            fds = me.num_fds()
            for round_ in range(6):
                full = round_ % 2 == 0  # a full probe, then one that asks for workers alone
                status = await keeper.probe(node, None if full else known)
                assert status.is_up and status.version == known.version
                assert keeper.access(node).http is pool
            assert me.num_fds() <= fds
        assert pool.is_closed

    try:
        asyncio.run(scenario())
    finally:
        hive.stop()
