"""WorkerClient: the keeper's side of the worker API (DESIGN §4 "Worker")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from rbee.dataplane.protocol import SSE_DONE, ErrorCode


class WorkerError(Exception):
    """The worker answered with an error envelope (or could not be reached)."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}


class WorkerClient:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Reads on a token stream may wait through a long prefill: no read timeout there.
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout_s, read=None)
        )

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._http.aclose()

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", "/health")

    async def ready(self) -> dict[str, Any]:
        return await self._json("GET", "/v1/ready")

    async def loading_progress(self) -> AsyncIterator[dict[str, Any]]:
        async for data in self._sse("GET", "/v1/loading/progress"):
            yield data

    async def wait_ready(
        self, *, timeout_s: float, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """Follows the loading progress until the model is ready; raises WorkerError otherwise."""

        async def follow() -> None:
            async for event in self.loading_progress():
                if on_progress:
                    on_progress(event)
                if event.get("stage") == "failed":
                    error = event.get("error", {})
                    raise WorkerError(error.get("code", ErrorCode.BACKEND_UNAVAILABLE),
                                      error.get("message", "loading failed"))
                if event.get("stage") == "ready":
                    return

        try:
            await asyncio.wait_for(follow(), timeout_s)
        except TimeoutError:
            raise WorkerError(ErrorCode.LOADING_TIMEOUT,
                              f"the model did not load within {timeout_s:.0f} s") from None

    async def stream(self, prompt: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """The inference SSE events (started, token…, done or error) of one request."""
        body = {"prompt": prompt, "stream": True, **params}
        async for data in self._sse("POST", "/v1/inference", json=body):
            yield data

    async def cancel(self, request_id: str) -> None:
        response = await self._http.delete(f"/v1/inference/{request_id}")
        _raise_for_error(response)

    async def shutdown(self) -> None:
        response = await self._http.post("/v1/admin/shutdown")
        _raise_for_error(response)

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._http.request(method, path, **kwargs)
        _raise_for_error(response)
        return response.json()

    async def _sse(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        async with aconnect_sse(self._http, method, path, **kwargs) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                _raise_for_error(source.response)
            async for sse in source.aiter_sse():
                if sse.data == SSE_DONE:
                    return
                yield json.loads(sse.data)


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        raise WorkerError(error["code"], error["message"], status=response.status_code,
                          details=error.get("details"))
    except (ValueError, KeyError, TypeError):
        raise WorkerError(ErrorCode.INTERNAL_ERROR,
                          f"HTTP {response.status_code}: {response.text[:200]}",
                          status=response.status_code) from None
