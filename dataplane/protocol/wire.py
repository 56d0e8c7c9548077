"""The wire's ground rules, shared by worker, hive and keeper (DESIGN §4).

Versions, error codes and their HTTP statuses, the error envelope, and the limits every
stream and body keeps: keep-alive, silence, body size.
"""

from __future__ import annotations

import importlib.metadata
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

API_VERSION = "v1"
VERSION = importlib.metadata.version("rbee")

SSE_DONE = "[DONE]"
# DESIGN §4: every stream sends a keep-alive at least every 10 s, and every client treats 30 s
# of silence as a dead (or frozen) peer.
SSE_KEEPALIVE_S = 5.0
SILENCE_LIMIT_S = 30.0
MAX_BODY_BYTES = 1024 * 1024  # a larger request body gets 413
# An idle HTTP connection: servers keep it this long, and a client reuses one for a shorter
# while, so that it never sends on a connection the server is closing. Both outlast the
# dashboard's quiet probe interval (8 s): its probes reuse their connection and SSH channel
# instead of opening new ones (hypercorn's and httpx's defaults, 5 s, did not).
HTTP_IDLE_SERVER_S = 30.0
HTTP_IDLE_CLIENT_S = 20.0


class ErrorCode(StrEnum):
    CONNECTION_TIMEOUT = "CONNECTION_TIMEOUT"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    INSUFFICIENT_RAM = "INSUFFICIENT_RAM"
    VRAM_EXHAUSTED = "VRAM_EXHAUSTED"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    INVALID_API_KEY = "INVALID_API_KEY"
    ALL_SLOTS_BUSY = "ALL_SLOTS_BUSY"
    WORKER_CRASHED = "WORKER_CRASHED"
    LOADING_TIMEOUT = "LOADING_TIMEOUT"
    REQUEST_CANCELED = "REQUEST_CANCELED"
    INVALID_REQUEST = "INVALID_REQUEST"
    NOT_FOUND = "NOT_FOUND"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# The HTTP status each code is sent with when it is the answer to a request.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.CONNECTION_TIMEOUT: 504,
    ErrorCode.VERSION_MISMATCH: 409,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.DOWNLOAD_FAILED: 502,
    ErrorCode.INSUFFICIENT_RAM: 507,
    ErrorCode.VRAM_EXHAUSTED: 507,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.ALL_SLOTS_BUSY: 503,
    ErrorCode.WORKER_CRASHED: 502,
    ErrorCode.LOADING_TIMEOUT: 504,
    ErrorCode.REQUEST_CANCELED: 499,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INTERNAL_ERROR: 500,
}


class ApiError(Exception):
    """An error that travels to the client as the DESIGN §4 envelope."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else HTTP_STATUS[code]
        self.details = details or {}
        self.headers = dict(headers or {})
        if code is ErrorCode.INVALID_API_KEY:
            # RFC 6750: a 401 names the scheme the client should use.
            self.headers.setdefault("WWW-Authenticate", "Bearer")

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(
    code: ErrorCode | str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message, "details": details or {}}}


class Message(BaseModel):
    """A JSON message one process sends another. Read leniently: fields a newer peer adds are
    ignored (forward compatibility); `wire()` is the JSON object as sent."""

    model_config = ConfigDict(extra="ignore")
    # Whether fields left None are left out (optional fields) rather than sent as null.
    omit_none: ClassVar[bool] = False

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=self.omit_none)


class ErrorInfo(Message):
    """The `error` of a failed stage or event: `{code, message}` (a code may be one this
    version does not know, so it is read as a string)."""

    code: str
    message: str
