"""What the queen knows of the cluster: each node's latest probe, refreshed in the background,
and the requests it has in flight on each worker.

Each node is probed on its own schedule, the dashboard's (scheduled_probes.py): an up
node's workers every refresh, its version and catalog now and then, less often while its
workers stand still; a node that is not up less and less often. So a dead or wedged node
delays no other and no request (requests read the latest view and never wait on a probe),
and an idle queen asks its up nodes one or two questions a refresh.

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
from rbee.control.keeper.scheduled_probes import ScheduledProbes
from rbee.control.keeper.status import NodeStatus, WorkerStatus

log = logging.getLogger(__name__)


class ClusterView:
    def __init__(self, keeper: Keeper, refresh_s: float) -> None:
        self._keeper = keeper
        self._probes = ScheduledProbes(
            keeper.nodes, refresh_s, self._probe, self._landed_in_background
        )
        self._was_up: dict[str, bool] = {}
        self.statuses: dict[str, NodeStatus] = {}
        self.checked_at: dict[str, float] = {}
        self.in_flight: Counter[str] = Counter()  # worker id → this queen's open requests
        # What requests learned since the probes: worker id → (its node, when, on `_clock`).
        self._clock = itertools.count()
        self._forgotten: dict[str, tuple[str, int]] = {}
        self._full: dict[str, tuple[str, int]] = {}
        # Node → when the probe whose status stands began: the background probes, a start's
        # check and a hive's bring-up may probe a node at once, and an older one may land last.
        self._landed: dict[str, int] = {}
        self._began: dict[str, int] = {}  # node → when its latest background probe began
        self._ticker: asyncio.Task[None] | None = None
        self.on_refresh: Callable[[], None] = lambda: None  # after each node's fresh status

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self._probes.aclose()

    async def refresh(self, node: Node) -> NodeStatus:
        """The node probed in full now (a start's check, a hive just up), whatever the
        schedule says; its background probes start over from it (a node backed off while
        it was down is probed on an up node's schedule again)."""
        began = next(self._clock)
        status = self._land(began, await self._keeper.probe(node))
        self._probes.soon(node.name)
        return status

    async def _tick(self) -> None:
        while True:
            self._probes.tick()
            await asyncio.sleep(self._probes.tick_s)

    async def _probe(self, node: Node, known: NodeStatus | None) -> NodeStatus:
        self._began[node.name] = next(self._clock)
        return await self._keeper.probe(node, known)

    def _landed_in_background(self, status: NodeStatus) -> None:
        """A background probe's status (or a stuck one's, given up), counted from when that
        probe began: one node has one background probe at a time."""
        status = self._land(self._began[status.name], status)
        if status.is_up != self._was_up.get(status.name):
            log.info("node %s: %s", status.name, status.state)
            self._was_up[status.name] = status.is_up

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
