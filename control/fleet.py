"""The keeper's read-and-act commands on nodes: nodes, workers, models, logs.

The data and the actions live in cluster.py (shared with the dashboard); this prints them."""

from __future__ import annotations

import asyncio
import signal
import time

from rich.table import Table

from . import cluster
from .console import Console
from .hive_client import show_download
from .inventory import Inventory, Node
from .worker_registry import WorkerRegistry

EXIT_INTERRUPTED = 130


async def nodes_table(inventory: Inventory, console: Console) -> int:
    statuses = await cluster.probe_nodes(list(inventory.nodes.values()))
    table = Table("node", "host", "hive", "version", "workers", "models", "free RAM", "problem")
    for status in statuses:
        up = status.is_up
        table.add_row(status.name, status.host, str(status.state), status.version or "-",
                      str(len(status.workers)) if up else "-",
                      str(len(status.models)) if up else "-", cluster.gigabytes(status.ram_available_mb),
                      status.problem or "")
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
    workers = await cluster.with_hive(node, lambda hive: hive.workers())
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
    state = await cluster.shutdown_worker(node, worker_id, registry)
    console.status(f"{worker_id} on {node.name}: {state}")
    return 0


async def models_list(node: Node, console: Console) -> int:
    models = await cluster.list_models(node)
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
    path = await cluster.download_model(node, model_ref, show_download(console))
    console.status(f"{model_ref} is on {node.name}: {path}")
    return 0


async def logs(node: Node, follow: bool, console: Console) -> int:
    if not follow:
        for line in await cluster.recent_logs(node):
            console.line(str(line))
        return 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    task = asyncio.ensure_future(cluster.follow_logs(node, lambda line: console.line(str(line))))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises what went wrong
        return 0
    task.cancel()
    return EXIT_INTERRUPTED
