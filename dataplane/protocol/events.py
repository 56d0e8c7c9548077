"""The inference SSE events (DESIGN §4): one JSON object per `data:` line, then `data: [DONE]`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .wire import ErrorCode


class StopReason(StrEnum):
    MAX_TOKENS = "max_tokens"
    EOS = "eos"
    STOP = "stop"
    CANCELED = "canceled"


def started_event(request_id: str, model: str) -> dict[str, Any]:
    return {"type": "started", "request_id": request_id, "model": model}


def token_event(token: str, index: int) -> dict[str, Any]:
    return {"type": "token", "token": token, "index": index}


def done_event(total_tokens: int, duration_ms: int, stop_reason: StopReason) -> dict[str, Any]:
    return {
        "type": "done",
        "done": True,
        "total_tokens": total_tokens,
        "duration_ms": duration_ms,
        "stop_reason": str(stop_reason),
    }


def error_event(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"code": str(code), "message": message}}
