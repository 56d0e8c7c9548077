import pytest

from rbee.dataplane.lifecycle import WORKER_TRANSITIONS as TRANSITIONS
from rbee.dataplane.lifecycle import InvalidTransition, Lifecycle
from rbee.dataplane.protocol import WorkerState as S


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


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ((), S.BUSY),
        ((S.LOADING,), S.BUSY),
        ((S.LOADING, S.FAILED), S.IDLE),
        ((S.LOADING, S.IDLE, S.DRAINING), S.IDLE),
    ],
)
def test_disallowed_transitions_raise(path: tuple[S, ...], bad: S) -> None:
    life = Lifecycle()
    for state in path:
        life.to(state)
    with pytest.raises(InvalidTransition):
        life.to(bad)


def test_every_state_has_a_row_and_stopped_is_final() -> None:
    assert set(TRANSITIONS) == set(S)
    assert TRANSITIONS[S.STOPPED] == frozenset()
