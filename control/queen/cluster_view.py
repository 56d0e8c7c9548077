"""What the queen knows of the cluster: each node's latest probe, refreshed in the background,
and the requests it has in flight on each worker.

Each node is probed on its own schedule, the dashboard's (probe_schedule.py): an up node's
workers every refresh, its version and catalog now and then, less often while its workers
stand still; a node that is not up less and less often. So a dead or wedged node delays no
other and no request (requests read the latest view and never wait on a probe), and an idle
queen costs little: it asks its up nodes one or two questions a refresh, not three and one
per worker.

What a request learns between probes (a worker that could not be reached, one whose slots
others hold) stands until a probe that began after it lands: a probe under way when it was
learned may have read the node before, and must not undo it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.probe import probe_deadline_s, unanswered
from rbee.control.keeper.probe_schedule import PROBE_TICK_S, ProbeSchedule
from rbee.control.keeper.status import NodeStatus, WorkerStatus

log = logging.getLogger(__name__)


class ClusterView:
    def __init__(self, keeper: Keeper, refresh_s: float) -> None:
        self._keeper = keeper
        self._nodes = {node.name: node for node in keeper.nodes}
        self._schedule = ProbeSchedule(self._nodes, refresh_s)
        self._probes: dict[str, asyncio.Task[None]] = {}  # node → its background probe
        self._was_up: dict[str, bool] = {}
        self.statuses: dict[str, NodeStatus] = {}
        self.checked_at: dict[str, float] = {}
        self.in_flight: Counter[str] = Counter()  # worker id → this queen's open requests
        # What requests learned since the probes: worker id → (its node, when, on `_clock`).
        self._clock = itertools.count()
        self._forgotten: dict[str, tuple[str, int]] = {}
        self._full: dict[str, tuple[str, int]] = {}
        # Node → when the probe whose status stands began: the background loop, a start's
        # check and a hive's bring-up may probe a node at once, and an older one may land last.
        self._landed: dict[str, int] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.on_refresh: Callable[[], None] = lambda: None  # after each node's fresh status

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def aclose(self) -> None:
        tasks = [*self._probes.values(), *([self._ticker] if self._ticker else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self, node: Node) -> NodeStatus:
        """The node probed in full now (a start's check, a hive just up), whatever the
        schedule says."""
        began = next(self._clock)
        return self._land(began, await self._keeper.probe(node))

    async def _tick(self) -> None:
        while True:
            try:
                self._probe_due()
            except Exception:  # the view must not freeze
                log.exception("scheduling the probes failed")
            await asyncio.sleep(min(self._schedule.refresh_s, PROBE_TICK_S))

    def _probe_due(self) -> None:
        """Starts the probes the schedule says are due; one stuck past its deadline is
        given up and its node counted not answering."""
        now = time.monotonic()
        for name in self._schedule.stuck(now):
            node = self._nodes[name]
            self._probes.pop(name).cancel()
            status = unanswered(node, probe_deadline_s(node))
            self._schedule.give_up(name, status, now)
            self._land(next(self._clock), status)
        for name in self._schedule.due(now):
            node = self._nodes[name]
            known = self.statuses.get(name) if self._schedule.light(name) else None
            number = self._schedule.started(name, now, probe_deadline_s(node))
            self._probes[name] = asyncio.create_task(self._background(node, number, known))

    async def _background(self, node: Node, number: int, known: NodeStatus | None) -> None:
        began = next(self._clock)
        try:
            status = await self._keeper.probe(node, known)
        except Exception:  # a probe never raises; if one did, the node is probed again
            log.exception("probing %s failed", node.name)
            status = unanswered(node, probe_deadline_s(node))
        if not self._schedule.finished(node.name, number, status, time.monotonic()):
            return  # given up as stuck meanwhile
        del self._probes[node.name]
        status = self._land(began, status)
        if status.is_up != self._was_up.get(node.name):
            log.info("node %s: %s", node.name, status.state)
            self._was_up[node.name] = status.is_up

    def _land(self, began: int, status: NodeStatus) -> NodeStatus:
        """The node's status from the probe that `began`, unless a newer one landed first;
        with what requests learned since it began."""
        name = status.name
        if began < self._landed.get(name, -1):  # a newer probe of it landed first
            return self.statuses[name]
        self._landed[name] = began
        gone = self._learned_since(self._forgotten, name, began)
        self._learned_since(self._full, name, began)
        if gone:
            kept = tuple(w for w in status.workers if w.worker_id not in gone)
            status = dataclasses.replace(status, workers=kept)
        self.statuses[name] = status
        self.checked_at[name] = time.time()
        self.on_refresh()
        return status

    def _learned_since(
        self, learned: dict[str, tuple[str, int]], node: str, began: int
    ) -> set[str]:
        """The node's workers in `learned` since the probe that `began` (they stand); those
        learned before it are dropped: the probe has seen the node since."""
        standing: set[str] = set()
        for worker_id, (on, when) in list(learned.items()):
            if on == node:
                if when > began:
                    standing.add(worker_id)
                else:
                    del learned[worker_id]
        return standing

    def forget(self, worker: WorkerStatus) -> None:
        """Drops a worker that could not be reached from the view until a probe of its node
        that begins after this says otherwise (its hive notices a death only at its next
        health check)."""
        self._forgotten[worker.worker_id] = (worker.node, next(self._clock))
        status = self.statuses.get(worker.node)
        if status is not None:
            kept = tuple(w for w in status.workers if w.worker_id != worker.worker_id)
            self.statuses[worker.node] = dataclasses.replace(status, workers=kept)

    def mark_full(self, worker: WorkerStatus) -> None:
        """The worker answered that all its slots are busy (others than this queen use it):
        it takes none of the queen's requests until a probe of its node that begins after
        this, or until one of the queen's requests on it ends (`freed`)."""
        self._full[worker.worker_id] = (worker.node, next(self._clock))

    def freed(self, worker_id: str) -> None:
        self._full.pop(worker_id, None)

    def is_full(self, worker_id: str) -> bool:
        return worker_id in self._full

    def workers(self) -> Iterator[WorkerStatus]:
        for status in self.statuses.values():
            if status.is_up:
                yield from status.workers
