"""The keeper's read-and-act commands on nodes: nodes, workers, models, logs.

The data and the actions come from the Keeper (keeper.py, shared with the dashboard and the
queen); this prints them."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import time
from urllib.parse import urlsplit

import httpx
from rich.table import Table

from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.hive_api import WorkerRow
from rbee.dataplane.protocol.states import SERVING_STATES
from rbee.dataplane.protocol.wire import ErrorCode
from rbee.dataplane.protocol.worker_api import WorkerHealth
from rbee.dataplane.protocol.worker_client import WorkerClient

from .console import Console
from .infer import EXIT_INTERRUPTED
from .inventory_errors import InventoryError
from .keeper import Keeper
from .node import Node
from .node_access import NodeAccess
from .probe import WORKER_PROBE_TIMEOUT_S
from .runner import RunnerError
from .status import gigabytes
from .words import ActionableError
from .worker_registry import RegisteredWorker

HIVE_LIST_TIMEOUT_S = 5.0  # `workers list`: how long each node's hive has to list its workers
# Why a worker's state is unknown, in `rbee workers list`.
NOT_ANSWERING = "unknown (node not answering)"
AUTH_FAILED = "unknown (auth failed)"
UNREACHABLE = "unknown (node unreachable)"
HIVE_ERROR = "unknown (hive error)"


async def nodes_table(keeper: Keeper, console: Console) -> int:
    statuses = await keeper.probe_all()
    table = Table("node", "host", "hive", "version", "workers", "models", "free RAM", "problem")
    for status in statuses:
        up = status.is_up
        table.add_row(
            status.name,
            status.host,
            str(status.state),
            status.version or "-",
            str(len(status.workers)) if up else "-",
            str(len(status.models)) if up else "-",
            gigabytes(status.ram_available_mb),
            status.problem or "",
        )
    console.table(table)
    return 0


async def workers_list(keeper: Keeper, console: Console, output: str = "table") -> int:
    rows = await reconciled(keeper)
    if output == "json":
        console.line(json.dumps([_as_json(w, state) for w, state in rows], indent=2))
        return 0
    if not rows:
        console.line("No workers registered")
        return 0
    table = Table("worker", "node", "model", "state", "url", "last health check")
    for w, state in rows:
        checked = (
            f"{time.time() - w.last_health_check:.0f} s ago" if w.last_health_check else "never"
        )
        table.add_row(w.worker_id, w.node, w.model_ref, state, w.url, checked)
    console.table(table)
    return 0


async def reconciled(keeper: Keeper) -> list[tuple[RegisteredWorker, str]]:
    """The registry's workers, each with the state its hive reports now.

    Each node's hive is asked once, all at once, for at most HIVE_LIST_TIMEOUT_S. A worker
    whose hive answers without it (idle timeout, crash, the hive restarted) or is down leaves
    the registry; a worker whose node does not answer (or refuses our key) keeps its row with
    an unknown state and why, never the last one seen, which may be long gone."""
    registry = keeper.registry
    workers = registry.list()
    names = sorted({w.node for w in workers})
    views = dict(
        zip(names, await asyncio.gather(*(_hive_view(keeper, n) for n in names)), strict=True)
    )
    rows = []
    for w in workers:
        view = views[w.node]
        if isinstance(view, str):
            rows.append((w, view))
        elif w.worker_id not in view:
            registry.remove(w.worker_id)
        else:
            registry.set_state(w.worker_id, view[w.worker_id])
            rows.append((w, view[w.worker_id]))
    return rows


async def _hive_view(keeper: Keeper, name: str) -> dict[str, str] | str:
    """worker id → state as the node's hive lists them, or why the state is unknown. A hive
    that refuses connections is down, and its workers died with it (parent_watch.py): none."""
    node = keeper.inventory.nodes.get(name)
    if node is None:
        return "unknown (node not in the inventory)"
    try:
        async with (
            asyncio.timeout(HIVE_LIST_TIMEOUT_S),
            keeper.access(node).hive(HIVE_LIST_TIMEOUT_S) as hive,
        ):
            listed = await hive.workers()
    except (TimeoutError, httpx.TimeoutException):
        return NOT_ANSWERING
    except httpx.TransportError:
        return {}
    except RemoteError as exc:
        return AUTH_FAILED if exc.code == ErrorCode.INVALID_API_KEY else HIVE_ERROR
    except (RunnerError, InventoryError):
        return UNREACHABLE
    return {w.worker_id: str(w.state) for w in listed}


def _as_json(worker: RegisteredWorker, state: str) -> dict[str, object]:
    """A row for scripts: no key (the registry holds it; scripts that need one ask the hive)."""

    def iso(ts: float | None) -> str | None:
        return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

    return {
        "worker_id": worker.worker_id,
        "node": worker.node,
        "model_ref": worker.model_ref,
        "state": state,
        "url": worker.url,
        "backend": worker.backend,
        "device": worker.device,
        "created_at": iso(worker.created_at),
        "last_health_check": iso(worker.last_health_check),
    }


async def workers_health(keeper: Keeper, node: Node, console: Console) -> int:
    """Each worker the node's hive lists, asked its own /health now (the hive's view may be a
    health interval old)."""
    listed = await keeper.workers(node)
    if not listed:
        console.line(f"No workers on {node.name}")
        return 0
    access = keeper.access(node)
    answers = await asyncio.gather(*(_live_health(access, w) for w in listed))
    for w, health in zip(listed, answers, strict=True):
        worker_id = w.worker_id
        if health is None:
            console.line(f"✗ {worker_id} - not answering (its hive last saw it {w.state})")
            continue
        state = str(health.state)
        ready = state in SERVING_STATES
        console.line(f"{'✓' if ready else '✗'} {worker_id} - {state} (ready: {str(ready).lower()})")
        if ready and keeper.registry.get(worker_id):
            keeper.registry.mark_healthy(worker_id, state)
    return 0


async def _live_health(access: NodeAccess, listed: WorkerRow) -> WorkerHealth | None:
    """The worker's own /health, or None when it does not answer in time (or another process
    answers at its address)."""
    if not listed.url:
        return None
    try:
        async with asyncio.timeout(WORKER_PROBE_TIMEOUT_S):
            url = await access.worker_url(listed.url)
            async with WorkerClient(url, timeout_s=WORKER_PROBE_TIMEOUT_S) as worker:
                health = await worker.health()
    except (TimeoutError, httpx.HTTPError, RemoteError, RunnerError, OSError, ValueError):
        return None
    return health if health.worker_id == listed.worker_id else None


async def workers_env(keeper: Keeper, worker_id: str, console: Console) -> int:
    """`export` lines for an OpenAI client of one worker this keeper started: its URL and its
    own key. A worker on another node's loopback is not reachable from here: stderr says so
    and how to reach it (a forward, whose port the lines name, or the queen)."""
    worker = keeper.registry.get(worker_id)
    if worker is None:
        raise ActionableError(
            f"{worker_id} is not in this keeper's registry",
            suggestion="rbee workers list shows the workers this keeper started",
        )
    try:
        node = keeper.inventory.get(worker.node)
    except InventoryError as exc:
        raise ActionableError(f"{worker_id}: {exc}") from None
    view = await _hive_view(keeper, node.name)
    if isinstance(view, str):
        console.status(f"Could not check that {worker_id} still runs: {view}")
    elif worker_id not in view:
        keeper.registry.remove(worker_id)
        raise ActionableError(
            f"{worker_id} no longer runs on {node.name} (its hive does not list it)",
            suggestion=f"start one with rbee infer --node {node.name} --model "
            f"{worker.model_ref} PROMPT, then ask again with its id",
        )
    if node.direct:
        url = await keeper.access(node).worker_url(worker.url)
    else:
        where = urlsplit(worker.url)
        port = where.port or 80
        url = f"http://127.0.0.1:{port}"
        queen = keeper.queen()
        console.status(
            f"{worker_id} listens on {node.name}'s loopback only: out of reach from here.\n"
            "These lines work while this SSH forward runs:\n"
            f"  {node.forward_command(where.hostname or '127.0.0.1', port)}\n"
            + (
                f"Or go through the queen at {queen.url}, which reaches every node;\n"
                if queen
                else "Or go through the queen, which reaches every node (rbee queen start\n"
                "prints its URL);"
            )
            + " clients send the queen's key then, not this one."
        )
    console.line(f"# {worker_id} on {node.name} serves {worker.model_ref} (send it as model)")
    console.line(f"export OPENAI_BASE_URL={shlex.quote(url + '/v1')}")
    console.line(f"export OPENAI_API_KEY={shlex.quote(worker.api_key)}")
    return 0


async def workers_shutdown(keeper: Keeper, node: Node, worker_id: str, console: Console) -> int:
    state = await keeper.shutdown_worker(node, worker_id)
    console.status(f"{worker_id} on {node.name}: {state}")
    return 0


async def models_list(keeper: Keeper, node: Node, console: Console) -> int:
    models = await keeper.models(node)
    if not models:
        console.line(f"No models on {node.name}")
        return 0
    table = Table("model", "size", "downloaded", "path")
    for m in models:
        table.add_row(m.reference, f"{m.size_bytes / 1e6:.1f} MB", m.downloaded_at, m.local_path)
    console.table(table)
    return 0


async def models_download(keeper: Keeper, node: Node, model_ref: str, console: Console) -> int:
    path = await keeper.download_model(node, model_ref, console)
    console.status(f"{model_ref} is on {node.name}: {path}")
    return 0


async def logs(keeper: Keeper, node: Node, follow: bool, console: Console) -> int:
    if not follow:
        for line in await keeper.logs(node):
            console.line(str(line))
        return 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    task = asyncio.ensure_future(keeper.follow_logs(node, lambda line: console.line(str(line))))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises what went wrong
        return 0
    task.cancel()
    return EXIT_INTERRUPTED
