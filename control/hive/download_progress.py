"""One model being provisioned as its clients follow it: its state, its outcome and the
broadcast of DESIGN §4's progress events to any number of subscribers."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path

from rbee.dataplane.protocol.hive_api import (
    DownloadComplete,
    DownloadEvent,
    DownloadFailed,
    DownloadProgress,
    DownloadRetrying,
)
from rbee.dataplane.protocol.wire import ApiError, ErrorInfo

from .catalog import CatalogEntry

_PROGRESS_INTERVAL_S = 0.1
_PROGRESS_FRACTION = 0.01


class DownloadState(StrEnum):
    DOWNLOADING = "downloading"
    COMPLETE = "complete"
    FAILED = "failed"


class DownloadError(ApiError):
    """Provisioning failed; `code` is MODEL_NOT_FOUND, DOWNLOAD_FAILED or INVALID_REQUEST."""


class Download:
    """One model being provisioned, shared by every client that asked for it."""

    def __init__(self, ref: str) -> None:
        self.id = f"dl-{secrets.token_hex(8)}"
        self.ref = ref
        self.state = DownloadState.DOWNLOADING
        self.entry: CatalogEntry | None = None
        self.error: DownloadError | None = None
        self._latest: DownloadEvent | None = None
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def local_path(self) -> Path | None:
        return self.entry.local_path if self.entry else None

    async def events(self) -> AsyncIterator[DownloadEvent]:
        """The latest progress event, then each update, ending with the one terminal event.

        Stages: `downloading` (bytes_downloaded, bytes_total or None, speed_mbps in MB/s),
        `retrying` (attempt, attempts, delay_ms, error: before each new attempt), then
        `complete` (local_path) or `failed` (error: {code, message}). A slow subscriber skips
        intermediate progress (it always gets the latest), never the terminal event.
        """
        seen = 0
        while True:
            if self._version == seen:
                await self._changed.wait()
                continue
            event, seen = self._latest, self._version
            assert event is not None
            yield event
            if isinstance(event, DownloadComplete | DownloadFailed):
                return

    async def wait(self) -> CatalogEntry:
        """The catalog entry once provisioned; DownloadError if it failed."""
        async for _ in self.events():
            pass
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        return self.entry

    def progress(self, done: int, total: int | None, speed_mbps: float) -> None:
        self._publish(
            DownloadProgress(
                bytes_downloaded=done, bytes_total=total, speed_mbps=round(speed_mbps, 2)
            )
        )

    def retrying(self, attempt: int, attempts: int, delay_ms: int, error: str) -> None:
        self._publish(
            DownloadRetrying(attempt=attempt, attempts=attempts, delay_ms=delay_ms, error=error)
        )

    def complete(self, entry: CatalogEntry) -> None:
        self.entry, self.state = entry, DownloadState.COMPLETE
        self._publish(DownloadComplete(local_path=str(entry.local_path)))

    def fail(self, error: DownloadError) -> None:
        self.error, self.state = error, DownloadState.FAILED
        self._publish(DownloadFailed(error=ErrorInfo(code=error.code, message=error.message)))

    def _publish(self, event: DownloadEvent) -> None:
        self._latest = event
        self._version += 1
        # Waiters hold the old Event, which is set; later waiters get the fresh one.
        self._changed.set()
        self._changed = asyncio.Event()


class ProgressReporter:
    """Publishes progress at most every 100 ms or 1 % of the file, whichever comes first."""

    def __init__(self, download: Download, total: int | None, start_size: int) -> None:
        self._download = download
        self._total = total
        self._start_size = start_size
        self._started = self._last_time = time.monotonic()
        self._last_size = start_size
        download.progress(start_size, total, 0.0)

    def report(self, size: int) -> None:
        now = time.monotonic()
        step = self._total * _PROGRESS_FRACTION if self._total else None
        if now - self._last_time < _PROGRESS_INTERVAL_S and (
            step is None or size - self._last_size < step
        ):
            return
        self._last_time, self._last_size = now, size
        speed_mbps = (size - self._start_size) / 1e6 / max(now - self._started, 1e-6)
        self._download.progress(size, self._total, speed_mbps)
