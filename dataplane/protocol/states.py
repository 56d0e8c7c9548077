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
SERVING_STATES = frozenset({WorkerState.IDLE, WorkerState.BUSY})
