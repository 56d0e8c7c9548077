"""Named states and explicit tables of allowed transitions.

`StateMachine` is the one mechanism; `WORKER_TRANSITIONS` is the worker's own lifecycle
(DESIGN §4). The hive keeps its view of each worker with a table of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Generic, TypeVar

from .protocol import SERVING_STATES, WorkerState

log = logging.getLogger(__name__)
S = TypeVar("S", bound=StrEnum)

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


class InvalidTransition(RuntimeError):
    pass


class StateMachine(Generic[S]):
    """Holds the current state; every change goes through `to()` and the table."""

    def __init__(
        self, transitions: Mapping[S, frozenset[S]], initial: S, *, name: str = ""
    ) -> None:
        self._table = transitions
        self._state = initial
        self._name = name

    @property
    def state(self) -> S:
        return self._state

    def can(self, new: S) -> bool:
        return new in self._table[self._state]

    def to(self, new: S) -> None:
        """Moves to `new`, or logs and raises InvalidTransition when the table refuses it.

        Staying in the current state is a no-op, so a repeated report or request is harmless.
        """
        if new is self._state:
            return
        name = self._name or "state"
        if not self.can(new):
            log.warning("%s: refused transition %s -> %s", name, self._state, new)
            raise InvalidTransition(f"{name}: {self._state} -> {new} is not allowed")
        old, self._state = self._state, new
        log.debug("%s: %s -> %s", name, old, new)


class Lifecycle(StateMachine[WorkerState]):
    """The worker process's own lifecycle."""

    def __init__(self) -> None:
        super().__init__(WORKER_TRANSITIONS, WorkerState.STARTING, name="worker")

    @property
    def serving(self) -> bool:
        """True when new requests are accepted."""
        return self.state in SERVING_STATES
