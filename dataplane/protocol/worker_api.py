"""The worker's answers and events other processes read (DESIGN §4 "Worker"): GET /health,
GET /v1/ready, the loading progress stream, a whole answer (`stream: false`), the shutdown
answer, and the ready callback it POSTs to its hive."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from .events import StopReason
from .states import WorkerState
from .wire import ErrorInfo, Message


class WorkerHealth(Message):
    """GET /health: liveness for the hive, and its idle timer."""

    state: WorkerState
    worker_id: str
    model_ref: str
    slots_total: int
    slots_busy: int
    idle_s: float  # how long no request has been in flight (0 while one is)
    last_tokens_per_s: float | None  # decode speed of the latest finished request
    version: str
    # Which template chat requests get: "model", "gemma (fallback)", "chatml (override)";
    # None while loading (and from older workers).
    chat_template: str | None = None


class InferenceAnswer(Message):
    """POST /v1/inference with `stream: false`: the whole answer at once."""

    request_id: str
    model: str
    text: str
    total_tokens: int
    duration_ms: int
    stop_reason: StopReason
    cached_tokens: int = 0  # prompt tokens a slot's KV cache already held (not decoded again)


class ShutdownAnswer(Message):
    """POST /v1/admin/shutdown (202): the state the worker is in as it starts to stop."""

    state: WorkerState


class WorkerReadiness(Message):
    """GET /v1/ready: `{"ready": true, "state", "model_loaded": true}` once serving; else
    `{"ready": false, "state"}` with the progress (loading) or the error (failed)."""

    omit_none = True

    ready: bool
    state: WorkerState
    model_loaded: bool | None = None
    progress_url: str | None = None
    layers_loaded: int | None = None
    layers_total: int | None = None
    error: ErrorInfo | None = None


class LoadingProgress(Message):
    stage: Literal["loading_to_vram"] = "loading_to_vram"
    layers_loaded: int
    layers_total: int
    vram_mb: int


class LoadingReady(Message):
    stage: Literal["ready"] = "ready"


class LoadingFailed(Message):
    stage: Literal["failed"] = "failed"
    error: ErrorInfo


# One event of GET /v1/loading/progress, told apart by its `stage`.
LoadingEvent = Annotated[
    LoadingProgress | LoadingReady | LoadingFailed, Field(discriminator="stage")
]
LOADING_EVENT: TypeAdapter[LoadingEvent] = TypeAdapter(LoadingEvent)


class ReadyCallback(Message):
    """POST /v1/workers/ready (worker → hive, with the worker's own key), once it serves or
    failed to load. The hive reads worker_id, url, state and error; fields it does not know are
    allowed, as today, and `state` is any string (a state the hive does not know is ignored)."""

    model_config = ConfigDict(extra="allow")
    omit_none = True

    worker_id: Annotated[str, Field(min_length=1, max_length=64)]
    state: str
    url: str = ""
    model_ref: str | None = None
    backend: str | None = None
    device: int | None = None
    slots_total: int | None = None
    error: ErrorInfo | None = None
