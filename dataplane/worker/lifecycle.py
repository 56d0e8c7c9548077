"""The worker process's own lifecycle (DESIGN §4): its table of allowed transitions."""

from __future__ import annotations

from collections.abc import Mapping

from rbee.dataplane.plumbing.state_machine import StateMachine
from rbee.dataplane.protocol.states import SERVING_STATES, WorkerState

W = WorkerState
WORKER_TRANSITIONS: Mapping[WorkerState, frozenset[WorkerState]] = {
    W.STARTING: frozenset({W.LOADING, W.FAILED, W.DRAINING}),
    W.LOADING: frozenset({W.IDLE, W.FAILED, W.DRAINING}),
    W.IDLE: frozenset({W.BUSY, W.DRAINING}),
    W.BUSY: frozenset({W.IDLE, W.DRAINING}),
    W.DRAINING: frozenset({W.STOPPED}),
    W.FAILED: frozenset({W.DRAINING}),
    W.STOPPED: frozenset(),
}


class Lifecycle(StateMachine[WorkerState]):
    """The worker process's own lifecycle."""

    def __init__(self) -> None:
        super().__init__(WORKER_TRANSITIONS, WorkerState.STARTING, name="worker")

    @property
    def serving(self) -> bool:
        """True when new requests are accepted."""
        return self.state in SERVING_STATES
