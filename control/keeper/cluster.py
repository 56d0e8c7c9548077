"""The cluster as data: what each node and worker is doing, and the actions on them.

Both faces of the keeper use it: the command line (`rbee nodes`, `workers`, `models`, `logs`
in fleet.py) prints what these functions return, and the dashboard (`rbee tui`) shows it.
Nothing here prints; failures are ActionableErrors (what went wrong and what to do), and
`probe_node` never raises at all: a node's trouble is part of its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

import httpx

# Re-exported (`X as X`): the dashboard reaches the default model and the request and
# progress types through this module only.
from rbee.dataplane.protocol import hive_api
from rbee.dataplane.protocol.client import InvalidResponse, RemoteError
from rbee.dataplane.protocol.hive_client import HiveClient
from rbee.dataplane.protocol.model_refs import DEFAULT_MODEL_REF as DEFAULT_MODEL_REF
from rbee.dataplane.protocol.model_refs import InvalidModelRef, parse_model_ref
from rbee.dataplane.protocol.states import SERVING_STATES
from rbee.dataplane.protocol.wire import VERSION, ErrorCode
from rbee.dataplane.protocol.worker_api import WorkerHealth
from rbee.dataplane.protocol.worker_client import WorkerClient

from .console import ActionableError, Console
from .hive_control import Say, hive_down, hive_up
from .infer import Infer
from .infer import InferRequest as InferRequest
from .inventory_errors import InventoryError
from .node import Node
from .node_access import LocalNodeAccess, SSHNodeAccess, open_node, runner_for
from .provisioning import DownloadProgress as DownloadProgress
from .provisioning import OnDownload, provision
from .runner import Runner, RunnerError
from .worker_registry import RegisteredWorker, WorkerRegistry

T = TypeVar("T")
DEFAULT_REFRESH_S = 2.0  # how often a live view (the dashboard) probes each node
NODE_PROBE_TIMEOUT_S = 5.0
WORKER_PROBE_TIMEOUT_S = 2.0


class HiveState(StrEnum):
    UP = "up"
    DOWN = "down"  # the node answers, its hive does not
    UNREACHABLE = "unreachable"  # the node itself cannot be reached (SSH)
    NOT_ANSWERING = "not answering"  # connected, but no answer within the probe's deadline
    VERSION_MISMATCH = "version mismatch"
    AUTH_FAILED = "auth failed"


@dataclass(frozen=True)
class WorkerStatus:
    node: str
    worker_id: str
    model_ref: str
    state: str
    slots_busy: int
    slots_total: int
    url: str
    last_tokens_per_s: float | None  # decode speed of its latest request (None: none yet)
    idle_s: float | None
    idle_timeout_s: float | None
    error: str | None

    @property
    def idle_left_s(self) -> float | None:
        """Seconds until the hive's idle timeout stops it (None unless it is idle)."""
        if self.state != "idle" or self.idle_s is None or self.idle_timeout_s is None:
            return None
        return max(0.0, self.idle_timeout_s - self.idle_s)


@dataclass(frozen=True)
class NodeStatus:
    name: str
    host: str  # "local" for the node the keeper runs on
    state: HiveState
    version: str | None = None
    workers: tuple[WorkerStatus, ...] = ()
    models: tuple[str, ...] = ()  # the catalog's references
    ram_available_mb: int | None = None
    problem: str | None = None  # in words, when the state is not plainly "up"
    suggestion: str | None = None

    @property
    def is_up(self) -> bool:
        return self.state is HiveState.UP


@dataclass(frozen=True)
class LogLine:
    ts: str
    level: str
    logger: str
    message: str

    @classmethod
    def of(cls, line: hive_api.LogLine) -> LogLine:
        return cls(line.ts, line.level, line.logger, line.message)

    def __str__(self) -> str:
        return f"{self.ts} {self.level:<7} {self.logger}: {self.message}"


def checked_model_ref(ref: str) -> str:
    """The reference in its canonical form; ActionableError naming the mistake otherwise."""
    try:
        return parse_model_ref(ref.strip()).spelled
    except InvalidModelRef as exc:
        raise ActionableError(
            str(exc),
            suggestion="e.g. pkg:gemma3-270m, file:/abs/model.gguf, "
            "hf:ORG/REPO or https://…/model.gguf",
        ) from None


def gigabytes(mb: int | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.1f} GB"


def _host_of(node: Node) -> str:
    return "local" if node.is_local else node.host


def _auth_error(node: Node) -> ActionableError:
    return ActionableError(
        "Authentication failed",
        f"Invalid API key for {node.name}",
        suggestion=f"check {node.api_key_source or 'the node key'}",
    )


@contextlib.asynccontextmanager
async def hive_of(node: Node, timeout_s: float = NODE_PROBE_TIMEOUT_S) -> AsyncIterator[HiveClient]:
    """A client of the node's hive, reached as the node is; what goes wrong is raised as is."""
    async with (
        open_node(node) as access,
        HiveClient(
            await access.hive_url(), access.hive_key, timeout_s=timeout_s, node=node.name
        ) as hive,
    ):
        yield hive


async def with_hive(node: Node, call: Callable[[HiveClient], Awaitable[T]]) -> T:
    """Runs `call` against the node's hive, turning what can go wrong into words."""
    try:
        async with hive_of(node) as hive:
            return await call(hive)
    except httpx.TimeoutException:
        raise ActionableError(
            f"rbee-hive on {node.name} is {_not_answering(NODE_PROBE_TIMEOUT_S)}",
            suggestion=_restart_hint(node),
        ) from None
    except httpx.TransportError:
        raise ActionableError(
            f"Cannot connect to the hive on {node.name}",
            suggestion=f"is the hive running? try `rbee ssh-up {node.name}`",
        ) from None
    except RemoteError as exc:
        if exc.code == ErrorCode.INVALID_API_KEY:
            raise _auth_error(node) from None
        raise ActionableError(
            exc.message, suggestion=f"see `rbee logs --node {node.name}`"
        ) from None
    except (RunnerError, InventoryError) as exc:
        raise ActionableError(str(exc)) from None


# ----------------------------------------------------------------- reading


class NodeConnections:
    """One way in per node, kept across probes: for an SSH node one connection whose port
    forwards are reused (the runner reconnects by itself when it dies). The dashboard probes
    every few seconds; a handshake each time would be slow and fill the nodes' sshd logs."""

    def __init__(self) -> None:
        self._access: dict[str, LocalNodeAccess | SSHNodeAccess] = {}

    def access(self, node: Node) -> LocalNodeAccess | SSHNodeAccess:
        if node.name not in self._access:
            self._access[node.name] = (
                LocalNodeAccess(node) if node.is_local else SSHNodeAccess(node, runner_for(node))
            )
        return self._access[node.name]

    async def aclose(self) -> None:
        for access in self._access.values():
            if isinstance(access, SSHNodeAccess):
                await access.runner.close()
        self._access.clear()


@contextlib.asynccontextmanager
async def _reach(
    node: Node, connections: NodeConnections | None
) -> AsyncIterator[LocalNodeAccess | SSHNodeAccess]:
    """The node's access: a kept one when `connections` is given, else one for this call."""
    if connections is not None:
        yield connections.access(node)
        return
    async with open_node(node) as access:
        yield access


def _not_answering(waited_s: float) -> str:
    return f"not answering ({waited_s:g} s)"


def _restart_hint(node: Node) -> str:
    return (
        f"it may be stopped or overloaded: `rbee ssh-down {node.name}`, "
        f"then `rbee ssh-up {node.name}`"
    )


def probe_deadline_s(node: Node) -> float:
    """How long probe_node may take: the hive's deadline, plus the SSH handshake's."""
    return NODE_PROBE_TIMEOUT_S + (0.0 if node.is_local else node.connect_timeout_s)


async def probe_node(
    node: Node, registry: WorkerRegistry | None = None, connections: NodeConnections | None = None
) -> NodeStatus:
    """The node's hive state, workers (with each worker's own health) and catalog.

    Never raises, and returns within probe_deadline_s: a node that does not answer in time
    is NOT_ANSWERING. Workers the registry knows and that answer are marked healthy in it, so
    that a following infer finds them warm.
    """
    deadline_s = probe_deadline_s(node)
    try:
        async with asyncio.timeout(deadline_s):
            return await _probe(node, registry, connections)
    except TimeoutError:
        return NodeStatus(
            node.name,
            _host_of(node),
            HiveState.NOT_ANSWERING,
            problem=_not_answering(deadline_s),
            suggestion=_restart_hint(node),
        )


async def _probe(
    node: Node, registry: WorkerRegistry | None, connections: NodeConnections | None
) -> NodeStatus:
    host = _host_of(node)
    try:
        async with _reach(node, connections) as access:
            try:
                return await _probe_hive(node, access, registry)
            except httpx.TimeoutException:
                return NodeStatus(
                    node.name,
                    host,
                    HiveState.NOT_ANSWERING,
                    problem=_not_answering(NODE_PROBE_TIMEOUT_S),
                    suggestion=_restart_hint(node),
                )
            except httpx.HTTPError:
                return NodeStatus(
                    node.name,
                    host,
                    HiveState.DOWN,
                    problem="the hive does not answer",
                    suggestion=f"start it: `rbee ssh-up {node.name}`",
                )
            except (ValueError, KeyError, TypeError):  # a field of the wrong type
                return NodeStatus(
                    node.name,
                    host,
                    HiveState.DOWN,
                    problem=f"Invalid response from rbee-hive on {node.name}",
                    suggestion=f"see `rbee logs --node {node.name}`",
                )
    except (RunnerError, InventoryError) as exc:
        return NodeStatus(
            node.name,
            host,
            HiveState.UNREACHABLE,
            problem=str(exc),
            suggestion="check the node's entry in the inventory and that sshd runs there",
        )
    except RemoteError as exc:
        if exc.code == ErrorCode.INVALID_API_KEY:
            auth = _auth_error(node)
            return NodeStatus(
                node.name,
                host,
                HiveState.AUTH_FAILED,
                problem=f"{auth.message}: {auth.details[0]}",
                suggestion=auth.suggestion,
            )
        return NodeStatus(
            node.name,
            host,
            HiveState.DOWN,
            problem=exc.message,
            suggestion=f"see `rbee logs --node {node.name}`",
        )


async def _probe_hive(
    node: Node, access: LocalNodeAccess | SSHNodeAccess, registry: WorkerRegistry | None
) -> NodeStatus:
    async with HiveClient(
        await access.hive_url(), access.hive_key, timeout_s=NODE_PROBE_TIMEOUT_S, node=node.name
    ) as hive:
        try:
            health = await hive.health()
        except InvalidResponse:
            return NodeStatus(
                node.name,
                _host_of(node),
                HiveState.DOWN,
                problem=f"something other than rbee-hive answers on port {node.hive_port}",
                suggestion=f"give node {node.name} another hive_port in {node.inventory_path}",
            )
        version = health.version
        if version != VERSION:
            return NodeStatus(
                node.name,
                _host_of(node),
                HiveState.VERSION_MISMATCH,
                version,
                problem=f"Version mismatch: rbee={VERSION}, rbee-hive={version}",
                suggestion=f"upgrade it: `rbee deploy {node.name}`",
            )
        report, models = await asyncio.gather(hive.workers_report(), hive.models())
    workers = await asyncio.gather(
        *(_worker_status(node.name, access, w, report.idle_timeout_s) for w in report.workers)
    )
    if registry is not None:
        for worker in workers:
            if worker.state in SERVING_STATES and registry.get(worker.worker_id):
                registry.mark_healthy(worker.worker_id, worker.state)
    return NodeStatus(
        node.name,
        _host_of(node),
        HiveState.UP,
        version,
        tuple(workers),
        tuple(m.reference for m in models),
        report.ram_available_mb,
    )


async def _worker_status(
    node: str,
    access: LocalNodeAccess | SSHNodeAccess,
    listed: hive_api.WorkerRow,
    idle_timeout_s: float | None,
) -> WorkerStatus:
    """The hive's entry, freshened with the worker's own /health when it serves."""
    health: WorkerHealth | None = None
    if listed.state in SERVING_STATES and listed.url:
        # A silent worker keeps the hive's view; the hive's health loop will notice it.
        with contextlib.suppress(httpx.HTTPError, RemoteError, RunnerError, OSError, ValueError):
            async with WorkerClient(
                await access.worker_url(listed.url), timeout_s=WORKER_PROBE_TIMEOUT_S
            ) as worker:
                health = await worker.health()
    return WorkerStatus(
        node=node,
        worker_id=listed.worker_id,
        model_ref=listed.model_ref,
        state=health.state if health else listed.state,
        slots_busy=health.slots_busy if health else listed.slots_busy,
        slots_total=listed.slots_total,
        url=listed.url,
        last_tokens_per_s=health.last_tokens_per_s if health else None,
        idle_s=health.idle_s if health else None,
        idle_timeout_s=idle_timeout_s,
        error=listed.error,
    )


async def probe_nodes(
    nodes: list[Node], registry: WorkerRegistry | None = None
) -> list[NodeStatus]:
    """Every node at once, in the order given."""
    return list(await asyncio.gather(*(probe_node(n, registry) for n in nodes)))


async def list_models(node: Node) -> list[hive_api.ModelEntry]:
    return await with_hive(node, lambda hive: hive.models())


async def recent_logs(node: Node) -> list[LogLine]:
    lines = await with_hive(node, lambda hive: hive.logs())
    return [LogLine.of(line) for line in lines]


async def follow_logs(node: Node, on_line: Callable[[LogLine], None]) -> None:
    """Calls `on_line` with the hive's recent lines, then each new one, until cancelled."""

    async def follow(hive: HiveClient) -> None:
        async for line in hive.follow_logs():
            on_line(LogLine.of(line))

    await with_hive(node, follow)


# ----------------------------------------------------------------- acting


async def _with_runner(
    node: Node, action: Callable[[Node, Runner, Say], Awaitable[str]], say: Say
) -> str:
    try:
        async with runner_for(node) as runner:
            return await action(node, runner, say)
    except (InventoryError, RunnerError) as exc:
        raise ActionableError(f"{node.name}: {exc}") from None


async def ssh_up(node: Node, say: Say) -> str:
    """Starts the node's hive (`rbee ssh-up`); `say` hears each step; returns the outcome."""
    return await _with_runner(node, hive_up, say)


async def ssh_down(node: Node, say: Say) -> str:
    """Stops the node's hive and its workers (`rbee ssh-down`); returns the outcome."""
    return await _with_runner(node, hive_down, say)


def _unheard(_step: DownloadProgress) -> None:
    pass


async def spawn_worker(
    node: Node, model_ref: str, registry: WorkerRegistry, on_progress: OnDownload = _unheard
) -> str:
    """Puts `model_ref` in the node's catalog (`on_progress` hears the download), starts a
    worker for it (its model still loading) and registers it; its id."""

    async def provision_and_spawn(hive: HiveClient) -> hive_api.SpawnAnswer:
        await provision(hive, model_ref, on_progress)
        return await hive.spawn(model_ref, backend=node.backend)

    spawned = await with_hive(node, provision_and_spawn)
    registry.record(
        RegisteredWorker(
            worker_id=spawned.worker_id,
            node=node.name,
            model_ref=model_ref,
            url=spawned.url,
            api_key=spawned.api_key,
            backend=node.backend,
            device=0,
            state=spawned.state,
            created_at=time.time(),
            last_health_check=None,
        )
    )
    return spawned.worker_id


async def shutdown_worker(node: Node, worker_id: str, registry: WorkerRegistry) -> str:
    """Stops one worker gracefully and forgets it; the state it ended in."""
    result = await with_hive(node, lambda hive: hive.shutdown_worker(worker_id))
    registry.remove(worker_id)
    return str(result.state)


async def download_model(node: Node, model_ref: str, on_progress: OnDownload) -> str:
    """Puts `model_ref` in the node's catalog; `on_progress` hears the download; its path."""
    return await with_hive(node, lambda hive: provision(hive, model_ref, on_progress))


# ----------------------------------------------------------------- streaming


@dataclass
class StreamStats:
    tokens: int = 0
    ttft_s: float | None = None  # prompt sent → first token
    tokens_per_s: float | None = None  # between the first and the latest token


class StreamListener(Protocol):
    def status(self, text: str) -> None: ...

    def token(self, text: str, stats: StreamStats) -> None: ...

    def failed(self, error: ActionableError) -> None: ...


class _ListenerConsole(Console):
    """The infer flow's console, turned into calls on a listener, timing the tokens. It
    overrides every method the flow calls, so it needs none of the terminal's streams."""

    def __init__(self, listener: StreamListener) -> None:  # no super(): no terminal here
        self._listener = listener
        self.stats = StreamStats()
        self._sent_at = 0.0
        self._first_at = 0.0

    def status(self, message: str) -> None:
        self._listener.status(message)

    def progress(self, line: str) -> None:
        self._listener.status(line)

    def error(self, message: str, *details: str, suggestion: str | None = None) -> None:
        self._listener.failed(ActionableError(message, *details, suggestion=suggestion))

    def request_sent(self) -> None:
        self.stats = StreamStats()
        self._sent_at = time.monotonic()

    def token(self, text: str) -> None:
        now = time.monotonic()
        stats = self.stats
        stats.tokens += 1
        if stats.tokens == 1:
            self._first_at = now
            stats.ttft_s = now - self._sent_at
        elif now > self._first_at:
            stats.tokens_per_s = (stats.tokens - 1) / (now - self._first_at)
        self._listener.token(text, stats)

    def end_answer(self) -> None:
        """The panel shows the answer as it came; nothing to close."""


class InferStream:
    """One prompt to a model on a node, as `rbee infer` runs it (a warm worker, or provision,
    spawn and load one), reporting to a listener instead of a terminal; cancellable."""

    def __init__(
        self, node: Node, request: InferRequest, registry: WorkerRegistry, listener: StreamListener
    ) -> None:
        self.node = node
        self.request = request
        self._registry = registry
        self._listener = listener
        self._console = _ListenerConsole(listener)
        self._infer: Infer | None = None
        self._canceled = False

    @property
    def stats(self) -> StreamStats:
        return self._console.stats

    def cancel(self) -> None:
        self._canceled = True
        if self._infer is not None:
            self._infer.cancel()

    async def run(self) -> int:
        """The infer exit code: 0 answered, 1 failed (the listener heard why), 130 canceled."""
        try:
            async with open_node(self.node, say=self._console.status) as access:
                self._infer = Infer(access, self.request, self._console, self._registry)
                if self._canceled:
                    self._infer.cancel()
                return await self._infer.run()
        except ActionableError as exc:
            self._listener.failed(exc)
        except (InventoryError, RunnerError) as exc:
            self._listener.failed(ActionableError(str(exc)))
        except (httpx.HTTPError, RemoteError) as exc:  # the node went away mid-request
            self._listener.failed(
                ActionableError(
                    f"lost contact with {self.node.name}: {exc}",
                    suggestion=f"see `rbee logs --node {self.node.name}` and retry",
                )
            )
        return 1
