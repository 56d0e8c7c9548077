"""The hive's view of a worker: its transition table, and the places where a move the table
refuses is expected (a worker's report older than what the hive knows) rather than a bug."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.transition_tables import allowed, refused, shortest_paths

from rbee.control.hive.managed_worker import MANAGED_TRANSITIONS as TRANSITIONS
from rbee.control.hive.managed_worker import ManagedState as S
from rbee.control.hive.managed_worker import ManagedWorker, WorkerSpec
from rbee.control.hive.pool import WorkerPool
from rbee.control.hive.settings import HiveSettings
from rbee.dataplane.plumbing.state_machine import InvalidTransition
from rbee.dataplane.protocol.states import WorkerState
from rbee.dataplane.protocol.wire import ApiError, ErrorCode
from rbee.dataplane.protocol.worker_api import ReadyCallback, WorkerHealth

PATHS = shortest_paths(TRANSITIONS, S.STARTING)
# Stands in for rbee-worker where only the process matters (the pool's bookkeeping is under
# test, and the reports are the test's to send): reads its key, then waits for a signal.
SLEEPER = (sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)")


def _worker(tmp_path: Path, state: S = S.STARTING) -> ManagedWorker:
    worker = ManagedWorker(
        "worker-test",
        WorkerSpec("file:/m.gguf", Path("/m.gguf")),
        tmp_path / "w.log",
        tmp_path / "w.json",
    )
    for step in PATHS[state]:
        worker.to(step)
    assert worker.state is state
    return worker


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------- the table


def test_every_state_has_a_row_and_is_reachable_from_starting() -> None:
    assert set(TRANSITIONS) == set(S)
    assert set(PATHS) == set(S)


@pytest.mark.parametrize(("old", "new"), allowed(TRANSITIONS))
def test_every_allowed_transition_is_accepted(old: S, new: S, tmp_path: Path) -> None:
    worker = _worker(tmp_path, old)
    worker.to(new)
    assert worker.state is new


@pytest.mark.parametrize(("old", "new"), refused(TRANSITIONS))
def test_every_refused_transition_is_logged_and_raises(
    old: S, new: S, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker(tmp_path, old)
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(InvalidTransition, match=f"-> {new}"):
        worker.to(new)
    assert worker.state is old
    assert _warnings(caplog) == [f"worker-test: refused transition {old} -> {new}"]


@pytest.mark.parametrize("state", list(S))
def test_staying_in_a_state_is_a_silent_no_op(
    state: S, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker(tmp_path, state)
    with caplog.at_level(logging.WARNING):
        worker.to(state)
    assert worker.state is state
    assert not caplog.records


def test_stopped_and_crashed_are_the_only_final_states() -> None:
    assert [state for state, row in TRANSITIONS.items() if not row] == [S.STOPPED, S.CRASHED]


# ---------------------------------------------------------------------------- reports


@pytest.mark.parametrize(
    ("held", "reported", "after"),
    [
        (S.LOADING, "idle", S.IDLE),
        (S.IDLE, "busy", S.BUSY),
        (S.UNRESPONSIVE, "busy", S.BUSY),  # answers again
        (S.UNRESPONSIVE, "failed", S.FAILED),
        # Older than what the hive knows: kept quietly.
        (S.DRAINING, "idle", S.DRAINING),  # answered before the hive began to stop it
        (S.IDLE, "loading", S.IDLE),  # a probe's answer landing after the ready callback
        (S.STOPPED, "busy", S.STOPPED),
        (S.CRASHED, "idle", S.CRASHED),
        (S.FAILED, "idle", S.FAILED),
    ],
)
def test_a_report_is_taken_unless_the_hive_knows_more(
    held: S, reported: str, after: S, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker(tmp_path, held)
    with caplog.at_level(logging.WARNING):
        worker.observe(_health(reported))
    assert worker.state is after
    assert not caplog.records


# ---------------------------------------------------------------------------- stop


def test_a_failed_worker_stops_through_draining_and_a_second_stop_does_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker(tmp_path)
    worker.start(SLEEPER, host="127.0.0.1", callback_url="http://127.0.0.1:9")
    worker.to(S.LOADING)
    worker.to(S.FAILED)

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            with caplog.at_level(logging.WARNING):
                await worker.stop(client, graceful_s=5, terminate_s=5)
                assert worker.state is S.STOPPED
                await worker.stop(client, graceful_s=5, terminate_s=5)

    asyncio.run(asyncio.wait_for(main(), 30))
    assert worker.state is S.STOPPED
    assert worker.exited() is not None
    assert _warnings(caplog) == []


# ---------------------------------------------------------------------------- the pool


def _pool(tmp_path: Path, http: httpx.AsyncClient) -> WorkerPool:
    settings = HiveSettings(
        state_dir=tmp_path,
        port=9,  # the callbacks come from the test, not the stand-in
        worker_command=SLEEPER,
        worker_start_timeout_s=20,
        terminate_stop_s=5,
    )
    return WorkerPool(settings, http)


async def _starting(pool: WorkerPool) -> ManagedWorker:
    """The worker a spawn just started, once the pool holds it."""
    while not pool.list():
        await asyncio.sleep(0.01)
    return pool.list()[0]


def _health(state: str) -> WorkerHealth:
    """A worker's /health answer reporting `state`, no slot busy."""
    return WorkerHealth(
        state=WorkerState(state),
        worker_id="w",
        model_ref="file:/m",
        slots_total=1,
        slots_busy=0,
        idle_s=0.0,
        last_tokens_per_s=None,
        version="0.1.0",
    )


def _report(worker: ManagedWorker, state: str, **extra: Any) -> ReadyCallback:
    return ReadyCallback.model_validate(
        {"worker_id": worker.worker_id, "state": state, "url": "", **extra}
    )


def test_ready_callbacks_move_a_worker_on_from_starting(tmp_path: Path) -> None:
    async def main() -> list[S]:
        async with httpx.AsyncClient() as http:
            pool = _pool(tmp_path, http)
            spawning = asyncio.create_task(pool.spawn(WorkerSpec("file:/m", Path("/m"))))
            worker = await _starting(pool)
            seen = [worker.state]
            pool.accept_callback(worker.api_key, _report(worker, "loading"))
            assert await spawning is worker
            seen.append(worker.state)
            worker.observe(_health("idle"))  # a probe saw it serve first
            pool.accept_callback(worker.api_key, _report(worker, "idle"))
            seen.append(worker.state)
            await pool.stop_all()
            seen.append(worker.state)
            return seen

    seen = asyncio.run(asyncio.wait_for(main(), 60))
    assert seen == [S.STARTING, S.LOADING, S.IDLE, S.STOPPED]


@pytest.mark.parametrize("late", ["idle", "failed"])
def test_a_callback_that_lands_after_a_stop_began_leaves_the_worker_draining(
    late: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen in test_hive_app: a worker stopped while it loads sends its ready callback."""

    async def main() -> tuple[S, S]:
        async with httpx.AsyncClient() as http:
            pool = _pool(tmp_path, http)
            spawning = asyncio.create_task(pool.spawn(WorkerSpec("file:/m", Path("/m"))))
            worker = await _starting(pool)
            pool.accept_callback(worker.api_key, _report(worker, "loading"))
            await spawning
            stopping = asyncio.create_task(pool.stop(worker.worker_id))
            await asyncio.sleep(0)  # the stop has begun: draining
            extra = (
                {"error": {"code": "BACKEND_UNAVAILABLE", "message": "no"}}
                if late == "failed"
                else {}
            )
            answer = pool.accept_callback(worker.api_key, _report(worker, late, **extra))
            during = answer.state
            await stopping
            return during, worker.state

    with caplog.at_level(logging.WARNING):
        during, after = asyncio.run(asyncio.wait_for(main(), 60))
    assert (during, after) == (S.DRAINING, S.STOPPED)
    assert not [m for m in _warnings(caplog) if "refused" in m]


def test_a_worker_stopped_while_it_starts_fails_the_spawn_with_its_exit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hive shutting down (or a DELETE) during a spawn: the spawn says the worker exited."""

    async def main() -> ApiError:
        async with httpx.AsyncClient() as http:
            pool = _pool(tmp_path, http)
            spawning = asyncio.create_task(pool.spawn(WorkerSpec("file:/m", Path("/m"))))
            await _starting(pool)
            await pool.stop_all()
            with pytest.raises(ApiError) as failed:
                await spawning
            return failed.value

    with caplog.at_level(logging.WARNING):
        error = asyncio.run(asyncio.wait_for(main(), 60))
    assert error.code is ErrorCode.WORKER_CRASHED
    assert "exited with code" in error.message
    assert not [m for m in _warnings(caplog) if "refused" in m]
