"""Who serves a request, and when (DESIGN §4 "Queen"): a ready worker of the model with a
free slot, the least busy first; else a worker spawned where the model may run; else a wait
in the model's bounded FIFO queue, whose head takes the next slot that frees. A full queue,
or a wait past its limit, is a 503 with Retry-After.

Two inventory models may share a reference (so a queue) but not their nodes: a slot that the
head of the queue may not use goes to the first request behind it that may; requests of one
model keep their order.

The queen counts its own requests in flight (a worker's report is up to a probe old), and
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
from typing import Literal

from rbee.control.keeper.events import KeeperEvent, Unheard
from rbee.control.keeper.events import Loading as KeeperLoading
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.served_models import ModelSpec
from rbee.control.keeper.status import WorkerStatus
from rbee.control.keeper.words import ActionableError
from rbee.dataplane.protocol.events import Loading, Queued, Spawning
from rbee.dataplane.protocol.states import ManagedState
from rbee.dataplane.protocol.wire import ApiError, ErrorCode, Message

from .cluster_view import ClusterView
from .routing import Route, pick, serving
from .settings import RETRY_AFTER_S, QueenSettings
from .timing import Waited

log = logging.getLogger(__name__)
SPAWN_RETRY_S = 30.0  # a model whose worker failed to start is not started again sooner
# A request's own events before its worker starts it (DESIGN §4): queued, spawning, loading,
# routed.
Timeline = Callable[[Message], None]
# A worker in these states (a start another keeper command began) serves soon.
COMING_STATES = frozenset({ManagedState.STARTING, ManagedState.LOADING})
Phase = Literal["spawn", "load"]  # of a worker's start, which waiting requests wait for


@dataclass
class Lease:
    """A slot on a worker, held for one request: `release()` once it is over."""

    route: Route
    waited: Waited = Waited()  # for the slot (a worker's start included)
    sent_at: float = 0.0  # when the request went to the worker (monotonic clock)
    _release: Callable[[bool], None] = field(default=lambda _busy: None, repr=False)
    _released: bool = field(default=False, repr=False)

    @property
    def worker(self) -> WorkerStatus:
        return self.route.worker

    def release(self, *, taken_by_others: bool = False) -> None:
        """`taken_by_others`: the worker refused it, all its slots busy with requests that
        are not this queen's; it takes none of ours until it is probed again or one of our
        requests on it ends."""
        if not self._released:
            self._released = True
            self._release(taken_by_others)


def _unheard(_event: Message) -> None:
    pass


@dataclass
class _Waiter:
    spec: ModelSpec
    granted: asyncio.Future[Lease]
    since: float
    heard: Timeline = _unheard
    phase: Phase | None = None  # of the start of a worker of its model, while it waits
    phase_since: float = 0.0
    spawn_s: float = 0.0
    load_s: float = 0.0

    def enter(self, phase: Phase | None, now: float) -> None:
        if self.phase == "spawn":
            self.spawn_s += now - self.phase_since
        elif self.phase == "load":
            self.load_s += now - self.phase_since
        self.phase, self.phase_since = phase, now

    def waited(self, now: float) -> Waited:
        self.enter(None, now)
        queue_s = max(0.0, now - self.since - self.spawn_s - self.load_s)
        return Waited(queue_s, self.spawn_s, self.load_s)


class Dispatcher:
    def __init__(self, keeper: Keeper, view: ClusterView, settings: QueenSettings) -> None:
        self._keeper = keeper
        self._view = view
        self._settings = settings
        self._queues: dict[str, deque[_Waiter]] = {}
        self._spawning: dict[tuple[str, str], asyncio.Task[None]] = {}  # (node, ref) → spawn
        self._phases: dict[str, Phase] = {}  # ref → where its worker's start is
        # (node, ref) → the last failed start there and when: not tried again there for
        # SPAWN_RETRY_S; where no other node may start one, the requests waiting are answered
        # with why, not left to try it over and over.
        self._spawn_failures: dict[tuple[str, str], tuple[ActionableError, float]] = {}

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

    async def acquire(
        self,
        spec: ModelSpec,
        heard: Timeline = _unheard,
        *,
        deadline: float | None = None,
        again: bool = False,
    ) -> Lease:
        """A slot for one request of `spec`'s model, waiting (FIFO) while every one is busy,
        until `deadline` (the loop's clock; default: the queue's wait limit from now);
        `heard` hears the request's timeline. `again`: a request that a worker refused,
        its slots taken by others: it waits at the head of the queue. ApiError: the queue is
        full, the wait passed its limit, or no node can serve it."""
        queue = self._queues.setdefault(spec.ref, deque())
        # Every queued request has been offered every free slot (dispatch), so a slot this
        # one finds is one that no request ahead of it may take.
        if (route := self._pick(spec)) is not None:
            return self._lease(route)
        if not again:
            self.admit(spec)
        self._spawn_if_possible(spec)
        if not self._can_wait(spec):  # those ahead may wait for nodes this one may not use
            raise self._unservable(spec)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(spec, loop.create_future(), time.monotonic(), heard)
        waiter.enter(self._phases.get(spec.ref), waiter.since)
        if again:
            queue.appendleft(waiter)
        else:
            queue.append(waiter)
        heard(Queued(position=queue.index(waiter) + 1))
        for node, ref in self._spawning:
            if ref == spec.ref:
                heard(Spawning(node=node))
        if deadline is None:
            deadline = loop.time() + self._settings.queue_wait_s
        try:
            async with asyncio.timeout_at(deadline):
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
        """Gives freed or new slots of `ref`'s model to its queue, in order: each to the
        first request that may take it (one whose model may run on its node)."""
        queue = self._queues.get(ref)
        if not queue:
            return
        unserved: set[ModelSpec] = set()  # found no slot: their requests behind wait too
        moved = False
        for waiter in list(queue):
            if waiter.granted.done() or waiter.spec in unserved:
                continue
            route = self._pick(waiter.spec)
            if route is None:
                self._spawn_if_possible(waiter.spec)  # more demand than slots: scale out
                if not self._can_wait(waiter.spec):
                    queue.remove(waiter)
                    waiter.granted.set_exception(self._unservable(waiter.spec))
                else:
                    unserved.add(waiter.spec)
                continue
            queue.remove(waiter)
            lease = self._lease(route)
            lease.waited = waiter.waited(time.monotonic())
            waiter.granted.set_result(lease)
            moved = True
        if moved:
            for position, behind in enumerate(queue, start=1):
                behind.heard(Queued(position=position))

    # ----------------------------------------------------------------- slots

    def _pick(self, spec: ModelSpec) -> Route | None:
        view = self._view
        workers = [
            w for w in view.workers() if w.node in spec.nodes and not view.is_full(w.worker_id)
        ]
        return pick(workers, spec.ref, view.in_flight, self._keeper.registry)

    def _lease(self, route: Route) -> Lease:
        worker = route.worker
        self._view.in_flight[worker.worker_id] += 1

        def release(taken_by_others: bool) -> None:
            self._view.in_flight[worker.worker_id] -= 1
            if taken_by_others:
                self._view.mark_full(worker)
            else:
                self._view.freed(worker.worker_id)
            self.dispatch(worker.model_ref)

        return Lease(route, _release=release)

    # ----------------------------------------------------------------- spawning

    def _can_wait(self, spec: ModelSpec) -> bool:
        """Whether a slot may come: a worker this keeper started serves the model or is
        loading it (others' keys are not ours), the queen is starting one, or a node it may
        run on has not been probed yet (a request just after the queen started waits for
        the first probe, not a 503)."""
        if any(name not in self._view.statuses for name in spec.nodes):
            return True
        registry = self._keeper.registry
        workers = [
            w
            for w in self._view.workers()
            if w.node in spec.nodes and registry.get(w.worker_id) is not None
        ]
        loading = any(w.model_ref == spec.ref and w.state in COMING_STATES for w in workers)
        starting = self._starting(spec)
        return bool(serving(workers, spec.ref)) or loading or starting

    def _unservable(self, spec: ModelSpec) -> ApiError:
        failures = [
            failure
            for (node, ref), failure in self._spawn_failures.items()
            if ref == spec.ref and node in spec.nodes
        ]
        if failures:
            failed = max(failures, key=lambda failure: failure[1])[0]
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
        now = time.monotonic()

        def failed_lately(name: str) -> bool:
            failure = self._spawn_failures.get((name, spec.ref))
            return failure is not None and now - failure[1] < SPAWN_RETRY_S

        free = [
            (count, spec.nodes.index(name), name)
            for name, count in counts.items()
            if count < spec.max_workers_per_node and not failed_lately(name)
        ]
        if not free or self._starting(spec):
            return  # one start at a time per model: its slots may be all the queue needs
        name = min(free)[2]
        node = self._keeper.inventory.get(name)
        task = asyncio.create_task(self._spawn(node, spec))
        self._spawning[(name, spec.ref)] = task
        self._enter(spec.ref, "spawn")
        self.tell_waiting(spec.ref, Spawning(node=name))

    def _starting(self, spec: ModelSpec) -> bool:
        """Whether a worker of the model is being started on a node it may use."""
        return any(ref == spec.ref and node in spec.nodes for (node, ref) in self._spawning)

    def _enter(self, ref: str, phase: Phase | None) -> None:
        """The start of a worker of `ref`'s model moved on: its waiting requests count it."""
        if phase is None:
            self._phases.pop(ref, None)
        else:
            self._phases[ref] = phase
        now = time.monotonic()
        for waiter in self._queues.get(ref, ()):
            waiter.enter(phase, now)

    def tell_waiting(self, ref: str, event: Message) -> None:
        """Every request waiting for `ref`'s model hears `event` (a start, its load)."""
        for waiter in self._queues.get(ref, ()):
            waiter.heard(event)

    async def _spawn(self, node: Node, spec: ModelSpec) -> None:
        log.info("starting a worker of %s on %s", spec.ref, node.name)
        started = time.monotonic()
        try:
            worker_id = await self._keeper.spawn_worker(
                node, spec.spelled, Unheard(), slots=spec.slots, chat_template=spec.chat_template
            )
            self._enter(spec.ref, "load")
            await self._keeper.wait_worker_ready(
                node,
                worker_id,
                _LoadingTold(self, spec.ref),
                timeout_s=self._settings.load_timeout_s,
            )
            await self._view.refresh(node)
            self._spawn_failures.pop((node.name, spec.ref), None)
            log.info(
                "%s of %s ready on %s in %.1f s",
                worker_id,
                spec.ref,
                node.name,
                time.monotonic() - started,
            )
        except ActionableError as exc:
            log.warning("starting a worker of %s on %s failed: %s", spec.ref, node.name, exc)
            self._spawn_failures[(node.name, spec.ref)] = (exc, time.monotonic())
        except Exception as exc:  # a start must never leave the model unservable for good
            log.exception("starting a worker of %s on %s failed", spec.ref, node.name)
            failure = ActionableError(str(exc))
            self._spawn_failures[(node.name, spec.ref)] = (failure, time.monotonic())
        finally:
            del self._spawning[(node.name, spec.ref)]
            self._enter(spec.ref, None)
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
