"""The queen's dispatch rules on a cluster view set by hand: free slots first, the least busy
worker, then a bounded FIFO queue whose head takes the next slot that frees (or the first
request behind it that may use it); a worker whose slots others hold is passed over."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from conftest import free_port
from support.inventories import local_node, write_inventory
from support.registry import register_worker

from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.served_models import ModelSpec
from rbee.control.keeper.status import HiveState, NodeStatus, WorkerStatus
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.control.queen.cluster_view import ClusterView
from rbee.control.queen.dispatch import Dispatcher
from rbee.control.queen.settings import QueenSettings
from rbee.dataplane.protocol.events import Queued, Spawning
from rbee.dataplane.protocol.wire import ApiError, ErrorCode, Message

REF = "file:/models/tiny.gguf"


def worker(worker_id: str, slots: int, node: str = "local") -> WorkerStatus:
    return WorkerStatus(
        node=node,
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
        assert head.worker.worker_id == third.worker.worker_id and head.waited.queue_s > 0
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


def test_a_slot_the_head_may_not_use_goes_to_the_first_request_that_may(tmp_path: Path) -> None:
    """Two inventory models of one reference (one queue), each on its own node: a slot
    freed on b goes past the head (a's) to the first request of b's model."""
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("a", 1, tmp_path / "a"),
        local_node("b", 1, tmp_path / "b"),
        f'[models.on-a]\nref = "{REF}"\nnodes = ["a"]\n',
        f'[models.on-b]\nref = "{REF}"\nnodes = ["b"]\n',
    )
    registry = WorkerRegistry(tmp_path / "workers.db")
    keeper = Keeper(inventory, registry)
    view = ClusterView(keeper, refresh_s=60)
    for node in ("a", "b"):
        register_worker(registry, f"w-{node}", REF, "http://127.0.0.1:1")
        view.statuses[node] = NodeStatus(
            node, "local", HiveState.UP, "0.1.0", (worker(f"w-{node}", 1, node),)
        )
    queen = Dispatcher(keeper, view, QueenSettings())
    on_a, on_b = inventory.model("on-a"), inventory.model("on-b")

    async def scenario() -> None:
        held_a, held_b = await queen.acquire(on_a), await queen.acquire(on_b)
        head = asyncio.ensure_future(queen.acquire(on_a))
        await asyncio.sleep(0)
        behind = asyncio.ensure_future(queen.acquire(on_b))
        await asyncio.sleep(0)
        assert queen.queued() == {REF: 2}
        held_b.release()
        assert (await asyncio.wait_for(behind, 1)).worker.worker_id == "w-b"
        assert not head.done()
        held_a.release()
        assert (await asyncio.wait_for(head, 1)).worker.worker_id == "w-a"

    asyncio.run(scenario())


def test_a_worker_whose_slots_others_hold_is_passed_over_until_ours_frees_one(
    tmp_path: Path,
) -> None:
    """The worker refused a request (its slots busy with others' requests): the request
    waits at the head of the queue, and the worker takes none of ours until one of the
    queen's requests on it ends."""
    queen, spec, view = dispatcher(tmp_path, {"w-a": 2})

    async def scenario() -> None:
        ours, refused = await queen.acquire(spec), await queen.acquire(spec)
        later = asyncio.ensure_future(queen.acquire(spec))
        await asyncio.sleep(0)
        refused.release(taken_by_others=True)
        assert view.in_flight["w-a"] == 1 and not later.done()  # a slot by count: not ours
        heard: list[Message] = []
        again = asyncio.ensure_future(queen.acquire(spec, heard.append, again=True))
        await asyncio.sleep(0)
        assert heard == [Queued(position=1)] and queen.queued() == {REF: 2}
        ours.release()
        first, second = await asyncio.wait_for(asyncio.gather(again, later), 1)
        assert first.worker.worker_id == second.worker.worker_id == "w-a"
        assert view.in_flight["w-a"] == 2

    asyncio.run(scenario())


def test_a_request_refused_again_keeps_its_first_deadline(tmp_path: Path) -> None:
    queen, spec, _view = dispatcher(tmp_path, {"w-a": 1})

    async def scenario() -> None:
        refused = await queen.acquire(spec)
        refused.release(taken_by_others=True)
        deadline = asyncio.get_running_loop().time() + 0.2
        with pytest.raises(ApiError) as waited:
            await queen.acquire(spec, deadline=deadline, again=True)
        assert waited.value.code is ErrorCode.ALL_SLOTS_BUSY

    asyncio.run(scenario())


def test_a_request_waits_for_a_worker_that_is_loading_then_takes_it(tmp_path: Path) -> None:
    """A worker of ours still loading (started by `rbee infer`, say) will serve soon: the
    request waits for it rather than hearing that no node can serve the model."""
    queen, spec, view = dispatcher(tmp_path, {"w-a": 1})
    status = view.statuses["local"]
    loading = dataclasses.replace(status.workers[0], state="loading")
    view.statuses["local"] = dataclasses.replace(status, workers=(loading,))

    async def scenario() -> None:
        waiting = asyncio.ensure_future(queen.acquire(spec))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        view.statuses["local"] = status  # the next probe finds it idle
        queen.dispatch_all()
        lease = await asyncio.wait_for(waiting, 1)
        assert lease.worker.worker_id == "w-a"

    asyncio.run(scenario())


def test_a_start_that_fails_on_one_node_is_tried_on_the_next_at_once(tmp_path: Path) -> None:
    """Two allowed nodes whose hives (as the view has it) are up but answer nothing: the
    start on the first fails, the next is tried at once, and the request hears both and,
    when none is left, why."""
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("a", free_port(), tmp_path / "a"),
        local_node("b", free_port(), tmp_path / "b"),
        f'[models.tiny]\nref = "{REF}"\n',
    )
    keeper = Keeper(inventory, WorkerRegistry(tmp_path / "workers.db"))
    view = ClusterView(keeper, refresh_s=60)
    for name in ("a", "b"):
        view.statuses[name] = NodeStatus(name, "local", HiveState.UP, "0.1.0", ())
    queen = Dispatcher(keeper, view, QueenSettings())
    heard: list[Message] = []

    async def scenario() -> None:
        async with keeper:
            with pytest.raises(ApiError) as refused:
                await asyncio.wait_for(queen.acquire(inventory.model("tiny"), heard.append), 60)
        assert refused.value.status == 503 and "starting one failed" in refused.value.message

    asyncio.run(scenario())
    assert [e.node for e in heard if isinstance(e, Spawning)][:2] == ["a", "b"]


def test_a_model_given_with_its_checksum_is_served_by_the_workers_of_its_file(
    tmp_path: Path,
) -> None:
    """Hives name a worker's model by the reference without its `#sha256=`: the inventory's
    checksum must not keep the model's requests from its workers."""
    url = "https://models.example/tiny.gguf"
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("local", 1, tmp_path / "s")
        + f'[models.tiny]\nref = "{url}#sha256={"ab" * 32}"\nmax_workers_per_node = 1\n',
    )
    registry = WorkerRegistry(tmp_path / "workers.db")
    register_worker(registry, "w-a", url, "http://127.0.0.1:1")
    keeper = Keeper(inventory, registry)
    view = ClusterView(keeper, refresh_s=60)
    listed = dataclasses.replace(worker("w-a", 1), model_ref=url)
    view.statuses["local"] = NodeStatus("local", "local", HiveState.UP, "0.1.0", (listed,))
    queen = Dispatcher(keeper, view, QueenSettings())

    async def scenario() -> None:
        lease = await asyncio.wait_for(queen.acquire(inventory.model("tiny")), 5)
        assert lease.worker.worker_id == "w-a"
        lease.release()

    asyncio.run(scenario())


def test_a_request_before_the_first_probe_waits_for_it(tmp_path: Path) -> None:
    """Just after the queen starts no node has been probed: a request waits for the first
    probe (it was a 503 saying no node is up), then takes the worker the probe found."""
    queen, spec, view = dispatcher(tmp_path, {"w-a": 1})
    found = view.statuses.pop("local")

    async def scenario() -> None:
        waiting = asyncio.ensure_future(queen.acquire(spec))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        view.statuses["local"] = found  # the first probe lands
        queen.dispatch_all()
        lease = await asyncio.wait_for(waiting, 5)
        assert lease.worker.worker_id == "w-a"
        lease.release()

    asyncio.run(scenario())
