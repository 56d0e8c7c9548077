"""HiveClient: the keeper's side of the hive API (DESIGN §4 "Hive")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from .api_client import ApiClient
from .console import ActionableError, Console, bar


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


async def provision(hive: HiveClient, model_ref: str, console: Console) -> str:
    """Puts the model in the node's catalog, showing the download; returns its local path."""
    started = await hive.download(model_ref)
    if started.get("local_path"):
        return started["local_path"]
    async with aclosing(hive.download_progress(started["download_id"])) as events:
        async for event in events:
            stage = event["stage"]
            if stage == "downloading" and event.get("bytes_total"):
                done, total = event["bytes_downloaded"], event["bytes_total"]
                console.progress(f"Downloading model... {bar(done / total)} {100 * done // total}% "
                                 f"({done / 1e6:.1f} MB / {total / 1e6:.1f} MB) "
                                 f"@ {event['speed_mbps']:.1f} MB/s")
            elif stage == "retrying":
                console.status(f"Retrying download (attempt {event['attempt']}/"
                               f"{event['attempts']})... delay {event['delay_ms']}ms")
            elif stage == "failed":
                raise ActionableError(event["error"]["message"],
                                      suggestion="check the model reference and the node's "
                                                 "network, then retry")
            elif stage == "complete":
                console.status("Model downloaded.")
                return event["local_path"]
    raise ActionableError(f"the download of {model_ref} ended without a result",
                          suggestion="retry; the hive's log says more (`rbee logs`)")
