"""What the keeper knows of a node and its workers at one moment (a probe's answer)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rbee.dataplane.protocol import hive_api
from rbee.dataplane.protocol.states import WorkerState


class HiveState(StrEnum):
    UP = "up"
    DOWN = "down"  # the node answers, its hive does not
    UNREACHABLE = "unreachable"  # the node itself cannot be reached (SSH)
    NOT_ANSWERING = "not answering"  # connected, but no answer within the probe's deadline
    VERSION_MISMATCH = "version mismatch"
    AUTH_FAILED = "auth failed"


@dataclass(frozen=True)
class WorkerStatus:
    node: str
    worker_id: str
    model_ref: str
    state: str
    slots_busy: int
    slots_total: int
    url: str
    last_tokens_per_s: float | None  # decode speed of its latest request (None: none yet)
    idle_s: float | None
    idle_timeout_s: float | None
    error: str | None

    @property
    def idle_left_s(self) -> float | None:
        """Seconds until the hive's idle timeout stops it (None unless it is idle)."""
        if self.state != WorkerState.IDLE or self.idle_s is None or self.idle_timeout_s is None:
            return None
        return max(0.0, self.idle_timeout_s - self.idle_s)


@dataclass(frozen=True)
class NodeStatus:
    name: str
    host: str  # "local" for the node the keeper runs on
    state: HiveState
    version: str | None = None
    workers: tuple[WorkerStatus, ...] = ()
    models: tuple[str, ...] = ()  # the catalog's references
    ram_available_mb: int | None = None
    problem: str | None = None  # in words, when the state is not plainly "up"
    suggestion: str | None = None

    @property
    def is_up(self) -> bool:
        return self.state is HiveState.UP


@dataclass(frozen=True)
class LogLine:
    ts: str
    level: str
    logger: str
    message: str

    @classmethod
    def of(cls, line: hive_api.LogLine) -> LogLine:
        return cls(line.ts, line.level, line.logger, line.message)

    def __str__(self) -> str:
        return f"{self.ts} {self.level:<7} {self.logger}: {self.message}"


def gigabytes(mb: int | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.1f} GB"
