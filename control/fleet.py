"""The keeper's read-and-act commands on nodes: nodes, workers, models, logs."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from rich.table import Table

from rbee.dataplane.protocol import VERSION

from .api_client import RemoteError
from .console import ActionableError, Console
from .hive_client import HiveClient, provision
from .inventory import Inventory, Node
from .node_access import open_node
from .runner import RunnerError
from .worker_registry import WorkerRegistry

T = TypeVar("T")
NODE_PROBE_TIMEOUT_S = 5.0
EXIT_INTERRUPTED = 130


async def with_hive(node: Node, call: Callable[[HiveClient], Awaitable[T]]) -> T:
    """Runs `call` against the node's hive, turning what can go wrong into words."""
    try:
        async with open_node(node) as access:
            url = await access.hive_url()
            async with HiveClient(url, access.hive_key, timeout_s=NODE_PROBE_TIMEOUT_S) as hive:
                return await call(hive)
    except httpx.TransportError:
        raise ActionableError(f"Cannot connect to the hive on {node.name}",
                              suggestion=f"is the hive running? try `rbee ssh-up {node.name}`"
                              ) from None
    except RemoteError as exc:
        if exc.code == "INVALID_API_KEY":
            raise ActionableError("Authentication failed", f"Invalid API key for {node.name}",
                                  suggestion=f"check {node.api_key_source or 'the node key'}"
                                  ) from None
        raise ActionableError(exc.message) from None
    except RunnerError as exc:
        raise ActionableError(str(exc)) from None


async def nodes_table(inventory: Inventory, console: Console) -> int:
    async def probe(node: Node) -> list[str]:
        async def facts(hive: HiveClient) -> list[str]:
            health = await hive.health()
            workers, models = await asyncio.gather(hive.workers(), hive.models())
            state = "up" if health["version"] == VERSION else "version mismatch"
            return [state, health["version"], str(len(workers)), str(len(models))]

        try:
            return await with_hive(node, facts)
        except ActionableError as exc:
            return ["unreachable", "-", "-", exc.message]

    rows = await asyncio.gather(*(probe(n) for n in inventory.nodes.values()))
    table = Table("node", "host", "hive", "version", "workers", "models")
    for node, row in zip(inventory.nodes.values(), rows, strict=True):
        table.add_row(node.name, "local" if node.is_local else node.host, *row)
    console.table(table)
    return 0


def workers_list(registry: WorkerRegistry, console: Console) -> int:
    workers = registry.list()
    if not workers:
        console.line("No workers registered")
        return 0
    table = Table("worker", "node", "model", "state", "url", "last health check")
    for w in workers:
        checked = (f"{time.time() - w.last_health_check:.0f} s ago" if w.last_health_check
                   else "never")
        table.add_row(w.worker_id, w.node, w.model_ref, w.state, w.url, checked)
    console.table(table)
    return 0


async def workers_health(node: Node, registry: WorkerRegistry, console: Console) -> int:
    workers = await with_hive(node, lambda hive: hive.workers())
    if not workers:
        console.line(f"No workers on {node.name}")
    for w in workers:
        ready = w["state"] in ("idle", "busy")
        mark = "✓" if ready else "✗"
        console.line(f"{mark} {w['worker_id']} - {w['state']} (ready: {str(ready).lower()})")
        if ready and registry.get(w["worker_id"]):
            registry.mark_healthy(w["worker_id"], w["state"])
    return 0


async def workers_shutdown(node: Node, worker_id: str, registry: WorkerRegistry,
                           console: Console) -> int:
    result = await with_hive(node, lambda hive: hive.shutdown_worker(worker_id))
    registry.remove(worker_id)
    console.status(f"{worker_id} on {node.name}: {result['state']}")
    return 0


async def models_list(node: Node, console: Console) -> int:
    models: list[dict[str, Any]] = await with_hive(node, lambda hive: hive.models())
    if not models:
        console.line(f"No models on {node.name}")
        return 0
    table = Table("model", "size", "downloaded", "path")
    for m in models:
        table.add_row(m["reference"], f"{m['size_bytes'] / 1e6:.1f} MB", m["downloaded_at"],
                      m["local_path"])
    console.table(table)
    return 0


async def models_download(node: Node, model_ref: str, console: Console) -> int:
    path = await with_hive(node, lambda hive: provision(hive, model_ref, console))
    console.status(f"{model_ref} is on {node.name}: {path}")
    return 0


async def logs(node: Node, follow: bool, console: Console) -> int:
    def show(line: dict[str, Any]) -> None:
        console.line(f"{line['ts']} {line['level']:<7} {line['logger']}: {line['message']}")

    if not follow:
        for line in await with_hive(node, lambda hive: hive.logs()):
            show(line)
        return 0

    async def follow_lines(hive: HiveClient) -> None:
        async for line in hive.follow_logs():
            show(line)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    task = asyncio.ensure_future(with_hive(node, follow_lines))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises what went wrong
        return 0
    task.cancel()
    return EXIT_INTERRUPTED
