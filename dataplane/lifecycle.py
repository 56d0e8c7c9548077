"""The worker's lifecycle: named states and the one table of allowed transitions (DESIGN §4)."""

from __future__ import annotations

import logging
from .protocol import WorkerState

log = logging.getLogger(__name__)

S = WorkerState
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.STARTING: frozenset({S.LOADING, S.FAILED, S.DRAINING}),
    S.LOADING: frozenset({S.IDLE, S.FAILED, S.DRAINING}),
    S.IDLE: frozenset({S.BUSY, S.DRAINING}),
    S.BUSY: frozenset({S.IDLE, S.DRAINING}),
    S.DRAINING: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.DRAINING}),
    S.STOPPED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


class Lifecycle:
    """Holds the current state; every change goes through `to()` and the table above."""

    def __init__(self) -> None:
        self._state = WorkerState.STARTING

    @property
    def state(self) -> WorkerState:
        return self._state

    def can(self, new: WorkerState) -> bool:
        return new in TRANSITIONS[self._state]

    def to(self, new: WorkerState) -> None:
        if new is self._state:
            return
        if not self.can(new):
            raise InvalidTransition(f"{self._state} -> {new} is not allowed")
        old, self._state = self._state, new
        log.debug("state %s -> %s", old, new)

    @property
    def serving(self) -> bool:
        """True when new requests are accepted."""
        return self._state in (WorkerState.IDLE, WorkerState.BUSY)
