"""HiveClient: the keeper's side of the hive API (DESIGN §4 "Hive")."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from rbee.control.hive.settings import HiveSettings
from rbee.dataplane.protocol.hive_api import HiveHealth

from .api_client import ApiClient, InvalidResponse, PeerSilent, error_message
from .console import ActionableError, Console, bar

# What the keeper reads of each listed worker and log line (more fields are tolerated).
WORKER_KEYS = ("worker_id", "model_ref", "state", "slots_busy", "slots_total", "url")
LOG_LINE_KEYS = ("ts", "level", "logger", "message")
# The numbers of a download progress event (each may be absent; bytes_total may be null).
PROGRESS_NUMBERS = (
    "bytes_downloaded",
    "bytes_total",
    "speed_mbps",
    "attempt",
    "attempts",
    "delay_ms",
)
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
    ) -> dict[str, Any]:
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
            return await self._object(
                "POST",
                "/v1/workers/spawn",
                "worker_id",
                "url",
                "api_key",
                "state",
                json=body,
                timeout_s=SPAWN_TIMEOUT_S,
            )
        except httpx.TimeoutException:
            raise PeerSilent(self.peer, SPAWN_TIMEOUT_S) from None

    async def workers_report(self) -> dict[str, Any]:
        """The workers, with the node's idle timeout and free RAM (newer hives)."""
        report = await self._object("GET", "/v1/workers/list", "workers")
        self._objects(report["workers"], "/v1/workers/list", *WORKER_KEYS)
        return report

    async def workers(self) -> list[dict[str, Any]]:
        return (await self.workers_report())["workers"]

    async def shutdown_worker(self, worker_id: str) -> dict[str, Any]:
        return await self._object(
            "POST", f"/v1/workers/{worker_id}/shutdown", "state", timeout_s=60
        )

    async def models(self) -> list[dict[str, Any]]:
        listed = await self._object("GET", "/v1/models", "models")
        return self._objects(listed["models"], "/v1/models", "reference")

    async def download(self, model_ref: str) -> dict[str, Any]:
        started = await self._object("POST", "/v1/models/download", json={"model_ref": model_ref})
        if not ("local_path" in started or "download_id" in started):
            raise InvalidResponse(self.peer, "/v1/models/download")
        return started

    async def download_progress(self, download_id: str) -> AsyncGenerator[dict[str, Any], None]:
        path = "/v1/models/download/progress"
        async for event in self._sse("GET", path, params={"id": download_id}):
            stage = event.get("stage")
            if (
                stage == "complete"
                and not isinstance(event.get("local_path"), str)
                or stage == "failed"
                and error_message(event) is None
                or not all(_number(event.get(key, 0)) for key in PROGRESS_NUMBERS)
            ):
                raise InvalidResponse(self.peer, path)
            yield self._objects([event], path, "stage")[0]

    async def logs(self) -> list[dict[str, Any]]:
        lines = (await self._object("GET", "/v1/logs", "lines"))["lines"]
        return self._objects(lines, "/v1/logs", *LOG_LINE_KEYS)

    async def follow_logs(self) -> AsyncGenerator[dict[str, Any], None]:
        async for line in self._sse("GET", "/v1/logs", params={"follow": "true"}):
            yield self._objects([line], "/v1/logs", *LOG_LINE_KEYS)[0]


def _number(value: object) -> bool:
    return value is None or isinstance(value, int | float) and not isinstance(value, bool)


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
    if started.get("local_path"):
        return started["local_path"]
    async with aclosing(hive.download_progress(started["download_id"])) as events:
        async for event in events:
            stage = event["stage"]
            if stage == "failed":
                raise ActionableError(
                    event["error"]["message"],
                    suggestion="check the model reference and the node's network, then retry",
                )
            on_progress(
                DownloadProgress(
                    stage=stage,
                    bytes_downloaded=event.get("bytes_downloaded", 0),
                    bytes_total=event.get("bytes_total"),
                    speed_mbps=event.get("speed_mbps", 0.0),
                    attempt=event.get("attempt", 0),
                    attempts=event.get("attempts", 0),
                    delay_ms=event.get("delay_ms", 0),
                )
            )
            if stage == "complete":
                return event["local_path"]
    raise ActionableError(
        f"the download of {model_ref} ended without a result",
        suggestion="retry; the hive's log says more (`rbee logs`)",
    )
