"""HTTP plumbing shared by the worker and the hive: bodies, errors, bearer auth."""

from __future__ import annotations

import hmac
import json
import logging
import socket
from typing import TypeVar

from hypercorn.config import Config
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import MAX_BODY_BYTES
from .protocol import ApiError, ErrorCode, error_body

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, model: type[M], *, max_bytes: int = MAX_BODY_BYTES) -> M:
    """The request's JSON body validated as `model`; any client mistake raises ApiError."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(ErrorCode.INVALID_REQUEST, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ApiError:
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ApiError(
        ErrorCode.INVALID_REQUEST,
        f"invalid request: {summary}",
        details={"field": errors[0]["field"], "errors": errors},
    )


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        ErrorCode.INVALID_REQUEST,
        f"the body is larger than {max_bytes} bytes",
        status=413,
        details={"max_bytes": max_bytes},
    )


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_REQUEST
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(ErrorCode.INTERNAL_ERROR, "internal error; the server log has the details"),
        status_code=500,
    )


EXCEPTION_HANDLERS = {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected}


class BearerAuth:
    """ASGI middleware: `Authorization: Bearer KEY` on every path but the public ones.

    With no key configured (a loopback-only server) everything is open. Keys are compared
    in constant time.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, public_paths: frozenset[str]) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._public = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._key is None or scope["path"] in self._public:
            await self.app(scope, receive, send)
            return
        if not self.accepts(_bearer(scope)):
            response = JSONResponse(
                error_body(ErrorCode.INVALID_API_KEY, "missing or invalid API key"),
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def accepts(self, presented: bytes) -> bool:
        return self._key is not None and hmac.compare_digest(presented, self._key)


def _bearer(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: the OS picks); bound before the server so its URL is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, backlog=128)


def server_config(sock: socket.socket, *, graceful_timeout_s: float) -> Config:
    """Hypercorn serving `sock`, logging through `logging`, no access log."""
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout_s
    return config
