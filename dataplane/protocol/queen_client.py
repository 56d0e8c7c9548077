"""QueenClient: the queen API's client side (DESIGN §4 "Queen"), for the keeper's
`rbee infer --queen` and the dashboard."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from .client import ApiClient
from .events import QUEEN_INFERENCE_EVENT, QueenInferenceEvent
from .queen_api import ClusterReport, QueenHealth


class QueenClient(ApiClient):
    peer = "rbee queen"

    async def health(self, *, timeout_s: float | None = None) -> QueenHealth:
        return await self._answer("GET", "/health", QueenHealth, timeout_s=timeout_s)

    async def cluster(self, *, timeout_s: float | None = None) -> ClusterReport:
        return await self._answer("GET", "/v1/cluster", ClusterReport, timeout_s=timeout_s)

    async def stream(
        self, model: str, prompt: str | None, **params: Any
    ) -> AsyncGenerator[QueenInferenceEvent, None]:
        """The request's timeline (queued, spawning, loading, routed), then its worker's
        events (started, token…, done or error); a None prompt for chat `messages` in
        `params`. A full queue is a RemoteError before any event (503 ALL_SLOTS_BUSY, its
        `retry_after`); an event of a type this version does not know is skipped."""
        body = {"model": model, "stream": True, **params}
        if prompt is not None:
            body["prompt"] = prompt
        events = self._events(
            "POST", "/v1/inference", QUEEN_INFERENCE_EVENT, skip_unknown=True, json=body
        )
        async with aclosing(events):  # closed with this generator, in its task
            async for event in events:
                yield event

    async def cancel(self, request_id: str, *, timeout_s: float | None = None) -> None:
        """Cancels the request wherever it is (queued, waiting for a start, on a worker)."""
        await self._json("DELETE", f"/v1/inference/{request_id}", timeout_s=timeout_s)
