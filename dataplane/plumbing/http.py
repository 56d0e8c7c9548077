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

from rbee.dataplane.protocol.hosts import is_loopback_host
from rbee.dataplane.protocol.wire import (
    HTTP_IDLE_SERVER_S,
    MAX_BODY_BYTES,
    ApiError,
    ErrorCode,
    error_body,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, model: type[M], *, max_bytes: int = MAX_BODY_BYTES) -> M:
    """The request's JSON body validated as `model`; any client mistake raises ApiError."""
    return parse_body(await read_raw_body(request, max_bytes=max_bytes), model)


async def read_raw_body(request: Request, *, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request's body as sent, once it says it is JSON and fits `max_bytes`."""
    _require_json_content_type(request)
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
    return b"".join(chunks)


def parse_body(raw: bytes, model: type[M]) -> M:
    """A JSON object validated as `model`; ApiError naming the mistake otherwise."""
    try:
        data = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(ErrorCode.INVALID_REQUEST, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(ErrorCode.INVALID_REQUEST, "the body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _require_json_content_type(request: Request) -> None:
    """A JSON body must say so: a web page can send text/plain anywhere without asking the
    server first (a CORS "simple request"), but not application/json."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            ErrorCode.INVALID_REQUEST,
            f"the body must be sent with Content-Type: application/json, not "
            f"{media_type or 'none'} (curl: -H 'Content-Type: application/json')",
            status=415,
            details={"field": "content-type"},
        )


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


class BrowserGuard:
    """ASGI middleware: refuses what a web page in the user's browser could send.

    A server on loopback is reachable from every page the user opens. A page can post to it
    (cross-site request forgery), and with DNS rebinding (attacker.example resolving to
    127.0.0.1) it can even read the answers. Browsers always tell: the Host header of a
    rebinding page names the attacker's domain, and a cross-origin request carries an Origin.
    So a loopback server accepts only loopback names in Host, and every server refuses an
    Origin other than its own (rbee serves no web pages: no other origin has business here).
    A server on another address needs an API key, which a page does not have.
    """

    def __init__(self, app: ASGIApp, *, loopback: bool) -> None:
        self.app = app
        self._loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers", []))
            host = headers.get(b"host", b"").decode("latin-1")
            origin = headers.get(b"origin")
            why = None
            if self._loopback and host and not is_loopback_host(_hostname(host)):
                why = f"Host {host!r} is not a loopback name; this server serves only loopback"
            elif origin is not None and origin.decode("latin-1") != f"http://{host}":
                why = f"requests from web pages ({origin.decode('latin-1')}) are refused"
            if why is not None:
                log.warning("refused %s %s: %s", scope["method"], scope["path"], why)
                response = JSONResponse(error_body(ErrorCode.INVALID_REQUEST, why), status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    """The name part of a Host header ("[::1]:8080" → "::1", "localhost:80" → "localhost")."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


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
    config.keep_alive_timeout = HTTP_IDLE_SERVER_S
    return config
