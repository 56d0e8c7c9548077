"""HiveClient: the keeper's side of the hive API (DESIGN §4 "Hive")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .api_client import ApiClient


class HiveClient(ApiClient):
    async def health(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        return await self._json("GET", "/v1/health", timeout_s=timeout_s)

    async def spawn(self, model_ref: str, *, backend: str = "cpu", device: int = 0,
                    slots: int = 1, ctx_size: int = 2048) -> dict[str, Any]:
        """Starts a worker; answers once it serves (model still loading). May provision first."""
        body = {"model_ref": model_ref, "backend": backend, "device": device, "slots": slots,
                "ctx_size": ctx_size}
        # Provisioning a model on spawn can take as long as its download.
        return await self._json("POST", "/v1/workers/spawn", json=body, timeout_s=3600)

    async def workers(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/v1/workers/list"))["workers"]

    async def shutdown_worker(self, worker_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/v1/workers/{worker_id}/shutdown", timeout_s=60)

    async def models(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/v1/models"))["models"]

    async def download(self, model_ref: str) -> dict[str, Any]:
        return await self._json("POST", "/v1/models/download", json={"model_ref": model_ref})

    async def download_progress(self, download_id: str) -> AsyncIterator[dict[str, Any]]:
        async for event in self._sse("GET", "/v1/models/download/progress",
                                     params={"id": download_id}):
            yield event

    async def logs(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/v1/logs"))["lines"]

    async def follow_logs(self) -> AsyncIterator[dict[str, Any]]:
        async for line in self._sse("GET", "/v1/logs", params={"follow": "true"}):
            yield line
