"""Running the queen: the keeper's connections, the background view of the cluster, the
hives it needs (hives.py), the HTTP server, and a clean stop on SIGTERM or Ctrl+C (hives are
left running unless --stop-hives)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from hypercorn.asyncio import serve

from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.queen_address import (
    QueenAddress,
    clear_queen_address,
    write_queen_address,
)
from rbee.dataplane.plumbing.http import server_config
from rbee.dataplane.protocol.wire import VERSION

from .cluster_view import ClusterView
from .dispatch import Dispatcher
from .hives import QueenHives
from .http_api import create_app
from .settings import QueenSettings
from .upstream import WorkerLinks

log = logging.getLogger(__name__)


async def run_queen(
    inventory: Inventory,
    settings: QueenSettings,
    sock: socket.socket,
    key_file: str | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT. The caller holds the queen's pid file (queen_pid_file):
    only the queen holding it writes and removes queen.json."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    links = WorkerLinks()
    async with Keeper(inventory) as keeper:
        view = ClusterView(keeper, settings.refresh_s)
        dispatcher = Dispatcher(keeper, view, settings)
        view.on_refresh = dispatcher.dispatch_all  # slots a probe found go to the queues
        view.start()
        hives = QueenHives(keeper, view, settings)
        hives.start()
        host, port = sock.getsockname()[:2]
        log.info("rbee queen %s listening on http://%s:%d", VERSION, host, port)
        write_queen_address(QueenAddress(url=_url(host, port), api_key_file=key_file))
        try:
            app = create_app(keeper, view, dispatcher, links, settings)
            config = server_config(sock, graceful_timeout_s=settings.graceful_stop_s)
            # Ignored: hypercorn types the app with its own ASGI TypedDicts, Starlette with plain
            # mappings; both are ASGI 3.
            await serve(app, config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]
        finally:
            clear_queen_address()
            await view.aclose()
            await hives.aclose()
            links.close()
            log.info("stopped")


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::"):  # every address: this machine's loopback reaches it
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
