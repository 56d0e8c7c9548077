"""WorkerClient: the keeper's side of the worker API (DESIGN §4 "Worker")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from rbee.dataplane.protocol import ErrorCode

from .api_client import ApiClient, RemoteError


class WorkerClient(ApiClient):
    peer = "the worker"

    async def health(self) -> dict[str, Any]:
        return await self._object("GET", "/health", "state")

    async def ready(self) -> dict[str, Any]:
        return await self._object("GET", "/v1/ready", "ready")

    async def loading_progress(self) -> AsyncIterator[dict[str, Any]]:
        async for data in self._sse("GET", "/v1/loading/progress"):
            yield data

    async def wait_ready(
        self, *, timeout_s: float, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """Follows the loading progress until the model is ready; raises RemoteError otherwise."""

        async def follow() -> None:
            async for event in self.loading_progress():
                if on_progress:
                    on_progress(event)
                if event.get("stage") == "failed":
                    error = event.get("error", {})
                    raise RemoteError(error.get("code", ErrorCode.BACKEND_UNAVAILABLE),
                                      error.get("message", "loading failed"))
                if event.get("stage") == "ready":
                    return

        try:
            await asyncio.wait_for(follow(), timeout_s)
        except TimeoutError:
            raise RemoteError(ErrorCode.LOADING_TIMEOUT,
                              f"the model did not load within {timeout_s:.0f} s") from None

    async def stream(self, prompt: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """The inference SSE events (started, token…, done or error) of one request."""
        body = {"prompt": prompt, "stream": True, **params}
        async for data in self._sse("POST", "/v1/inference", json=body):
            yield data

    async def cancel(self, request_id: str, *, timeout_s: float | None = None) -> None:
        await self._json("DELETE", f"/v1/inference/{request_id}", timeout_s=timeout_s)
