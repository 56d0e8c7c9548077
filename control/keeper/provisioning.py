"""Phase 3: a model in a node's catalog, its download reported as it goes."""

from __future__ import annotations

from contextlib import aclosing

from rbee.dataplane.protocol.hive_api import (
    DownloadComplete,
    DownloadFailed,
    DownloadProgress,
    DownloadRetrying,
)
from rbee.dataplane.protocol.hive_client import HiveClient
from rbee.dataplane.protocol.wire import ErrorCode

from . import events
from .events import Listener
from .words import ActionableError


async def provision(hive: HiveClient, node: str, model_ref: str, listener: Listener) -> str:
    """Puts the model in the node's catalog (a model already there is not downloaded);
    the listener hears the download; returns the model's path on the node."""
    started = await hive.download(model_ref)
    if started.local_path:
        return started.local_path
    fetched = False  # a model registered where it lies (pkg:, file:) is not "downloaded"
    async with aclosing(hive.download_progress(started.download_id)) as progress:
        async for event in progress:
            if isinstance(event, DownloadFailed):
                raise ActionableError(
                    event.error.message,
                    suggestion="check the model reference and the node's network, then retry",
                    code=ErrorCode.DOWNLOAD_FAILED,
                )
            if isinstance(event, DownloadProgress):
                fetched = True
                listener.heard(
                    events.Downloading(
                        node,
                        model_ref,
                        event.bytes_downloaded,
                        event.bytes_total,
                        event.speed_mbps,
                    )
                )
            elif isinstance(event, DownloadRetrying):
                listener.heard(
                    events.DownloadRetrying(
                        node, model_ref, event.attempt, event.attempts, event.delay_ms
                    )
                )
            elif isinstance(event, DownloadComplete):
                if fetched:
                    listener.heard(events.Downloaded(node, model_ref))
                return event.local_path
    raise ActionableError(
        f"the download of {model_ref} ended without a result",
        suggestion="retry; the hive's log says more (`rbee logs`)",
    )
