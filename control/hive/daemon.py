"""Running the hive: pid file lock, HTTP server, health and idle loops, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import httpx
import psutil
from hypercorn.asyncio import serve

from rbee.dataplane.plumbing.http import server_config
from rbee.dataplane.protocol.wire import VERSION

from . import pidfile
from .catalog import ModelCatalog
from .downloads import DownloadManager
from .http_api import create_app
from .logs import LogBuffer
from .pidfile import PidRecord
from .pool import WorkerPool
from .settings import HiveSettings
from .worker_records import stop_survivors

log = logging.getLogger("rbee.hive")


class HiveAlreadyRunning(RuntimeError):
    pass


@contextlib.contextmanager
def pid_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on the pid file for the life of the hive.

    A lock, not just a file: it is released by the kernel if the hive dies, so a stale pid
    file never blocks a restart. The file records the pid and its start time, so that
    `rbee-hive stop` can prove which process is the hive (pidfile.py).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = PidRecord.parse(handle.read())
        handle.close()
        raise HiveAlreadyRunning(
            f"another rbee-hive (pid {other.pid if other else '?'}) is running with state dir "
            f"{path.parent}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(PidRecord.of(psutil.Process()).render())
    handle.flush()
    try:
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        handle.close()


async def run_hive(settings: HiveSettings, sock: socket.socket) -> None:
    """Serves until SIGTERM or SIGINT. The caller holds pid_lock(settings.pid_path)."""
    _check_pid_lock_held(settings.pid_path)
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


def _check_pid_lock_held(path: Path) -> None:
    """Refuses to run unless this process holds the pid lock: without it, another hive may
    own the worker records that run_hive reads, and stop its workers."""
    try:
        holder = pidfile.check(path).hive
    except pidfile.NotProven:
        holder = None
    if holder is None or holder.pid != os.getpid():
        raise RuntimeError(f"run_hive needs the pid lock on {path}: take it with pid_lock()")


async def _every(interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except Exception:  # a loop that dies silently would stop watching workers
            log.exception("background check failed")
