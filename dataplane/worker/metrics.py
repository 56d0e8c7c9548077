"""Prometheus metrics of one worker (GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response


class WorkerMetrics:
    def __init__(self, slots_total: int) -> None:
        self.registry = CollectorRegistry()
        self.tokens = Counter(
            "rbee_worker_tokens_generated", "Tokens generated", registry=self.registry
        )
        self.requests = Counter(
            "rbee_worker_requests",
            "Inference requests by how they ended",
            ["outcome"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "rbee_worker_time_to_first_token_seconds",
            "Time from request to first token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "rbee_worker_tokens_per_second",
            "Decode speed of each finished request",
            buckets=(1, 5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 400),
            registry=self.registry,
        )
        self.slots_busy = Gauge("rbee_worker_slots_busy", "Slots in use", registry=self.registry)
        self.slots_total = Gauge("rbee_worker_slots_total", "Slots", registry=self.registry)
        self.slots_total.set(slots_total)

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
