"""What the queen knows of the cluster: each node's latest probe, refreshed in the background,
and the requests it has in flight on each worker.

Each node is probed on its own schedule, so a dead or wedged node delays no other and no
request: requests read the latest view and never wait on a probe.

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
from rbee.control.keeper.status import NodeStatus, WorkerStatus

log = logging.getLogger(__name__)


class ClusterView:
    def __init__(self, keeper: Keeper, refresh_s: float) -> None:
        self._keeper = keeper
        self._refresh_s = refresh_s
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
        self._tasks: list[asyncio.Task[None]] = []
        self.on_refresh: Callable[[], None] = lambda: None  # after each node's fresh status

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(node)) for node in self._keeper.nodes]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self, node: Node) -> NodeStatus:
        began = next(self._clock)
        status = await self._keeper.probe(node)
        if began < self._landed.get(node.name, -1):  # a newer probe of it landed first
            return self.statuses[node.name]
        self._landed[node.name] = began
        gone = self._learned_since(self._forgotten, node.name, began)
        self._learned_since(self._full, node.name, began)
        if gone:
            kept = tuple(w for w in status.workers if w.worker_id not in gone)
            status = dataclasses.replace(status, workers=kept)
        self.statuses[node.name] = status
        self.checked_at[node.name] = time.time()
        self.on_refresh()
        return status

    async def _follow(self, node: Node) -> None:
        was_up: bool | None = None
        while True:
            try:
                status = await self.refresh(node)
            except Exception:  # a probe never raises; if one did, the view must not freeze
                log.exception("probing %s failed", node.name)
            else:
                if status.is_up != was_up:
                    log.info("node %s: %s", node.name, status.state)
                    was_up = status.is_up
            await asyncio.sleep(self._refresh_s)

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
