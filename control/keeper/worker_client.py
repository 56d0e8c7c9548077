"""WorkerClient: the keeper's side of the worker API (DESIGN §4 "Worker")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from rbee.dataplane.protocol.wire import ErrorCode
from rbee.dataplane.protocol.worker_api import (
    LOADING_EVENT,
    LoadingEvent,
    LoadingFailed,
    LoadingReady,
    WorkerHealth,
    WorkerReadiness,
)

from .api_client import ApiClient, InvalidResponse, RemoteError, error_message


class LoadFailed(RemoteError):
    """The worker could not load its model (its loading stream's `failed` event)."""


class WorkerClient(ApiClient):
    peer = "the worker"

    async def health(self) -> WorkerHealth:
        return await self._answer("GET", "/health", WorkerHealth)

    async def ready(self) -> WorkerReadiness:
        return await self._answer("GET", "/v1/ready", WorkerReadiness)

    async def loading_progress(self) -> AsyncGenerator[LoadingEvent, None]:
        async for event in self._events("GET", "/v1/loading/progress", LOADING_EVENT):
            yield event

    async def wait_ready(
        self, *, timeout_s: float, on_progress: Callable[[LoadingEvent], None] | None = None
    ) -> None:
        """Follows the loading progress until the model is ready; LoadFailed when it cannot
        load, RemoteError when the worker answers otherwise (or LOADING_TIMEOUT past it)."""

        async def follow() -> None:
            async for event in self.loading_progress():
                if on_progress:
                    on_progress(event)
                if isinstance(event, LoadingFailed):
                    raise LoadFailed(event.error.code, event.error.message)
                if isinstance(event, LoadingReady):
                    return

        try:
            await asyncio.wait_for(follow(), timeout_s)
        except TimeoutError:
            raise RemoteError(
                ErrorCode.LOADING_TIMEOUT, f"the model did not load within {timeout_s:.0f} s"
            ) from None

    async def stream(self, prompt: str, **params: Any) -> AsyncGenerator[dict[str, Any], None]:
        """The inference SSE events (started, token…, done or error) of one request."""
        body = {"prompt": prompt, "stream": True, **params}
        path = "/v1/inference"
        async for event in self._sse("POST", path, json=body):
            kind = event.get("type")
            if (
                kind == "token"
                and not isinstance(event.get("token"), str)
                or kind == "error"
                and error_message(event) is None
            ):
                raise InvalidResponse(self.peer, path)
            yield event

    async def cancel(self, request_id: str, *, timeout_s: float | None = None) -> None:
        await self._json("DELETE", f"/v1/inference/{request_id}", timeout_s=timeout_s)
