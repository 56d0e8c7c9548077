"""HiveClient: the keeper's side of the hive API (DESIGN §4 "Hive")."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Self

import httpx
from pydantic import TypeAdapter

from rbee.control.hive.settings import HiveSettings
from rbee.dataplane.protocol import hive_api
from rbee.dataplane.protocol.hive_api import (
    DOWNLOAD_EVENT,
    DownloadAnswer,
    DownloadComplete,
    DownloadEvent,
    DownloadFailed,
    DownloadRetrying,
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

from .api_client import ApiClient, PeerSilent
from .console import ActionableError, Console, bar

# A spawn answers once its worker called back (the hive's worker start timeout), after a
# preflight that reads the model: the keeper provisions (downloads) it before, never within.
SPAWN_TIMEOUT_S = HiveSettings.worker_start_timeout_s + 60.0


class HiveClient(ApiClient):
    peer = "rbee-hive"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        node: str | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout_s=timeout_s, peer=f"rbee-hive on {node}" if node else None
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
    ) -> SpawnAnswer:
        """Starts a worker; answers once it serves (model still loading). Call provision()
        first: the hive would download a missing model, but not within SPAWN_TIMEOUT_S.

        Without `ctx_size` the hive picks its default, lowered to the model's trained context;
        a size sent is one the person asked for, and the hive refuses it past that context."""
        body: dict[str, Any] = {
            "model_ref": model_ref,
            "backend": backend,
            "device": device,
            "slots": slots,
        }
        if ctx_size is not None:
            body["ctx_size"] = ctx_size
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


@dataclass(frozen=True)
class DownloadProgress:
    """One step of a model download, as the hive reports it."""

    stage: str  # downloading | retrying | complete
    bytes_downloaded: int = 0
    bytes_total: int | None = None
    speed_mbps: float = 0.0
    attempt: int = 0
    attempts: int = 0
    delay_ms: int = 0

    @classmethod
    def of(cls, event: hive_api.DownloadProgress | DownloadRetrying | DownloadComplete) -> Self:
        if isinstance(event, hive_api.DownloadProgress):
            return cls(event.stage, event.bytes_downloaded, event.bytes_total, event.speed_mbps)
        if isinstance(event, DownloadRetrying):
            return cls(
                event.stage, attempt=event.attempt, attempts=event.attempts, delay_ms=event.delay_ms
            )
        return cls(event.stage)

    @property
    def fraction(self) -> float | None:
        return self.bytes_downloaded / self.bytes_total if self.bytes_total else None


OnDownload = Callable[[DownloadProgress], None]


def show_download(console: Console) -> OnDownload:
    """The command line's view of a download: a redrawn bar and the retry lines."""

    def show(step: DownloadProgress) -> None:
        if step.stage == "downloading" and step.bytes_total:
            done, total = step.bytes_downloaded, step.bytes_total
            console.progress(
                f"Downloading model... {bar(done / total)} {100 * done // total}% "
                f"({done / 1e6:.1f} MB / {total / 1e6:.1f} MB) "
                f"@ {step.speed_mbps:.1f} MB/s"
            )
        elif step.stage == "retrying":
            console.status(
                f"Retrying download (attempt {step.attempt}/{step.attempts})... "
                f"delay {step.delay_ms}ms"
            )
        elif step.stage == "complete":
            console.status("Model downloaded.")

    return show


async def provision(hive: HiveClient, model_ref: str, on_progress: OnDownload) -> str:
    """Puts the model in the node's catalog, reporting the download; returns its local path."""
    started = await hive.download(model_ref)
    if started.local_path:
        return started.local_path
    async with aclosing(hive.download_progress(started.download_id)) as events:
        async for event in events:
            if isinstance(event, DownloadFailed):
                raise ActionableError(
                    event.error.message,
                    suggestion="check the model reference and the node's network, then retry",
                )
            on_progress(DownloadProgress.of(event))
            if isinstance(event, DownloadComplete):
                return event.local_path
    raise ActionableError(
        f"the download of {model_ref} ended without a result",
        suggestion="retry; the hive's log says more (`rbee logs`)",
    )
