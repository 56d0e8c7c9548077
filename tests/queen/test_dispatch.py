"""The queen's dispatch rules on a cluster view set by hand: free slots first, the least busy
worker, then a bounded FIFO queue whose head takes the next slot that frees."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from support.inventories import local_node, write_inventory
from support.registry import register_worker

from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.served_models import ModelSpec
from rbee.control.keeper.status import HiveState, NodeStatus, WorkerStatus
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.control.queen.cluster_view import ClusterView
from rbee.control.queen.dispatch import Dispatcher
from rbee.control.queen.settings import QueenSettings
from rbee.dataplane.protocol.wire import ApiError, ErrorCode

REF = "file:/models/tiny.gguf"


def worker(worker_id: str, slots: int) -> WorkerStatus:
    return WorkerStatus(
        node="local",
        worker_id=worker_id,
        model_ref=REF,
        state="idle",
        slots_busy=0,
        slots_total=slots,
        url="http://127.0.0.1:1",
        last_tokens_per_s=None,
        idle_s=None,
        idle_timeout_s=None,
        error=None,
    )


def dispatcher(
    tmp_path: Path, slots: dict[str, int], **settings: float
) -> tuple[Dispatcher, ModelSpec, ClusterView]:
    """A dispatcher over one up node whose workers (id → slots) this keeper registered;
    the node is at its worker cap, so nothing is spawned."""
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("local", 1, tmp_path / "s")
        + f'[models.tiny]\nref = "{REF}"\nmax_workers_per_node = {len(slots)}\n',
    )
    registry = WorkerRegistry(tmp_path / "workers.db")
    for worker_id in slots:
        register_worker(registry, worker_id, REF, "http://127.0.0.1:1")
    keeper = Keeper(inventory, registry)
    view = ClusterView(keeper, refresh_s=60)
    view.statuses["local"] = NodeStatus(
        "local",
        "local",
        HiveState.UP,
        "0.1.0",
        tuple(worker(w, n) for w, n in slots.items()),
    )
    queen = Dispatcher(keeper, view, QueenSettings(**settings))  # type: ignore[arg-type]
    return queen, inventory.model("tiny"), view


def test_the_least_busy_worker_then_the_queue_in_order(tmp_path: Path) -> None:
    queen, spec, _view = dispatcher(tmp_path, {"w-a": 2, "w-b": 1})

    async def scenario() -> None:
        first, second, third = [await queen.acquire(spec) for _ in range(3)]
        assert sorted(x.worker.worker_id for x in (first, second, third)) == [
            "w-a",
            "w-a",
            "w-b",
        ]
        waiting = [asyncio.ensure_future(queen.acquire(spec)) for _ in range(2)]
        await asyncio.sleep(0)
        assert queen.queued() == {REF: 2} and not any(w.done() for w in waiting)
        third.release()
        head = await asyncio.wait_for(waiting[0], 1)
        assert head.worker.worker_id == third.worker.worker_id and head.queued_s > 0
        assert not waiting[1].done()
        first.release()
        assert (await asyncio.wait_for(waiting[1], 1)).worker.worker_id == "w-a"
        assert queen.queued() == {}

    asyncio.run(scenario())


def test_a_full_queue_and_a_long_wait_are_503s(tmp_path: Path) -> None:
    queen, spec, view = dispatcher(tmp_path, {"w-a": 1}, queue_max=1, queue_wait_s=0.3)

    async def scenario() -> None:
        held = await queen.acquire(spec)
        waiting = asyncio.ensure_future(queen.acquire(spec))
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as full:
            await queen.acquire(spec)
        assert full.value.code is ErrorCode.ALL_SLOTS_BUSY and full.value.status == 503
        assert full.value.headers["Retry-After"] == "1"
        with pytest.raises(ApiError) as waited:
            await waiting
        assert "within 0.3 s" in waited.value.message
        held.release()
        assert view.in_flight["w-a"] == 0

    asyncio.run(scenario())


def test_a_request_that_leaves_the_queue_takes_no_slot(tmp_path: Path) -> None:
    queen, spec, view = dispatcher(tmp_path, {"w-a": 1})

    async def scenario() -> None:
        held = await queen.acquire(spec)
        gone = asyncio.ensure_future(queen.acquire(spec))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert queen.queued() == {}
        held.release()
        assert view.in_flight["w-a"] == 0
        again = await asyncio.wait_for(queen.acquire(spec), 1)
        assert again.worker.worker_id == "w-a"

        # The slot is granted in the very tick the client leaves: it comes back.
        late = asyncio.ensure_future(queen.acquire(spec))
        await asyncio.sleep(0)
        again.release()
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert view.in_flight["w-a"] == 0
        assert (await asyncio.wait_for(queen.acquire(spec), 1)).worker.worker_id == "w-a"

    asyncio.run(scenario())
