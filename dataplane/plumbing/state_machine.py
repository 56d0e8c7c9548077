"""Named states and explicit tables of allowed transitions: `StateMachine`, the one mechanism.

The worker's own lifecycle (`rbee.dataplane.worker.lifecycle`) and the hive's view of each
worker (`rbee.control.hive.managed_worker`) are tables of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
S = TypeVar("S", bound=StrEnum)


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
