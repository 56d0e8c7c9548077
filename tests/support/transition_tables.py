"""Reading a transition table for its tests: the shortest way to each state, and every move
the table allows or refuses."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)


def shortest_paths(table: Mapping[S, frozenset[S]], initial: S) -> dict[S, tuple[S, ...]]:
    """Every state reachable from `initial`, with the moves that reach it first."""
    paths: dict[S, tuple[S, ...]] = {initial: ()}
    queue = deque([initial])
    while queue:
        state = queue.popleft()
        for new in sorted(table[state]):
            if new not in paths:
                paths[new] = (*paths[state], new)
                queue.append(new)
    return paths


def allowed(table: Mapping[S, frozenset[S]]) -> list[tuple[S, S]]:
    return [(old, new) for old in table for new in sorted(table[old])]


def refused(table: Mapping[S, frozenset[S]]) -> list[tuple[S, S]]:
    """Every move to another state that the table does not list."""
    return [(old, new) for old in table for new in table if new != old and new not in table[old]]
