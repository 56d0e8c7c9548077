"""The hives the queen needs (DESIGN §4 "Queen"): started at its start, as `rbee ssh-up`
does, never installing; left running at its exit, unless `--stop-hives`, which stops only
the hives this queen started.

Each node is started on its own task, so the queen serves at once and a slow or dead node
delays nothing: until its hive answers, the node is down in the view. A start that fails is
logged in the keeper's words and tried again later (a node asleep or rebooting comes back
without anyone running `rbee ssh-up`), until a hive answers there, whoever started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rbee.control.keeper.events import KeeperEvent, Step
from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.words import ActionableError

from .cluster_view import ClusterView
from .settings import QueenSettings

log = logging.getLogger(__name__)


def needed_nodes(inventory: Inventory) -> list[Node]:
    """Every node some `[models.NAME]` may run on; every node when the inventory names no
    model (then any model reference may go anywhere)."""
    if not inventory.models:
        return list(inventory.nodes.values())
    allowed = {name for spec in inventory.models.values() for name in spec.nodes}
    return [node for name, node in inventory.nodes.items() if name in allowed]


class _Logged:
    """Hears a hive start's steps in the queen's log (debug: the outcome is logged once)."""

    def heard(self, event: KeeperEvent) -> None:
        if isinstance(event, Step):
            log.debug("%s", event.text)


class QueenHives:
    def __init__(self, keeper: Keeper, view: ClusterView, settings: QueenSettings) -> None:
        self._keeper = keeper
        self._view = view
        self._settings = settings
        self.started: dict[str, int] = {}  # node name → pid of the hive this queen started
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._bring_up(node))
            for node in needed_nodes(self._keeper.inventory)
        ]

    async def aclose(self) -> None:
        """Stops trying; with stop_hives, stops the hives this queen started (within its
        deadline). A start still under way is abandoned: its hive, if it comes up, stays."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not (self._settings.stop_hives and self.started):
            return
        names = ", ".join(sorted(self.started))
        log.info("stopping the hives this queen started: %s", names)
        stops = [self._stop(self._keeper.inventory.get(n), pid) for n, pid in self.started.items()]
        try:
            async with asyncio.timeout(self._settings.stop_hives_timeout_s):
                await asyncio.gather(*stops)
        except TimeoutError:
            log.warning(
                "stopping the hives took more than %g s: left to stop by themselves",
                self._settings.stop_hives_timeout_s,
            )

    async def _bring_up(self, node: Node) -> None:
        wait_s = self._settings.hive_retry_s
        while True:
            try:
                pid = await self._keeper.start_hive(node, _Logged())
            except ActionableError as exc:
                log.warning(
                    "could not start the hive on %s (tried again in %g s): %s",
                    node.name,
                    wait_s,
                    exc.in_words().replace("\n", "\n  "),
                )
            except Exception:  # a bug, not the node: logged, and the node is tried again
                log.exception("starting the hive on %s failed", node.name)
            else:
                if pid is None:
                    log.info("node %s: its hive was already running", node.name)
                else:
                    self.started[node.name] = pid
                    log.info("node %s: started its hive (pid %d)", node.name, pid)
                await self._view.refresh(node)  # up in the view now, not at the next probe
                return
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, self._settings.hive_retry_max_s)

    async def _stop(self, node: Node, pid: int) -> None:
        try:
            said = await self._keeper.hive_down(node, _Logged(), only_pid=pid)
        except ActionableError as exc:
            log.warning(
                "could not stop the hive on %s: %s", node.name, exc.in_words().replace("\n", "\n  ")
            )
        except Exception:  # the other nodes' hives are still stopped
            log.exception("stopping the hive on %s failed", node.name)
        else:
            log.info("%s", said)
