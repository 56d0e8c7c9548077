"""The states a worker reports (DESIGN §4): `starting → loading → idle ⇄ busy → draining →
stopped`, and `failed`."""

from __future__ import annotations

from enum import StrEnum


class WorkerState(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


# The states in which a worker takes inference requests (a busy one may have a free slot).
# As strings: a worker's own state and its hive's view of it (ManagedState) share them.
SERVING_STATES: frozenset[str] = frozenset({WorkerState.IDLE, WorkerState.BUSY})


class ManagedState(StrEnum):
    """A worker as its hive sees it (the workers list): the worker's own states, and
    `unresponsive` and `crashed`, which only the hive can tell."""

    STARTING = "starting"  # process started, not yet serving HTTP
    LOADING = "loading"  # serving, model loading
    IDLE = "idle"
    BUSY = "busy"
    UNRESPONSIVE = "unresponsive"  # missed its last health check (frozen, swapping, overloaded)
    DRAINING = "draining"  # asked to shut down
    STOPPED = "stopped"  # exited after a shutdown
    FAILED = "failed"  # the model could not be loaded, or the process died while starting
    CRASHED = "crashed"  # died or stopped answering after it was up
