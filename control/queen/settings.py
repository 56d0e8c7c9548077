"""The queen's settings and their defaults, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from rbee.control.keeper.settings import DEFAULT_REFRESH_S
from rbee.dataplane.protocol.hosts import is_loopback_host

DEFAULT_LISTEN = "127.0.0.1:7833"
RETRY_AFTER_S = 1  # what a 503 tells a client to wait before it asks again
LOG_FILE = "queen.log"  # in $RBEE_HOME: what `rbee queen start` runs writes
START_TIMEOUT_S = 30.0  # `rbee queen start`: the queen must answer /health within this
STATUS_TIMEOUT_S = 3.0  # `rbee queen status`: a running queen answers at once
# `rbee queen stop`: SIGTERM, then SIGKILL past this (its streams, then --stop-hives)
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class QueenSettings:
    host: str = "127.0.0.1"
    port: int = 7833
    api_key: str | None = None  # what clients send; required off loopback
    refresh_s: float = DEFAULT_REFRESH_S  # an up node's probe interval (probe_schedule.py)
    connect_timeout_s: float = 5.0  # reaching a worker
    whole_answer_timeout_s: float = 600.0  # a `stream: false` answer comes all at once
    queue_max: int = 64  # requests that may wait per model; more get 503
    queue_wait_s: float = 120.0  # how long a request may wait for a slot; then 503
    load_timeout_s: float = 300.0  # a worker the queen starts must load within this
    graceful_stop_s: float = 5.0  # streams in flight get this long when the queen stops
    stop_hives: bool = False  # at exit, stop the hives this queen started
    stop_hives_timeout_s: float = 30.0  # ...all of them, within this
    hive_retry_s: float = 30.0  # a hive that could not start is tried again after this,
    hive_retry_max_s: float = 300.0  # doubling up to this, until one answers

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)
