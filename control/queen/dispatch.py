"""Who serves a request, and when (DESIGN §4 "Queen"): a ready worker of the model with a
free slot, the least busy first; else a worker spawned where the model may run; else a wait
in the model's bounded FIFO queue, whose head takes the next slot that frees. A full queue,
or a wait past its limit, is a 503 with Retry-After.

The queen counts its own requests in flight (a worker's report is up to a refresh old), and
requests never wait on a probe: they read the latest view (cluster_view.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rbee.control.keeper.events import KeeperEvent, Unheard
from rbee.control.keeper.events import Loading as KeeperLoading
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.served_models import ModelSpec
from rbee.control.keeper.status import WorkerStatus
from rbee.control.keeper.words import ActionableError
from rbee.dataplane.protocol.events import Loading, Queued, Routed, Spawning
from rbee.dataplane.protocol.wire import ApiError, ErrorCode, Message

from .cluster_view import ClusterView
from .routing import Route, pick, serving
from .settings import RETRY_AFTER_S, QueenSettings

log = logging.getLogger(__name__)
SPAWN_RETRY_S = 30.0  # a model whose worker failed to start is not started again sooner
# A request's own events before its worker starts it (DESIGN §4): queued, spawning, loading,
# routed.
Timeline = Callable[[Message], None]


@dataclass
class Lease:
    """A slot on a worker, held for one request: `release()` once it is over."""

    route: Route
    queued_s: float = 0.0  # waiting for a slot (a worker's start included)
    _release: Callable[[], None] = field(default=lambda: None, repr=False)
    _released: bool = field(default=False, repr=False)

    @property
    def worker(self) -> WorkerStatus:
        return self.route.worker

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


def _unheard(_event: Message) -> None:
    pass


@dataclass
class _Waiter:
    spec: ModelSpec
    granted: asyncio.Future[Lease]
    since: float
    heard: Timeline = _unheard


class Dispatcher:
    def __init__(self, keeper: Keeper, view: ClusterView, settings: QueenSettings) -> None:
        self._keeper = keeper
        self._view = view
        self._settings = settings
        self._queues: dict[str, deque[_Waiter]] = {}
        self._spawning: dict[tuple[str, str], asyncio.Task[None]] = {}  # (node, ref) → spawn
        # ref → its last failed start and when: not tried again for SPAWN_RETRY_S, so that
        # the requests waiting then are answered with why, not left to try it over and over.
        self._spawn_failures: dict[str, tuple[ActionableError, float]] = {}

    def dispatch_all(self) -> None:
        """Every queue's head takes what slots there are (after a probe found some)."""
        for ref in list(self._queues):
            self.dispatch(ref)

    def admit(self, spec: ModelSpec) -> None:
        """ApiError (503) when the model's queue is full: said before a stream starts."""
        queue = self._queues.get(spec.ref, ())
        if len(queue) >= self._settings.queue_max:
            raise _busy(f"{len(queue)} requests already wait for {spec.name}")

    def queued(self) -> dict[str, int]:
        """How many requests wait, per model reference."""
        return {ref: len(q) for ref, q in self._queues.items() if q}

    async def acquire(self, spec: ModelSpec, heard: Timeline = _unheard) -> Lease:
        """A slot for one request of `spec`'s model, waiting (FIFO) while every one is busy;
        `heard` hears the request's timeline. ApiError: the queue is full, the wait passed
        its limit, or no node can serve it."""
        lease = await self._wait(spec, heard)
        heard(Routed(node=lease.worker.node, worker_id=lease.worker.worker_id))
        return lease

    async def _wait(self, spec: ModelSpec, heard: Timeline) -> Lease:
        queue = self._queues.setdefault(spec.ref, deque())
        if not queue and (route := self._pick(spec)) is not None:
            return self._lease(route)
        self.admit(spec)
        self._spawn_if_possible(spec)
        if not queue and not self._can_wait(spec):
            raise self._unservable(spec)
        waiter = _Waiter(spec, asyncio.get_running_loop().create_future(), time.monotonic(), heard)
        queue.append(waiter)
        heard(Queued(position=len(queue)))
        for node, ref in self._spawning:
            if ref == spec.ref:
                heard(Spawning(node=node))
        try:
            async with asyncio.timeout(self._settings.queue_wait_s):
                return await waiter.granted
        except BaseException as exc:
            _give_back(waiter)  # a slot granted just as the wait ended (timeout, client gone)
            if isinstance(exc, TimeoutError):
                limit = self._settings.queue_wait_s
                raise _busy(f"no slot of {spec.name} freed within {limit:g} s") from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)

    def dispatch(self, ref: str) -> None:
        """Gives freed or new slots of `ref`'s model to the head of its queue."""
        queue = self._queues.get(ref)
        while queue:
            waiter = queue[0]
            if waiter.granted.done():
                queue.popleft()
                continue
            route = self._pick(waiter.spec)
            if route is None:
                self._spawn_if_possible(waiter.spec)  # more demand than slots: scale out
                if not self._can_wait(waiter.spec):
                    queue.popleft()
                    waiter.granted.set_exception(self._unservable(waiter.spec))
                    continue
                return
            queue.popleft()
            lease = self._lease(route)
            lease.queued_s = time.monotonic() - waiter.since
            waiter.granted.set_result(lease)
            for position, behind in enumerate(queue, start=1):
                behind.heard(Queued(position=position))

    # ----------------------------------------------------------------- slots

    def _pick(self, spec: ModelSpec) -> Route | None:
        workers = [w for w in self._view.workers() if w.node in spec.nodes]
        return pick(workers, spec.ref, self._view.in_flight, self._keeper.registry)

    def _lease(self, route: Route) -> Lease:
        worker = route.worker
        self._view.in_flight[worker.worker_id] += 1

        def release() -> None:
            self._view.in_flight[worker.worker_id] -= 1
            self.dispatch(worker.model_ref)

        return Lease(route, _release=release)

    # ----------------------------------------------------------------- spawning

    def _can_wait(self, spec: ModelSpec) -> bool:
        """Whether a slot may come: a worker this keeper started serves the model (others'
        keys are not ours), or one is being started."""
        registry = self._keeper.registry
        workers = [
            w
            for w in self._view.workers()
            if w.node in spec.nodes and registry.get(w.worker_id) is not None
        ]
        starting = any(ref == spec.ref for (_node, ref) in self._spawning)
        return bool(serving(workers, spec.ref)) or starting

    def _unservable(self, spec: ModelSpec) -> ApiError:
        if (failure := self._spawn_failures.get(spec.ref)) is not None:
            failed = failure[0]
            return ApiError(
                failed.code or ErrorCode.INTERNAL_ERROR,
                f"no worker serves {spec.name}, and starting one failed: {failed.message}",
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return ApiError(
            ErrorCode.MODEL_NOT_FOUND,
            f"no node can serve {spec.name} now (allowed: {', '.join(spec.nodes)}; "
            "none is up, or each holds its limit of workers); GET /v1/cluster shows them",
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    def _spawn_if_possible(self, spec: ModelSpec) -> None:
        """Starts a worker of the model on the allowed node with the fewest of them, if one
        is up and under the model's cap, and none is being started there already."""
        counts: dict[str, int] = {}
        for status in self._view.statuses.values():
            if status.is_up and status.name in spec.nodes:
                counts[status.name] = sum(w.model_ref == spec.ref for w in status.workers)
        free = [
            (count, spec.nodes.index(name), name)
            for name, count in counts.items()
            if count < spec.max_workers_per_node and (name, spec.ref) not in self._spawning
        ]
        if not free or any(ref == spec.ref for (_n, ref) in self._spawning):
            return  # one start at a time per model: its slots may be all the queue needs
        failure = self._spawn_failures.get(spec.ref)
        if failure is not None and time.monotonic() - failure[1] < SPAWN_RETRY_S:
            return
        name = min(free)[2]
        node = self._keeper.inventory.get(name)
        task = asyncio.create_task(self._spawn(node, spec))
        self._spawning[(name, spec.ref)] = task
        self.tell_waiting(spec.ref, Spawning(node=name))

    def tell_waiting(self, ref: str, event: Message) -> None:
        """Every request waiting for `ref`'s model hears `event` (a start, its load)."""
        for waiter in self._queues.get(ref, ()):
            waiter.heard(event)

    async def _spawn(self, node: Node, spec: ModelSpec) -> None:
        log.info("starting a worker of %s on %s", spec.ref, node.name)
        started = time.monotonic()
        try:
            worker_id = await self._keeper.spawn_worker(node, spec.ref, Unheard(), slots=spec.slots)
            await self._keeper.wait_worker_ready(
                node,
                worker_id,
                _LoadingTold(self, spec.ref),
                timeout_s=self._settings.load_timeout_s,
            )
            await self._view.refresh(node)
            self._spawn_failures.pop(spec.ref, None)
            log.info(
                "%s of %s ready on %s in %.1f s",
                worker_id,
                spec.ref,
                node.name,
                time.monotonic() - started,
            )
        except ActionableError as exc:
            log.warning("starting a worker of %s on %s failed: %s", spec.ref, node.name, exc)
            self._spawn_failures[spec.ref] = (exc, time.monotonic())
        except Exception as exc:  # a start must never leave the model unservable for good
            log.exception("starting a worker of %s on %s failed", spec.ref, node.name)
            self._spawn_failures[spec.ref] = (ActionableError(str(exc)), time.monotonic())
        finally:
            del self._spawning[(node.name, spec.ref)]
            self.dispatch(spec.ref)


def _busy(why: str) -> ApiError:
    return ApiError(
        ErrorCode.ALL_SLOTS_BUSY,
        f"{why}; retry in {RETRY_AFTER_S} s",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _give_back(waiter: _Waiter) -> None:
    granted = waiter.granted
    if granted.done() and not granted.cancelled() and granted.exception() is None:
        granted.result().release()


class _LoadingTold:
    """A worker's load, as its model's waiting requests hear it."""

    def __init__(self, dispatcher: Dispatcher, ref: str) -> None:
        self._dispatcher = dispatcher
        self._ref = ref

    def heard(self, event: KeeperEvent) -> None:
        if isinstance(event, KeeperLoading):
            loading = Loading(layers_loaded=event.layers_loaded, layers_total=event.layers_total)
            self._dispatcher.tell_waiting(self._ref, loading)
