"""When a live view probes each node, and how long a node has been silent.

A node whose hive is up is probed every `refresh_s`, or every QUIET_FACTOR refreshes once
its workers have stood still for QUIET_AFTER probes (the first change brings it back); one
that is not up (down, unreachable, not answering) less and less often, its interval
doubling up to MAX_BACKOFF_S, so that a fleet with dead machines costs what a live one does.
A probe still running past its deadline (plus a grace) no longer holds its node back: the
node is due again, and the late answer is dropped (`finished` says whether an answer is the
latest). A hive silent for a while reads
`not answering (40 s)`, counted from the first probe it left unanswered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .status import HiveState, NodeStatus

# An up hive is asked its version and catalog every this many probes (and on `soon`); the
# probes between ask for its workers alone.
FULL_PROBE_EVERY = 5
MAX_BACKOFF_S = 30.0  # the longest wait between two probes of a node that is not up
# An up node whose workers (their ids, states and busy slots) stayed the same this many
# probes in a row is probed this many times less often (8 s at the default refresh), until
# they change. Idle, 60 SSH nodes probed every 2 s cost about 7 % of a core, most of it the
# requests through their forwards; every 4 s (which keeps the connections: a hive and httpx
# drop one idle for 5 s) 6-7 %; every 8 s about 4 %.
QUIET_AFTER = 3
QUIET_FACTOR = 4.0
# A probe past its own deadline by this much is stuck (e.g. a close that never returns).
STUCK_GRACE_S = 2.0
PROBE_TICK_S = 1.0  # how often a live view looks for due probes (and counts silences)


@dataclass
class _Watch:
    due_at: float = 0.0
    probe: int = 0  # the number whose answer `finished` takes (the latest started)
    started_at: float | None = None  # the latest probe is running since
    deadline_s: float = 0.0
    misses: int = 0  # probes in a row that found the hive not up
    silent_since: float | None = None  # the start of the first probe it left unanswered
    light_left: int = 0  # probes that may ask for the workers alone, before a full one
    activity: tuple[tuple[str, str, int], ...] | None = None  # the workers last seen
    still: int = 0  # probes in a row that found them the same
    full: bool = True  # whether the latest probe asked for everything
    requested: bool = False  # `soon` was called: a full probe at once, though one runs


class ProbeSchedule:
    def __init__(self, names: Iterable[str], refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._watches = {name: _Watch() for name in names}

    def due(self, now: float) -> list[str]:
        """The nodes to probe now: due, and not being probed."""
        return [
            name
            for name, watch in self._watches.items()
            if watch.started_at is None and watch.due_at <= now
        ]

    def stuck(self, now: float) -> list[str]:
        """The nodes whose probe runs past its deadline and grace: give them up."""
        return [
            name
            for name, watch in self._watches.items()
            if watch.started_at is not None
            and now - watch.started_at > watch.deadline_s + STUCK_GRACE_S
        ]

    def give_up(self, name: str, status: NodeStatus, now: float) -> None:
        """The running probe of `name` counts as having answered `status` (its own answer,
        should it come, is dropped); the node is due again on the schedule."""
        watch = self._watches[name]
        self.finished(name, watch.probe, status, now)
        watch.probe += 1  # its number is no longer the latest: `finished` drops its answer

    def started(self, name: str, now: float, deadline_s: float) -> int:
        """A probe of `name` starts; its number, for `finished`."""
        watch = self._watches[name]
        watch.full = not self.light(name)
        watch.requested = False
        watch.probe += 1
        watch.started_at = now
        watch.deadline_s = deadline_s
        return watch.probe

    def finished(self, name: str, probe: int, status: NodeStatus, now: float) -> bool:
        """Probe number `probe` of `name` answered `status`: schedules the next one. False
        when a later probe has started since (this answer is stale: drop it)."""
        watch = self._watches[name]
        if probe != watch.probe:
            return False
        started_at = now if watch.started_at is None else watch.started_at
        watch.started_at = None
        if status.state is HiveState.NOT_ANSWERING:
            if watch.silent_since is None:
                watch.silent_since = started_at
        else:
            watch.silent_since = None
        activity = tuple((w.worker_id, w.state, w.slots_busy) for w in status.workers)
        same = status.is_up and activity == watch.activity
        watch.still, watch.activity = (watch.still + 1 if same else 0), activity
        watch.misses = 0 if status.is_up else watch.misses + 1
        if not status.is_up:
            watch.light_left = 0
        elif watch.full:
            watch.light_left = FULL_PROBE_EVERY - 1
        else:
            watch.light_left = max(0, watch.light_left - 1)
        if status.is_up:
            wait_s = self.refresh_s * (QUIET_FACTOR if watch.still >= QUIET_AFTER else 1)
        else:
            wait_s = min(self.refresh_s * 2 ** (watch.misses - 1), MAX_BACKOFF_S)
        # From the probe's start: the ticks that start probes keep the interval exact. A
        # `soon` while this probe ran (an action ended meanwhile) asks for another at once.
        watch.due_at = 0.0 if watch.requested else started_at + max(self.refresh_s, wait_s)
        return True

    def soon(self, name: str) -> None:
        """Probes `name` fully at the next tick (after an action on it, or a person's
        refresh)."""
        watch = self._watches[name]
        watch.due_at = 0.0
        watch.requested = True
        watch.still = 0

    def light(self, name: str) -> bool:
        """Whether the next probe of `name` may ask for its workers alone."""
        watch = self._watches[name]
        return watch.light_left > 0 and not watch.requested

    def silent_s(self, name: str, now: float) -> float | None:
        """How long the node's hive has left probes unanswered; None while it answers."""
        since = self._watches[name].silent_since
        return None if since is None else now - since
