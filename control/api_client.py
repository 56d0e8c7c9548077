"""The HTTP client side shared by HiveClient and WorkerClient: JSON calls, SSE, errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from rbee.dataplane.protocol import SSE_DONE, ErrorCode


class RemoteError(Exception):
    """The other side answered with an error envelope, or with something unreadable."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details")
    except (ValueError, KeyError, TypeError):
        raise RemoteError(ErrorCode.INTERNAL_ERROR,
                          f"HTTP {response.status_code}: {response.text[:200]}",
                          status=response.status_code) from None
    raise RemoteError(code, message, status=response.status_code, details=details)


class ApiClient:
    """One base URL, one optional bearer key, one connection pool."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 10.0
                 ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        # SSE reads may wait a long time between events (a long prefill, a slow download):
        # no read timeout; connecting and writing keep theirs.
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout_s, read=None)
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, method: str, path: str, *, timeout_s: float | None = None,
                    **kwargs: Any) -> Any:
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        response = await self._http.request(method, path, **kwargs)
        raise_for_error(response)
        return response.json() if response.content else None

    async def _sse(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """The JSON objects of an SSE stream, up to `[DONE]`."""
        async with aconnect_sse(self._http, method, path, **kwargs) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise_for_error(source.response)
            async for sse in source.aiter_sse():
                if sse.data == SSE_DONE:
                    return
                yield json.loads(sse.data)
