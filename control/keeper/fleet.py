"""The keeper's read-and-act commands on nodes: nodes, workers, models, logs.

The data and the actions come from the Keeper (keeper.py, shared with the dashboard and the
queen); this prints them."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx
from rich.text import Text

from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.hive_api import ModelEntry, WorkerRow
from rbee.dataplane.protocol.states import SERVING_STATES
from rbee.dataplane.protocol.wire import VERSION, ErrorCode
from rbee.dataplane.protocol.worker_api import WorkerHealth
from rbee.dataplane.protocol.worker_client import WorkerClient

from .console import Console
from .infer import EXIT_INTERRUPTED
from .inventory_errors import InventoryError
from .keeper import Keeper
from .node import Node
from .node_access import NodeAccess
from .probe import NODE_PROBE_TIMEOUT_S, WORKER_PROBE_TIMEOUT_S, host_of
from .rows import Column, Rows
from .runner import RunnerError
from .status import HiveState, NodeStatus, gigabytes
from .words import ActionableError
from .worker_registry import RegisteredWorker

NODES_ANSWER_S = 2.0  # `rbee nodes`: how long past the longest SSH connect a row may wait
MIN_ANSWER_S = 1.0  # however slow the command's start-up was, each node has this long
HIVE_LIST_TIMEOUT_S = 5.0  # `workers list`: how long each node's hive has to list its workers
# Why a worker's state is unknown, in `rbee workers list`.
NOT_ANSWERING = "unknown (node not answering)"
AUTH_FAILED = "unknown (auth failed)"
UNREACHABLE = "unknown (node unreachable)"
HIVE_ERROR = "unknown (hive error)"


def nodes_deadline_s(nodes: Sequence[Node]) -> float:
    """How long `rbee nodes` may take, from the moment it was started: the inventory's
    longest SSH connect timeout plus NODES_ANSWER_S, and never less than a hive's own
    deadline (a node's probe deadline may end its row sooner). Wedged hives and dead hosts
    cost this once, together, however many there are."""
    longest_connect_s = max((n.connect_timeout_s for n in nodes if not n.is_local), default=0.0)
    return max(NODE_PROBE_TIMEOUT_S, longest_connect_s + NODES_ANSWER_S)


def _left_s(deadline_s: float) -> float:
    """What is left of `deadline_s` counted from this process's start (its start-up is part
    of the wait a person sees), rounded for the words; a moment at least."""
    import psutil  # 20 ms of imports no other command of the keeper pays

    started = psutil.Process().create_time()
    return round(max(MIN_ANSWER_S, deadline_s - max(0.0, time.time() - started)), 1)


async def nodes_table(keeper: Keeper, console: Console, output: str = "table") -> int:
    """Every node's state, each row shown as soon as its node answers (see Arrivals)."""
    nodes = keeper.nodes
    within_s = _left_s(nodes_deadline_s(nodes))
    if output == "json":
        statuses = await asyncio.gather(*(keeper.probe(node, within_s=within_s) for node in nodes))
        console.line(json.dumps([_node_as_json(s) for s in statuses], indent=2))
        return 0
    rows = Rows(NODE_COLUMNS, console.width, ((n.name, host_of(n)) for n in nodes))
    pending = [rows.row((n.name, host_of(n), Text("checking…", style="dim"))) for n in nodes]
    with console.rows_as_they_come([rows.header()], pending) as arrivals:

        async def one(index: int, node: Node) -> NodeStatus:
            status = await keeper.probe(node, within_s=within_s)
            arrivals.arrived(index, _node_row(rows, status))
            return status

        statuses = await asyncio.gather(*(one(i, node) for i, node in enumerate(nodes)))
    console.line(_summary(statuses))
    return 0


def _summary(statuses: Sequence[NodeStatus]) -> str:
    """`4 nodes: 1 up, 2 unreachable, 1 not answering`: the table at a glance."""
    counts = Counter(s.state for s in statuses)
    states = ", ".join(f"{counts[state]} {state}" for state in HiveState if counts[state])
    return f"{len(statuses)} node{'s' * (len(statuses) != 1)}: {states}"


NODE_COLUMNS = (
    Column("node"),
    Column("host", shrinks=True),
    Column("hive", width=max(len(state) for state in HiveState)),
    Column("version", width=len(VERSION)),
    Column("workers"),
    Column("models"),
    Column("free RAM", width=len("999.9 GB")),
)
STATE_STYLES = {HiveState.UP: "green", HiveState.NOT_ANSWERING: "yellow"}


def _node_row(rows: Rows, status: NodeStatus) -> list[Text]:
    """The node's line, then its problem and what to do, under it."""
    up = status.is_up
    details: list[Text] = []
    if status.problem:
        details.append(Text(status.problem, style="red"))
    if status.suggestion:
        details.append(Text(f"Suggestion: {status.suggestion}", style="yellow"))
    return rows.row(
        (
            status.name,
            status.host,
            Text(str(status.state), style=STATE_STYLES.get(status.state, "red")),
            status.version or "-",
            str(len(status.workers)) if up else "-",
            str(len(status.models)) if up else "-",
            gigabytes(status.ram_available_mb),
        ),
        details,
    )


def _node_as_json(status: NodeStatus) -> dict[str, object]:
    """A node for scripts: every key always there; null when the hive did not say."""
    up = status.is_up
    return {
        "node": status.name,
        "host": status.host,
        "hive": str(status.state),
        "version": status.version,
        "workers": [
            {
                "worker_id": w.worker_id,
                "model_ref": w.model_ref,
                "state": w.state,
                "url": w.url,
                "slots_busy": w.slots_busy,
                "slots_total": w.slots_total,
            }
            for w in status.workers
        ]
        if up
        else None,
        "models": list(status.models) if up else None,
        "ram_available_mb": status.ram_available_mb,
        "problem": status.problem,
        "suggestion": status.suggestion,
    }


async def workers_list(keeper: Keeper, console: Console, output: str = "table") -> int:
    rows = await reconciled(keeper)
    if output == "json":
        console.line(json.dumps([_as_json(w, state) for w, state in rows], indent=2))
        return 0
    if not rows:
        console.line("No workers registered")
        return 0
    now = time.time()
    cells = [
        (
            w.worker_id,
            w.node,
            w.model_ref,
            state,
            w.url,
            f"{now - w.last_health_check:.0f} s ago" if w.last_health_check else "never",
        )
        for w, state in rows
    ]
    layout = Rows(WORKER_COLUMNS, console.width, cells)
    console.rows([layout.header(), *(line for row in cells for line in layout.row(row))])
    return 0


# On a narrow terminal the model and the URL go under their row, whole: they are copied.
WORKER_COLUMNS = (
    Column("worker"),
    Column("node"),
    Column("model", below=True),
    Column("state"),
    Column("url", below=True),
    Column("last health check"),
)


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


async def models_list(keeper: Keeper, node: Node, console: Console, output: str = "table") -> int:
    models = await keeper.models(node)
    if output == "json":
        console.line(json.dumps([_model_as_json(node, m) for m in models], indent=2))
        return 0
    if not models:
        console.line(f"No models on {node.name}")
        return 0
    cells = [
        (m.reference, f"{m.size_bytes / 1e6:.1f} MB", m.downloaded_at, m.local_path) for m in models
    ]
    layout = Rows(MODEL_COLUMNS, console.width, cells)
    console.rows([layout.header(), *(line for row in cells for line in layout.row(row))])
    return 0


MODEL_COLUMNS = (
    Column("model", below=True),
    Column("size"),
    Column("downloaded"),
    Column("path", below=True),
)


def _model_as_json(node: Node, model: ModelEntry) -> dict[str, object]:
    return {
        "node": node.name,
        "model_ref": model.reference,
        "provider": model.provider,
        "size_bytes": model.size_bytes,
        "sha256": model.sha256,
        "downloaded_at": model.downloaded_at,
        "path": model.local_path,
    }


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
