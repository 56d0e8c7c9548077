"""A live view's probes, run when their schedule says (probe_schedule.py): the dashboard's
and the queen's.

Each node's probe is a task of its own, so a slow node delays no other. A light probe asks
an up hive for its workers alone, its version and catalog kept from the node's latest full
answer. A probe stuck past its deadline and grace is cancelled and its node counted not
answering; an answer that comes after its probe was given up is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from .node import Node
from .probe import probe_deadline_s, unanswered
from .probe_schedule import PROBE_TICK_S, ProbeSchedule
from .status import NodeStatus

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 1.0  # closing waits this long for canceled probes (one may never return)

Probe = Callable[[Node, NodeStatus | None], Awaitable[NodeStatus]]


class ScheduledProbes:
    def __init__(
        self,
        nodes: Iterable[Node],
        refresh_s: float,
        probe: Probe,
        landed: Callable[[NodeStatus], None],
    ) -> None:
        """`probe(node, known)` asks a node (`known`: its latest status, for a light probe;
        it must not raise); `landed(status)` hears each status the schedule takes, a given-up
        probe's included."""
        self._nodes = {node.name: node for node in nodes}
        self.schedule = ProbeSchedule(self._nodes, refresh_s)
        self._probe = probe
        self._landed = landed
        self._latest: dict[str, NodeStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    @property
    def tick_s(self) -> float:
        """How often to call `tick`: the refresh, or more often, to count silences up."""
        return min(self.schedule.refresh_s, PROBE_TICK_S)

    def tick(self) -> None:
        """Gives up the probes stuck past their deadline, and starts those due."""
        if self._closed:
            return
        now = time.monotonic()
        for name in self.schedule.stuck(now):
            if (stuck := self._tasks.pop(name, None)) is not None:
                stuck.cancel()  # its answer, should it come, is dropped
            node = self._nodes[name]
            status = unanswered(node, probe_deadline_s(node))
            self.schedule.give_up(name, status, now)
            self._take(status)
        for name in self.schedule.due(now):
            node = self._nodes[name]
            known = self._latest.get(name) if self.schedule.light(name) else None
            number = self.schedule.started(name, now, probe_deadline_s(node))
            self._tasks[name] = asyncio.create_task(self._run(node, number, known))

    def soon(self, name: str) -> None:
        """A full probe of the node at the next tick (after an action on it, a person's
        refresh, or a probe outside the schedule), its wait since reset."""
        self.schedule.soon(name)

    async def aclose(self) -> None:
        """Cancels the probes under way, and waits for them CLOSE_WAIT_S at most."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)

    async def _run(self, node: Node, number: int, known: NodeStatus | None) -> None:
        try:
            status = await self._probe(node, known)
        except Exception:  # a probe never raises; if one did, the node is probed again
            log.exception("probing %s failed", node.name)
            status = unanswered(node, probe_deadline_s(node))
        if self._tasks.get(node.name) is asyncio.current_task():
            del self._tasks[node.name]
        if self.schedule.finished(node.name, number, status, time.monotonic()):
            self._take(status)

    def _take(self, status: NodeStatus) -> None:
        self._latest[status.name] = status
        try:
            self._landed(status)
        except Exception:  # the view goes on with the next status
            log.exception("taking the status of %s failed", status.name)
