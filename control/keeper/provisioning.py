"""Provisioning a model on a node through its hive, as the keeper shows it: the download's
steps, the command line's bar, and provision() (the model in the node's catalog)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Self

from rbee.dataplane.protocol import hive_api
from rbee.dataplane.protocol.hive_api import DownloadComplete, DownloadFailed, DownloadRetrying
from rbee.dataplane.protocol.hive_client import HiveClient

from .console import ActionableError, Console, bar


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
