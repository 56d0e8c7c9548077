"""The hive's requests, answers and events (DESIGN §4 "Hive"): health, spawn, the workers
list, shutdown, the models catalog, downloads and their progress stream, log lines."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .backends import Backend
from .chat_templates import ChatTemplateName
from .states import ManagedState
from .wire import ErrorInfo, Message

ModelRefField = Annotated[str, Field(min_length=1, max_length=2048)]
MAX_WORKER_SLOTS = 64
# A worker's slots (requests served at once): the spawn's and the inventory's `[models.*]`.
WorkerSlots = Annotated[int, Field(ge=1, le=MAX_WORKER_SLOTS)]
DEFAULT_WORKER_SLOTS = 1

# How long a hive waits, by default, from a spawn to its worker's first callback: a spawn
# answers within it (after its preflight). The hive's setting and the client's deadline.
WORKER_START_TIMEOUT_S = 60.0


class HiveHealth(Message):
    """GET /v1/health. `executable` and `pid` only from a loopback hive started from a program
    file: the keeper tells by them which hive answers on a port."""

    omit_none = True

    status: str  # "alive"
    version: str
    api_version: str
    executable: str | None = None
    pid: int | None = None


class SpawnRequest(BaseModel):
    """POST /v1/workers/spawn: strict, unknown fields are errors. Without `ctx_size` the hive
    picks its default (lowered to the model's trained context)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model_ref: ModelRefField
    backend: Backend = "cpu"
    device: Annotated[int, Field(ge=0, le=64)] = 0
    slots: WorkerSlots = DEFAULT_WORKER_SLOTS
    ctx_size: Annotated[int, Field(ge=32, le=1 << 20)] = 2048
    # A built-in template the worker uses instead of the model's (`rbee-worker --chat-template`)
    chat_template: ChatTemplateName | None = None


class SpawnAnswer(Message):
    """The spawned worker, serving (its model may still be loading); `api_key` is its key."""

    worker_id: str
    url: str
    api_key: str
    state: ManagedState


class WorkerStateAnswer(Message):
    """The answer to a worker's ready callback and to POST /v1/workers/{id}/shutdown."""

    worker_id: str
    state: ManagedState


class WorkerRow(Message):
    """One worker of GET /v1/workers/list. Times are UTC ISO 8601 (`…Z`)."""

    worker_id: str
    state: ManagedState
    model_ref: str
    url: str  # "" until the worker serves
    pid: int | None
    backend: str
    device: int
    slots_total: int
    slots_busy: int
    created_at: str
    last_activity: str
    last_health_check: str | None
    error: str | None


class WorkersList(Message):
    """GET /v1/workers/list, with the node's idle timeout and free RAM (absent from old hives),
    so a dashboard needs one call per node."""

    workers: list[WorkerRow]
    idle_timeout_s: float | None = None
    ram_available_mb: int | None = None


class DownloadRequest(BaseModel):
    """POST /v1/models/download: strict, unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model_ref: ModelRefField


class DownloadAnswer(Message):
    """A download started (202, follow it by `download_id`) or the model already in the
    catalog (200, with `local_path`)."""

    omit_none = True

    download_id: str
    model_ref: str
    state: Literal["downloading", "complete", "failed"]
    local_path: str | None = None


class DownloadProgress(Message):
    stage: Literal["downloading"] = "downloading"
    bytes_downloaded: int
    bytes_total: int | None  # null while the size is unknown
    speed_mbps: float  # MB/s


class DownloadRetrying(Message):
    """Sent before each new attempt."""

    stage: Literal["retrying"] = "retrying"
    attempt: int
    attempts: int
    delay_ms: int
    error: str


class DownloadComplete(Message):
    stage: Literal["complete"] = "complete"
    local_path: str


class DownloadFailed(Message):
    stage: Literal["failed"] = "failed"
    error: ErrorInfo


# One event of GET /v1/models/download/progress, told apart by its `stage`.
DownloadEvent = Annotated[
    DownloadProgress | DownloadRetrying | DownloadComplete | DownloadFailed,
    Field(discriminator="stage"),
]
DOWNLOAD_EVENT: TypeAdapter[DownloadEvent] = TypeAdapter(DownloadEvent)


class ModelEntry(Message):
    """One model in a hive's catalog. `reference` is the canonical model reference."""

    reference: str
    provider: str
    local_path: str
    size_bytes: int
    sha256: str
    downloaded_at: str  # UTC ISO 8601, seconds


class ModelsList(Message):
    """GET /v1/models."""

    models: list[ModelEntry]


class LogLine(Message):
    """One of the hive's log lines (GET /v1/logs, and each event of its follow stream)."""

    seq: int
    ts: str  # UTC ISO 8601, milliseconds
    level: str
    logger: str
    message: str


class LogLines(Message):
    """GET /v1/logs without follow: the buffered lines."""

    lines: list[LogLine]
