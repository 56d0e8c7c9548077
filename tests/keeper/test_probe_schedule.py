"""ProbeSchedule: when a live view probes each node, and how long a node has been silent."""

from __future__ import annotations

from rbee.control.keeper.probe_schedule import (
    FULL_PROBE_EVERY,
    MAX_BACKOFF_S,
    QUIET_AFTER,
    QUIET_FACTOR,
    STUCK_GRACE_S,
    ProbeSchedule,
)
from rbee.control.keeper.status import HiveState, NodeStatus, WorkerStatus

REFRESH_S = 2.0


def status(state: HiveState) -> NodeStatus:
    return NodeStatus("n", "h", state)


def probe_once(schedule: ProbeSchedule, now: float, state: HiveState) -> float:
    """One probe of n at `now`, answered at once; when n is due next."""
    assert schedule.due(now) == ["n"]
    number = schedule.started("n", now, deadline_s=5.0)
    assert schedule.due(now) == []  # not twice at once
    assert schedule.finished("n", number, status(state), now)
    wait = REFRESH_S / 2
    while schedule.due(now + wait) != ["n"]:
        wait += REFRESH_S / 2
    return wait


def test_an_up_node_keeps_the_cadence_a_down_one_backs_off_to_the_limit() -> None:
    schedule = ProbeSchedule(["n"], REFRESH_S)
    assert [probe_once(schedule, 100.0 * i, HiveState.UP) for i in range(3)] == [REFRESH_S] * 3
    waits = [probe_once(schedule, 1000.0 * i, HiveState.DOWN) for i in range(1, 8)]
    assert waits == [2.0, 4.0, 8.0, 16.0, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert probe_once(schedule, 9000.0, HiveState.UP) == REFRESH_S  # back up: back to pace


def test_soon_probes_a_backed_off_node_at_the_next_tick() -> None:
    schedule = ProbeSchedule(["n"], REFRESH_S)
    for i in range(6):
        probe_once(schedule, 1000.0 * i, HiveState.UNREACHABLE)
    assert schedule.due(5001.0) == []
    schedule.soon("n")
    assert schedule.due(5001.0) == ["n"]


def test_an_up_node_is_asked_everything_every_few_probes_and_after_soon() -> None:
    schedule = ProbeSchedule(["n"], REFRESH_S)
    full = []
    for i in range(2 * FULL_PROBE_EVERY):
        full.append(not schedule.light("n"))
        probe_once(schedule, 100.0 * i, HiveState.UP)
    assert full == [True, *[False] * (FULL_PROBE_EVERY - 1)] * 2
    schedule.soon("n")
    assert not schedule.light("n")


def test_soon_while_a_light_probe_runs_brings_a_full_one_right_after_it() -> None:
    """An action that ends while a light probe of its node runs (a download) must see its
    result: that probe cannot have asked for the catalog, so a full one follows at once."""
    schedule = ProbeSchedule(["n"], REFRESH_S)
    probe_once(schedule, 0.0, HiveState.UP)  # full; the next ones are light
    running = schedule.started("n", 100.0, deadline_s=5.0)
    schedule.soon("n")
    assert schedule.finished("n", running, status(HiveState.UP), 100.5)
    assert schedule.due(100.5) == ["n"]
    assert not schedule.light("n")


def test_a_stuck_probe_is_given_up_and_its_late_answer_dropped() -> None:
    schedule = ProbeSchedule(["n"], REFRESH_S)
    late = schedule.started("n", 0.0, deadline_s=5.0)
    assert schedule.stuck(5.0 + STUCK_GRACE_S - 0.1) == []
    assert schedule.stuck(5.0 + STUCK_GRACE_S + 0.1) == ["n"]
    schedule.give_up("n", status(HiveState.NOT_ANSWERING), 8.0)
    assert not schedule.finished("n", late, status(HiveState.UP), 9.0)  # before the next
    assert schedule.silent_s("n", 10.0) == 10.0  # silent since its probe started
    assert schedule.due(10.0) == ["n"]
    number = schedule.started("n", 10.0, deadline_s=5.0)
    assert not schedule.finished("n", late, status(HiveState.UP), 11.0)  # stale
    assert schedule.silent_s("n", 11.0) == 11.0
    assert schedule.finished("n", number, status(HiveState.UP), 11.0)
    assert schedule.silent_s("n", 11.0) is None


def test_silence_counts_from_the_first_unanswered_probe() -> None:
    schedule = ProbeSchedule(["n"], REFRESH_S)
    probe_once(schedule, 0.0, HiveState.UP)
    assert schedule.silent_s("n", 1.0) is None
    for start in (10.0, 20.0, 30.0):
        number = schedule.started("n", start, deadline_s=5.0)
        schedule.finished("n", number, status(HiveState.NOT_ANSWERING), start + 5)
    assert schedule.silent_s("n", 52.0) == 42.0
    number = schedule.started("n", 60.0, deadline_s=5.0)
    schedule.finished("n", number, status(HiveState.DOWN), 60.0)  # it answers: refused
    assert schedule.silent_s("n", 61.0) is None


def test_an_up_node_whose_workers_stand_still_is_probed_less_until_they_change() -> None:
    schedule = ProbeSchedule(["n"], REFRESH_S)
    waits = [probe_once(schedule, 100.0 * i, HiveState.UP) for i in range(QUIET_AFTER + 2)]
    assert waits == [REFRESH_S] * QUIET_AFTER + [REFRESH_S * QUIET_FACTOR] * 2
    busy = NodeStatus("n", "h", HiveState.UP, workers=(worker("busy"),))
    number = schedule.started("n", 1000.0, deadline_s=5.0)
    schedule.finished("n", number, busy, 1000.0)
    assert schedule.due(1000.0 + REFRESH_S) == ["n"]  # a change: back to the refresh


def worker(state: str) -> WorkerStatus:
    return WorkerStatus("n", "w1", "pkg:m", state, 1, 1, "http://w", None, None, None, None)
