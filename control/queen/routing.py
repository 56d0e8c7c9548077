"""Which worker takes a request (DESIGN §4 "Queen"): a ready worker of the model with a free
slot, the least busy first. The queen counts its own requests in flight: a worker's report
of its busy slots is up to a probe old."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from rbee.control.keeper.status import WorkerStatus
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.dataplane.protocol.states import SERVING_STATES


@dataclass(frozen=True)
class Route:
    worker: WorkerStatus
    api_key: str | None


def serving(workers: Iterable[WorkerStatus], model_ref: str) -> list[WorkerStatus]:
    """The workers of the model that take requests (whether or not a slot is free)."""
    return [w for w in workers if w.model_ref == model_ref and w.state in SERVING_STATES]


def pick(
    workers: Iterable[WorkerStatus],
    model_ref: str,
    in_flight: Counter[str],
    registry: WorkerRegistry,
) -> Route | None:
    """The least busy serving worker of the model with a slot free, among those whose key
    the keeper holds (it spawned them); None when every one is full."""
    free: list[tuple[float, WorkerStatus, str | None]] = []
    for worker in serving(workers, model_ref):
        registered = registry.get(worker.worker_id)
        if registered is None:
            continue  # started by another keeper: its key is not ours to know
        busy = in_flight[worker.worker_id]
        if busy < worker.slots_total:
            free.append((busy / worker.slots_total, worker, registered.api_key))
    if not free:
        return None
    _, worker, api_key = min(free, key=lambda candidate: candidate[0])
    return Route(worker, api_key)
