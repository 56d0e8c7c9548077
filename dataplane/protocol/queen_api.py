"""The queen's answers (DESIGN §4 "Queen") besides the worker's events it passes on: its
health and GET /v1/cluster, what it knows of the cluster and its own work."""

from __future__ import annotations

from .wire import Message


class QueenHealth(Message):
    """GET /health."""

    status: str  # "alive"
    version: str


class ClusterNode(Message):
    """A node as the queen's latest probe found it, and the requests it sent there."""

    name: str
    state: str  # the keeper's hive states: up, down, unreachable, …
    version: str | None = None
    problem: str | None = None  # in words, when the state is not plainly "up"
    checked_at: float | None = None  # Unix time of that probe
    routed: int = 0  # requests sent to a worker there since the queen started


class ClusterWorker(Message):
    node: str
    worker_id: str
    model_ref: str
    state: str
    slots_total: int
    in_flight: int  # the queen's requests on it now
    last_tokens_per_s: float | None = None


class ClusterReport(Message):
    """GET /v1/cluster: the nodes, the workers of the nodes that are up, and the requests
    waiting per model reference."""

    nodes: list[ClusterNode]
    workers: list[ClusterWorker]
    queued: dict[str, int]
