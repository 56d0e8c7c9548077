"""Running the hive: pid file lock, HTTP server, health and idle loops, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

import httpx
from hypercorn.asyncio import serve

from rbee.dataplane.plumbing.http import server_config
from rbee.dataplane.plumbing.pidfile import NotProven, PidFile
from rbee.dataplane.protocol.wire import VERSION

from .catalog import ModelCatalog
from .downloads import DownloadManager
from .http_api import create_app
from .logs import LogBuffer
from .pool import WorkerPool
from .settings import HiveSettings
from .worker_records import stop_survivors

log = logging.getLogger("rbee.hive")


async def run_hive(settings: HiveSettings, sock: socket.socket) -> None:
    """Serves until SIGTERM or SIGINT. The caller holds `settings.pid_file.hold()`."""
    _check_pid_lock_held(settings.pid_file)
    settings = replace(settings, port=sock.getsockname()[1])
    loop = asyncio.get_running_loop()
    logs = LogBuffer(settings.log_buffer_lines, loop)
    logging.getLogger().addHandler(logs)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # Before anything else: the pid lock (checked above) proves no other hive owns these
    # records.
    stop_survivors(settings.workers_dir)

    async with httpx.AsyncClient() as http:
        catalog = ModelCatalog(settings.catalog_path)
        downloads = DownloadManager(catalog, settings.models_dir)
        pool = WorkerPool(settings, http)
        app = create_app(pool, downloads, logs, settings.api_key)
        config = server_config(sock, graceful_timeout_s=3.0)
        log.info(
            "rbee-hive %s listening on http://%s:%d (state %s)",
            VERSION,
            settings.host,
            settings.port,
            settings.state_dir,
        )
        loops = [
            asyncio.create_task(_every(settings.health_interval_s, pool.check_health)),
            asyncio.create_task(_every(settings.idle_check_interval_s, pool.stop_idle)),
        ]
        try:
            # Ignored: hypercorn types the app with its own ASGI TypedDicts, Starlette with plain
            # mappings; both are ASGI 3.
            await serve(app, config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]
        finally:
            for task in loops:
                task.cancel()
            log.info("shutting down %d worker(s)", len(pool.list()))
            await pool.stop_all()
            await downloads.aclose()
            catalog.close()
            logging.getLogger().removeHandler(logs)
            log.info("stopped")


def _check_pid_lock_held(pid_file: PidFile) -> None:
    """Refuses to run unless this process holds the pid lock: without it, another hive may
    own the worker records that run_hive reads, and stop its workers."""
    try:
        holder = pid_file.check().process
    except NotProven:
        holder = None
    if holder is None or holder.pid != os.getpid():
        raise RuntimeError(f"run_hive needs the pid lock on {pid_file.path}: hold it first")


async def _every(interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except Exception:  # a loop that dies silently would stop watching workers
            log.exception("background check failed")
