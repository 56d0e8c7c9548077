"""HiveClient: the hive API's client side (DESIGN §4 "Hive"), for the keeper and the queen."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
from pydantic import TypeAdapter

from .client import ApiClient, PeerSilent
from .hive_api import (
    DOWNLOAD_EVENT,
    WORKER_START_TIMEOUT_S,
    DownloadAnswer,
    DownloadEvent,
    HiveHealth,
    LogLine,
    LogLines,
    ModelEntry,
    ModelsList,
    SpawnAnswer,
    WorkerRow,
    WorkersList,
    WorkerStateAnswer,
)

# A spawn answers once its worker called back (the hive's worker start timeout), after a
# preflight that reads the model: the caller provisions (downloads) it before, never within.
SPAWN_TIMEOUT_S = WORKER_START_TIMEOUT_S + 60.0


class HiveClient(ApiClient):
    peer = "rbee-hive"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        node: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout_s=timeout_s,
            peer=f"rbee-hive on {node}" if node else None,
            http=http,
        )

    async def health(self, *, timeout_s: float | None = None) -> HiveHealth:
        return await self._answer("GET", "/v1/health", HiveHealth, timeout_s=timeout_s)

    async def spawn(
        self,
        model_ref: str,
        *,
        backend: str = "cpu",
        device: int = 0,
        slots: int = 1,
        ctx_size: int | None = None,
        chat_template: str | None = None,
    ) -> SpawnAnswer:
        """Starts a worker; answers once it serves (model still loading). Download the model
        first (download()): the hive would download a missing one, but not within
        SPAWN_TIMEOUT_S.

        Without `ctx_size` the hive picks its default, lowered to the model's trained context;
        a size sent is one the person asked for, and the hive refuses it past that context.
        `chat_template` names a built-in template that overrides the model's own."""
        body: dict[str, Any] = {
            "model_ref": model_ref,
            "backend": backend,
            "device": device,
            "slots": slots,
        }
        if ctx_size is not None:
            body["ctx_size"] = ctx_size
        if chat_template is not None:
            body["chat_template"] = chat_template
        try:
            return await self._answer(
                "POST", "/v1/workers/spawn", SpawnAnswer, json=body, timeout_s=SPAWN_TIMEOUT_S
            )
        except httpx.TimeoutException:
            raise PeerSilent(self.peer, SPAWN_TIMEOUT_S) from None

    async def workers_report(self) -> WorkersList:
        """The workers, with the node's idle timeout and free RAM (newer hives)."""
        return await self._answer("GET", "/v1/workers/list", WorkersList)

    async def workers(self) -> list[WorkerRow]:
        return (await self.workers_report()).workers

    async def shutdown_worker(self, worker_id: str) -> WorkerStateAnswer:
        return await self._answer(
            "POST", f"/v1/workers/{worker_id}/shutdown", WorkerStateAnswer, timeout_s=60
        )

    async def models(self) -> list[ModelEntry]:
        return (await self._answer("GET", "/v1/models", ModelsList)).models

    async def download(self, model_ref: str) -> DownloadAnswer:
        body = {"model_ref": model_ref}
        return await self._answer("POST", "/v1/models/download", DownloadAnswer, json=body)

    async def download_progress(self, download_id: str) -> AsyncGenerator[DownloadEvent, None]:
        path = "/v1/models/download/progress"
        async for event in self._events("GET", path, DOWNLOAD_EVENT, params={"id": download_id}):
            yield event

    async def logs(self) -> list[LogLine]:
        return (await self._answer("GET", "/v1/logs", LogLines)).lines

    async def follow_logs(self) -> AsyncGenerator[LogLine, None]:
        adapter = TypeAdapter(LogLine)
        async for line in self._events("GET", "/v1/logs", adapter, params={"follow": "true"}):
            yield line
