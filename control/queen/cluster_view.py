"""What the queen knows of the cluster: each node's latest probe, refreshed in the background,
and the requests it has in flight on each worker.

Each node is probed on its own schedule, so a dead or wedged node delays no other and no
request: requests read the latest view and never wait on a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
        status = await self._keeper.probe(node)
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

    def forget(self, worker: WorkerStatus) -> None:
        """Drops a worker that could not be reached from the view until its node's next
        probe says otherwise (its hive notices a death only at its next health check)."""
        status = self.statuses.get(worker.node)
        if status is not None:
            kept = tuple(w for w in status.workers if w.worker_id != worker.worker_id)
            self.statuses[worker.node] = dataclasses.replace(status, workers=kept)

    def workers(self) -> Iterator[WorkerStatus]:
        for status in self.statuses.values():
            if status.is_up:
                yield from status.workers
