"""Prometheus metrics of the queen (GET /metrics): requests routed per node, the queues and
their waits, and the time to the first byte of an answer through the queen."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class QueenMetrics:
    def __init__(self, queued: Callable[[], dict[str, int]]) -> None:
        self._queued = queued
        self.registry = CollectorRegistry()
        self.routed = Counter(
            "rbee_queen_requests_routed",
            "Requests sent to a worker",
            ["node"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "rbee_queen_queue_depth",
            "Requests waiting for a slot",
            ["model"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "rbee_queen_queue_wait_seconds",
            "Time a request waited for a slot (a worker's start included)",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "rbee_queen_time_to_first_byte_seconds",
            "From a request's arrival to the first byte of its answer (a stream's first token)",
            buckets=_SECONDS,
            registry=self.registry,
        )

    def routed_per_node(self) -> dict[str, int]:
        return {
            sample.labels["node"]: int(sample.value)
            for family in self.routed.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    async def endpoint(self, _request: Request) -> Response:
        self.queue_depth.clear()  # models whose queue emptied are not kept at their last depth
        for model, depth in self._queued().items():
            self.queue_depth.labels(model=model).set(depth)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
