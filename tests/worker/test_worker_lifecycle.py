import logging

import pytest

from support.transition_tables import allowed, refused, shortest_paths

from rbee.dataplane.plumbing.state_machine import InvalidTransition
from rbee.dataplane.protocol.states import WorkerState as S
from rbee.dataplane.worker.lifecycle import WORKER_TRANSITIONS as TRANSITIONS
from rbee.dataplane.worker.lifecycle import Lifecycle

PATHS = shortest_paths(TRANSITIONS, S.STARTING)


def _at(state: S) -> Lifecycle:
    life = Lifecycle()
    for step in PATHS[state]:
        life.to(step)
    assert life.state is state
    return life


def test_happy_path_through_every_serving_state() -> None:
    life = Lifecycle()
    for state in (S.LOADING, S.IDLE, S.BUSY, S.IDLE, S.DRAINING, S.STOPPED):
        life.to(state)
    assert life.state is S.STOPPED


def test_load_failure_then_shutdown() -> None:
    life = Lifecycle()
    life.to(S.LOADING)
    life.to(S.FAILED)
    assert not life.serving
    life.to(S.DRAINING)
    life.to(S.STOPPED)


def test_every_state_has_a_row_and_is_reachable_from_starting() -> None:
    assert set(TRANSITIONS) == set(S)
    assert set(PATHS) == set(S)


@pytest.mark.parametrize(("old", "new"), allowed(TRANSITIONS))
def test_every_allowed_transition_is_accepted(old: S, new: S) -> None:
    life = _at(old)
    life.to(new)
    assert life.state is new


@pytest.mark.parametrize(("old", "new"), refused(TRANSITIONS))
def test_every_refused_transition_is_logged_and_raises(
    old: S, new: S, caplog: pytest.LogCaptureFixture
) -> None:
    life = _at(old)
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(InvalidTransition, match=f"-> {new}"):
        life.to(new)
    assert life.state is old
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"worker: refused transition {old} -> {new}")
    ]


@pytest.mark.parametrize("state", list(S))
def test_staying_in_a_state_is_a_silent_no_op(state: S, caplog: pytest.LogCaptureFixture) -> None:
    life = _at(state)
    with caplog.at_level(logging.WARNING):
        life.to(state)
    assert life.state is state
    assert not caplog.records


def test_stopped_is_the_only_final_state() -> None:
    assert [state for state, row in TRANSITIONS.items() if not row] == [S.STOPPED]
