"""WorkerClient: the worker API's client side (DESIGN §4 "Worker"), for the keeper and the hive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from .client import ApiClient, RemoteError
from .events import INFERENCE_EVENT, InferenceEvent
from .wire import ErrorCode
from .worker_api import (
    LOADING_EVENT,
    LoadingEvent,
    LoadingFailed,
    LoadingReady,
    ShutdownAnswer,
    WorkerHealth,
    WorkerReadiness,
)


class LoadFailed(RemoteError):
    """The worker could not load its model (its loading stream's `failed` event)."""


class WorkerClient(ApiClient):
    peer = "the worker"

    async def health(self, *, timeout_s: float | None = None) -> WorkerHealth:
        return await self._answer("GET", "/health", WorkerHealth, timeout_s=timeout_s)

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

    async def stream(
        self, prompt: str | None, **params: Any
    ) -> AsyncGenerator[InferenceEvent, None]:
        """The inference SSE events (started, token…, done or error) of one request; a None
        prompt for chat `messages` in `params`. An event of a type this version does not know
        (a newer peer's) is skipped, as an unknown field is; a known one that does not read is
        InvalidResponse."""
        body = {"stream": True, **params} | ({} if prompt is None else {"prompt": prompt})
        events = self._events(
            "POST", "/v1/inference", INFERENCE_EVENT, skip_unknown=True, json=body
        )
        async with aclosing(events):  # closed with this generator, in its task
            async for event in events:
                yield event

    async def cancel(self, request_id: str, *, timeout_s: float | None = None) -> None:
        await self._json("DELETE", f"/v1/inference/{request_id}", timeout_s=timeout_s)

    async def shutdown(self, *, timeout_s: float | None = None) -> ShutdownAnswer:
        """POST /v1/admin/shutdown: the worker stops taking work, ends its streams, exits."""
        return await self._answer("POST", "/v1/admin/shutdown", ShutdownAnswer, timeout_s=timeout_s)
