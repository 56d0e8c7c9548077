"""The inference SSE events (DESIGN §4): one JSON object per `data:` line, told apart by its
`type`, then `data: [DONE]`. The worker sends `started`, the tokens and one terminal event
(`done` or `error`); the queen's stream carries the request's own timeline before `started`
(`queued`, `spawning`, `loading`, `routed`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from .wire import ErrorInfo, Message


class StopReason(StrEnum):
    MAX_TOKENS = "max_tokens"
    EOS = "eos"
    STOP = "stop"
    CANCELED = "canceled"


class Started(Message):
    type: Literal["started"] = "started"
    request_id: str
    model: str


class Token(Message):
    type: Literal["token"] = "token"
    token: str
    index: int


class Done(Message):
    type: Literal["done"] = "done"
    done: Literal[True] = True  # DESIGN §4's `"done": true`, for clients that test it
    total_tokens: int
    duration_ms: int
    stop_reason: StopReason
    cached_tokens: int = 0  # prompt tokens a slot's KV cache already held (not decoded again)


class ErrorEvent(Message):
    type: Literal["error"] = "error"
    error: ErrorInfo


# One event of a worker's POST /v1/inference stream, told apart by its `type`.
InferenceEvent = Annotated[Started | Token | Done | ErrorEvent, Field(discriminator="type")]
INFERENCE_EVENT: TypeAdapter[InferenceEvent] = TypeAdapter(InferenceEvent)


# The queen's timeline of one request, before its `started`.


class Queued(Message):
    type: Literal["queued"] = "queued"
    position: int


class Spawning(Message):
    type: Literal["spawning"] = "spawning"
    node: str


class Loading(Message):
    type: Literal["loading"] = "loading"
    layers_loaded: int
    layers_total: int


class Routed(Message):
    type: Literal["routed"] = "routed"
    node: str
    worker_id: str
    # What the request waited for before (the queen's Server-Timing, docs/queen.md).
    queue_ms: float = 0.0
    spawn_ms: float = 0.0
    load_ms: float = 0.0


# One event of the queen's POST /v1/inference stream: the request's timeline, then its
# worker's events.
QueenInferenceEvent = Annotated[
    Queued | Spawning | Loading | Routed | Started | Token | Done | ErrorEvent,
    Field(discriminator="type"),
]
QUEEN_INFERENCE_EVENT: TypeAdapter[QueenInferenceEvent] = TypeAdapter(QueenInferenceEvent)
