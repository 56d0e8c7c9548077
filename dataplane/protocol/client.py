"""The HTTP client side shared by HiveClient and WorkerClient: JSON calls, SSE, errors."""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Self, TypeVar

import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import BaseModel, TypeAdapter, ValidationError

from .wire import SILENCE_LIMIT_S, SSE_DONE, ErrorCode

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# How pydantic says an event's `type` is none of the union's (or missing).
UNKNOWN_TYPE_ERRORS = frozenset({"union_tag_invalid", "union_tag_not_found"})


class RemoteError(Exception):
    """The other side answered with an error envelope, or with something unreadable."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}
        self.retry_after = retry_after  # a busy server's Retry-After header, as sent


class InvalidResponse(RemoteError):
    """A 2xx answer whose body is not the JSON this endpoint sends: not our peer, or broken."""

    def __init__(self, peer: str, path: str) -> None:
        super().__init__(
            ErrorCode.INTERNAL_ERROR, f"Invalid response from {peer}", details={"path": path}
        )


class PeerSilent(RemoteError):
    """The peer sent nothing, not even a keep-alive, for the whole silence limit (or, for a
    call that takes long by nature, its own deadline)."""

    def __init__(self, peer: str, silent_s: float) -> None:
        super().__init__(
            ErrorCode.CONNECTION_TIMEOUT, f"{peer} stopped answering for {silent_s:g} s"
        )


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details")
    except (ValueError, KeyError, TypeError):
        raise RemoteError(
            ErrorCode.INTERNAL_ERROR,
            f"HTTP {response.status_code}: {response.text[:200]}",
            status=response.status_code,
        ) from None
    raise RemoteError(
        code,
        message,
        status=response.status_code,
        details=details,
        retry_after=response.headers.get("Retry-After"),
    )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's verifying TLS context, built once per process: building one loads the CA
    bundle (about 40 ms of CPU), and the keeper and queen make a client per probe."""
    return httpx.create_ssl_context()


class ApiClient:
    """One base URL, one optional bearer key, one connection pool.

    Every call has a deadline: JSON calls `timeout_s` for each step (connect, write, each
    read), streams SILENCE_LIMIT_S between two reads. `peer` names the other side in errors.
    `http` is a connection pool to borrow instead (the hive's, shared by its workers' clients):
    closing this client leaves it open.
    """

    peer = "the server"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        peer: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url
        if peer is not None:
            self.peer = peer
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout_s, verify=tls_context())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}{path}"

    async def _json(
        self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any
    ) -> Any:
        kwargs["timeout"] = self._timeout_s if timeout_s is None else timeout_s
        response = await self._http.request(
            method, self._url(path), headers=self._headers, **kwargs
        )
        raise_for_error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise InvalidResponse(self.peer, path) from None

    async def _answer(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> M:
        """The answer read as `model` (the protocol's message); InvalidResponse otherwise."""
        body = await self._json(method, path, timeout_s=timeout_s, **kwargs)
        try:
            return model.model_validate(body)
        except ValidationError:
            raise InvalidResponse(self.peer, path) from None

    async def _events(
        self,
        method: str,
        path: str,
        event: TypeAdapter[T],
        *,
        skip_unknown: bool = False,
        **kwargs: Any,
    ) -> AsyncGenerator[T, None]:
        """The events of an SSE stream read as `event`; InvalidResponse at one that is not.
        With `skip_unknown`, an event of a type this version does not know (a newer peer's)
        is skipped, as an unknown field is."""
        async with aclosing(self._sse(method, path, **kwargs)) as source:
            async for obj in source:
                try:
                    parsed = event.validate_python(obj)
                except ValidationError as exc:
                    unknown = all(e["type"] in UNKNOWN_TYPE_ERRORS for e in exc.errors())
                    if skip_unknown and unknown:
                        continue
                    raise InvalidResponse(self.peer, path) from None
                yield parsed

    async def _sse(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON objects of an SSE stream, up to `[DONE]`; PeerSilent past the limit."""
        silence_s = SILENCE_LIMIT_S  # read when the stream opens, so tests can lower it
        kwargs["timeout"] = httpx.Timeout(self._timeout_s, read=silence_s)
        try:
            async with aconnect_sse(
                self._http, method, self._url(path), headers=dict(self._headers), **kwargs
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise_for_error(source.response)
                async for sse in source.aiter_sse():
                    if sse.data == SSE_DONE:
                        return
                    try:
                        event = json.loads(sse.data)
                    except ValueError:
                        raise InvalidResponse(self.peer, path) from None
                    if not isinstance(event, dict):
                        raise InvalidResponse(self.peer, path)
                    yield event
        except httpx.ReadTimeout:
            raise PeerSilent(self.peer, silence_s) from None
        except SSEError:  # a 2xx answer that is not an event stream
            raise InvalidResponse(self.peer, path) from None
