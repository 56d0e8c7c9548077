"""The keeper's one front door: everything the CLI, the dashboard and the queen do with the
cluster goes through a Keeper.

It holds one way in per node for its life (node_access.NodeConnections: one SSH connection
per node, its port forwards reused) and the worker registry. Reads return data (status.py);
actions report their steps to a listener (events.py) and return their outcome in a line;
what goes wrong is an ActionableError in the words of words.py, translated here once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Self, TypeVar

import httpx

from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.hive_api import ModelEntry, WorkerRow
from rbee.dataplane.protocol.hive_client import HiveClient
from rbee.dataplane.protocol.states import WorkerState
from rbee.dataplane.protocol.worker_api import LoadingEvent, LoadingProgress
from rbee.dataplane.protocol.worker_client import WorkerClient

from .events import Failed, Listener, Loading, Step
from .hive_control import HiveDown, hive_down, hive_up
from .infer import EXIT_FAILED, EXIT_INTERRUPTED, Infer, InferRequest
from .install_plan import Installer
from .inventory import Inventory
from .inventory_errors import InventoryError
from .node import Node
from .node_access import HIVE_CALL_TIMEOUT_S, NodeAccess, NodeConnections
from .probe import probe_node
from .provisioning import provision
from .queen_address import QueenAddress, read_queen_address
from .queen_infer import QueenInfer, QueenRequest
from .queen_status import QueenStatus, probe_queen
from .runner import RunnerError
from .status import LogLine, NodeStatus
from .words import (
    ActionableError,
    hive_not_answering,
    hive_unreachable,
    lost_contact,
    remote_failure,
)
from .worker_registry import RegisteredWorker, WorkerRegistry

T = TypeVar("T")


class Keeper:
    def __init__(self, inventory: Inventory, registry: WorkerRegistry | None = None) -> None:
        self.inventory = inventory
        self._registry = registry
        self._owns_registry = registry is None
        key_variables = frozenset(n.api_key_env for n in self.nodes if n.api_key_env)
        self._connections = NodeConnections(key_variables)

    @property
    def registry(self) -> WorkerRegistry:
        """The keeper's worker registry, opened when first needed (most commands never do)."""
        if self._registry is None:
            self._registry = WorkerRegistry()
        return self._registry

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._connections.aclose()
        if self._owns_registry and self._registry is not None:
            self._registry.close()

    @property
    def nodes(self) -> list[Node]:
        return list(self.inventory.nodes.values())

    def access(self, node: Node) -> NodeAccess:
        """The node's kept way in (InventoryError when its key is misconfigured)."""
        return self._connections.access(node)

    # ----------------------------------------------------------------- reading

    async def probe(
        self, node: Node, known: NodeStatus | None = None, within_s: float | None = None
    ) -> NodeStatus:
        """The node's state now, within its probe deadline or `within_s` if sooner; never
        raises. `known`: its latest status, whose version and catalog an up hive is not asked
        for again (see probe.py)."""
        return await probe_node(node, self._connections, self.registry, known, within_s)

    async def probe_all(self) -> list[NodeStatus]:
        """Every node at once, in inventory order."""
        return list(await asyncio.gather(*(self.probe(node) for node in self.nodes)))

    async def models(self, node: Node) -> list[ModelEntry]:
        return await self._with_hive(node, lambda hive: hive.models())

    async def workers(self, node: Node) -> list[WorkerRow]:
        return await self._with_hive(node, lambda hive: hive.workers())

    async def logs(self, node: Node) -> list[LogLine]:
        lines = await self._with_hive(node, lambda hive: hive.logs())
        return [LogLine.of(line) for line in lines]

    async def follow_logs(self, node: Node, on_line: Callable[[LogLine], None]) -> None:
        """Calls `on_line` with the hive's recent lines, then each new one, until cancelled."""

        async def follow(hive: HiveClient) -> None:
            async for line in hive.follow_logs():
                on_line(LogLine.of(line))

        await self._with_hive(node, follow)

    def queen(self) -> QueenAddress | None:
        """Where the queen of this machine listens; None when none runs."""
        return read_queen_address()

    async def probe_queen(self) -> QueenStatus | None:
        """What the running queen is doing (its queues, the requests it routed to each
        node); None when no queen runs. Never raises: its trouble is in the status."""
        address = self.queen()
        return None if address is None else await probe_queen(address)

    # ----------------------------------------------------------------- acting

    async def hive_up(
        self, node: Node, listener: Listener, *, installer: Installer | None = None
    ) -> str:
        """Starts the node's hive (`rbee ssh-up`), installing rbee first with an installer;
        the listener hears each step; returns the outcome."""

        async def up(access: NodeAccess, say: Callable[[str], None]) -> str:
            return (await hive_up(access, say, installer=installer)).said

        return await self._over_runner(node, listener, up)

    async def start_hive(self, node: Node, listener: Listener) -> int | None:
        """Starts the node's hive unless one runs, never installing (the queen's start): the
        pid of the hive it started, None when one already ran."""

        async def up(access: NodeAccess, say: Callable[[str], None]) -> int | None:
            outcome = await hive_up(access, say)
            say(outcome.said)
            return outcome.started_pid

        return await self._over_runner(node, listener, up)

    async def hive_down(
        self, node: Node, listener: Listener, *, only_pid: int | None = None
    ) -> str:
        """Stops the node's hive and its workers (`rbee ssh-down`); returns the outcome. With
        `only_pid`, only while the node's hive is that process (the one a start_hive gave)."""

        async def down(access: NodeAccess, say: Callable[[str], None]) -> HiveDown:
            return await hive_down(access, say, only_pid=only_pid)

        outcome = await self._over_runner(node, listener, down)
        if outcome.down:
            self.registry.forget_node(node.name)  # its workers stopped with the hive
        return outcome.said

    async def download_model(self, node: Node, model_ref: str, listener: Listener) -> str:
        """Puts `model_ref` in the node's catalog; the listener hears the download; its path."""
        return await self._with_hive(
            node, lambda hive: provision(hive, node.name, model_ref, listener)
        )

    async def spawn_worker(
        self,
        node: Node,
        model_ref: str,
        listener: Listener,
        *,
        slots: int = 1,
        ctx_size: int | None = None,
        chat_template: str | None = None,
    ) -> str:
        """Puts `model_ref` in the node's catalog, starts a worker for it with `slots`
        parallel requests (its model still loading) and registers it; its id. `ctx_size`:
        tokens of context per slot (default: the hive's); a `chat_template` (a built-in's
        name) overrides the model's own."""

        async def provision_and_spawn(hive: HiveClient) -> str:
            await provision(hive, node.name, model_ref, listener)
            spawned = await hive.spawn(
                model_ref,
                backend=node.backend,
                slots=slots,
                ctx_size=ctx_size,
                chat_template=chat_template,
            )
            self.registry.record(
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

        return await self._with_hive(node, provision_and_spawn)

    async def wait_worker_ready(
        self, node: Node, worker_id: str, listener: Listener, *, timeout_s: float
    ) -> None:
        """Until the worker this keeper spawned has loaded its model; the listener hears the
        layers load. ActionableError when it cannot load, or not within `timeout_s`."""
        worker = self.registry.get(worker_id)
        if worker is None:
            raise ActionableError(f"{worker_id} is not in this keeper's registry")

        def loading(event: LoadingEvent) -> None:
            if isinstance(event, LoadingProgress) and event.layers_total:
                listener.heard(Loading(event.layers_loaded, event.layers_total))

        try:
            url = await self.access(node).worker_url(worker.url)
            async with WorkerClient(url, worker.api_key) as client:
                await client.wait_ready(timeout_s=timeout_s, on_progress=loading)
        except RemoteError as exc:
            raise remote_failure(node, exc) from None
        except (httpx.HTTPError, RunnerError, OSError) as exc:
            raise lost_contact(node, exc) from None
        self.registry.mark_healthy(worker_id, WorkerState.IDLE)

    async def shutdown_worker(self, node: Node, worker_id: str) -> str:
        """Stops one worker gracefully and forgets it; the state it ended in."""
        result = await self._with_hive(node, lambda hive: hive.shutdown_worker(worker_id))
        self.registry.remove(worker_id)
        return str(result.state)

    def infer(self, node: Node, request: InferRequest, listener: Listener) -> InferRun:
        """One prompt to a model on a node: a warm worker, or provision, spawn and load one;
        run it with `await run.run()`, stop it with `run.cancel()`."""
        return InferRun(self, node, request, listener)

    def infer_through_queen(self, request: QueenRequest, listener: Listener) -> QueenInfer:
        """One prompt through the running queen (which picks node and worker); run it with
        `await run.run()`, stop it with `run.cancel()`. No queen: the run fails in words."""
        return QueenInfer(self.queen(), request, listener)

    # ----------------------------------------------------------------- the one translation

    async def _with_hive(self, node: Node, call: Callable[[HiveClient], Awaitable[T]]) -> T:
        """Runs `call` against the node's hive, turning what can go wrong into words."""
        try:
            async with self.access(node).hive() as hive:
                return await call(hive)
        except httpx.TimeoutException:
            raise hive_not_answering(node, HIVE_CALL_TIMEOUT_S) from None
        except httpx.TransportError:
            raise hive_unreachable(node) from None
        except RemoteError as exc:
            raise remote_failure(node, exc) from None
        except (RunnerError, InventoryError) as exc:
            raise ActionableError(str(exc)) from None

    async def _over_runner(
        self,
        node: Node,
        listener: Listener,
        action: Callable[[NodeAccess, Callable[[str], None]], Awaitable[T]],
    ) -> T:
        """`action` on the node's runner, connected with EC1's attempts, each step heard."""

        def say(text: str) -> None:
            listener.heard(Step(text))

        try:
            access = self.access(node)
            await access.connect(lambda line: say(f"{node.name}: {line}"))
            return await action(access, say)
        except (InventoryError, RunnerError) as exc:
            # From exc: the summary of `rbee ssh-up` tells a refused sshd from a timeout by it.
            raise ActionableError(f"{node.name}: {exc}") from exc


class InferRun:
    """One `Keeper.infer`: the infer flow of infer.py on the keeper's way into the node."""

    def __init__(
        self, keeper: Keeper, node: Node, request: InferRequest, listener: Listener
    ) -> None:
        self._keeper = keeper
        self.node = node
        self.request = request
        self._listener = listener
        self._infer: Infer | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._canceled = False

    def cancel(self) -> None:
        """Ctrl+C (or the dashboard's cancel), whatever the run is doing: connecting ends at
        once, the flow as infer.py describes."""
        self._canceled = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._infer is not None:
            self._infer.cancel()

    async def run(self) -> int:
        """The exit code: 0 answered, 1 failed (the listener heard why), 130 canceled."""
        node, listener = self.node, self._listener
        try:
            access = self._keeper.access(node)
            self._connecting = asyncio.ensure_future(
                access.connect(lambda line: listener.heard(Step(line)))
            )
            try:
                await self._connecting
            except asyncio.CancelledError:
                if not self._canceled:
                    raise  # the run itself was cancelled
            finally:
                self._connecting = None
            if self._canceled:
                listener.heard(Step("Canceled."))
                return EXIT_INTERRUPTED
            # The workers it starts use the template of the inventory model of that file.
            served = self._keeper.inventory.model(self.request.model_ref)
            request = replace(self.request, chat_template=served.chat_template)
            self._infer = Infer(access, request, listener, self._keeper.registry)
            return await self._infer.run()
        except ActionableError as exc:
            listener.heard(Failed(exc))
        except (InventoryError, RunnerError) as exc:
            listener.heard(Failed(ActionableError(str(exc))))
        except (httpx.HTTPError, RemoteError) as exc:  # the node went away mid-request
            listener.heard(Failed(lost_contact(node, exc)))
        return EXIT_FAILED
