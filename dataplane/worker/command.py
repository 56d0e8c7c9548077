"""`rbee-worker`: one process serving one GGUF model over HTTP and SSE."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import click
from hypercorn.asyncio import serve

from rbee.dataplane.plumbing.gguf_file import ModelFileError, ModelInfo, check_model_ref
from rbee.dataplane.plumbing.http import bind, server_config
from rbee.dataplane.protocol.backends import Backend
from rbee.dataplane.protocol.chat_templates import CHAT_TEMPLATE_NAMES
from rbee.dataplane.protocol.model_refs import DEFAULT_MODEL_REF
from rbee.dataplane.protocol.wire import VERSION

from .engine import Engine, LoadProgress
from .http_api import create_app
from .llama_engine import LlamaEngine
from .parent_watch import ParentGone, die_with_parent
from .service import Worker
from .settings import API_KEY_ENV, DEFAULT_HOST, WorkerSettings, usable_cores

log = logging.getLogger("rbee.worker")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    "model_ref",
    default=DEFAULT_MODEL_REF,
    show_default=True,
    help="pkg:NAME, file:/abs/path.gguf or a path to a GGUF file.",
)
@click.option(
    "--model-id",
    default=None,
    help="The model's id in the API (/v1/models, answers' `model`, /health); default: "
    "--model. The hive passes the model's reference, --model being its downloaded file.",
)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to bind. Anything but loopback needs RBEE_WORKER_API_KEY.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to bind; 0 lets the OS pick one (the log and the callback say which).",
)
@click.option("--worker-id", default=None, help="Defaults to worker-<random>.")
@click.option(
    "--slots",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Streams served at once; one more gets 503 ALL_SLOTS_BUSY.",
)
@click.option(
    "--ctx-size",
    type=click.IntRange(32, 1 << 20),
    default=2048,
    show_default=True,
    help="Context tokens per slot (prompt and answer together).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=usable_cores,
    show_default="the cores it may run on",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 8192),
    default=512,
    show_default=True,
    help="Tokens per decode step (prompt chunks plus one per running stream).",
)
@click.option(
    "--callback-url",
    default=None,
    help="URL to POST this worker's identity to when it serves and when it is ready.",
)
@click.option("--backend", type=click.Choice(get_args(Backend)), default="cpu", show_default=True)
@click.option("--device", type=click.IntRange(0, 64), default=0, show_default=True)
@click.option(
    "--extra-bufts/--no-extra-bufts",
    default=False,
    show_default=True,
    help="llama.cpp weight-repacking buffers; off by default because they crash "
    "quantised models on CPUs that report AMX (llama.cpp #20824).",
)
@click.option(
    "--drain-timeout-s",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="On shutdown, how long in-flight streams may finish before they are canceled.",
)
@click.option(
    "--chat-template",
    type=click.Choice(CHAT_TEMPLATE_NAMES),
    default=None,
    help="A built-in chat template to use instead of the model's own. Without it: the "
    "model's template, else gemma for Gemma models and chatml for the others.",
)
@click.option(
    "--api-key-stdin",
    is_flag=True,
    help=f"Read the API key from the first line of stdin instead of {API_KEY_ENV}.",
)
@click.option(
    "--hive-pid",
    type=click.IntRange(1),
    default=None,
    help="Exit when this process, which must be the worker's parent, exits.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.version_option(VERSION, prog_name="rbee-worker")
def main(
    model_ref: str,
    model_id: str | None,
    host: str,
    port: int,
    worker_id: str | None,
    slots: int,
    ctx_size: int,
    threads: int,
    batch_size: int,
    callback_url: str | None,
    backend: str,
    device: int,
    extra_bufts: bool,
    drain_timeout_s: float,
    chat_template: str | None,
    api_key_stdin: bool,
    hive_pid: int | None,
    log_level: str,
) -> None:
    """Serve one GGUF model: SSE token streams, OpenAI-compatible endpoints, metrics."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if hive_pid is not None:
        try:
            die_with_parent(hive_pid)
        except ParentGone as exc:
            raise click.UsageError(f"--hive-pid: {exc}") from None
    # The key is read once and dropped from os.environ, so no child process inherits it; the
    # hive sends it on stdin, because a process's initial environment stays readable in
    # /proc/PID/environ whatever os.environ does later.
    api_key = os.environ.pop(API_KEY_ENV, None) or None
    if api_key_stdin:
        api_key = sys.stdin.readline().strip()
        if not api_key:
            raise click.UsageError("--api-key-stdin: stdin ended before a key line")
    settings = WorkerSettings(
        model_ref=model_ref,
        model_id=model_id,
        host=host,
        port=port,
        worker_id=worker_id or f"worker-{uuid.uuid4().hex[:8]}",
        slots=slots,
        ctx_size=ctx_size,
        threads=threads,
        batch_size=batch_size,
        callback_url=callback_url,
        api_key=api_key,
        backend=backend,
        device=device,
        extra_bufts=extra_bufts,
        drain_timeout_s=drain_timeout_s,
        chat_template=chat_template,
    )
    if not settings.is_loopback and not api_key:
        raise click.UsageError(
            f"refusing to listen on {host} without an API key: set {API_KEY_ENV} "
            "(or bind to 127.0.0.1)"
        )
    try:
        check_model_ref(model_ref)
    except ModelFileError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    asyncio.run(_serve(settings, sock))


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(settings: WorkerSettings, sock: socket.socket) -> None:
    def make_engine(
        path: Path, info: ModelInfo, on_progress: Callable[[LoadProgress], None]
    ) -> Engine:
        return LlamaEngine(
            str(path),
            slots=settings.slots,
            ctx_size=settings.ctx_size,
            threads=settings.threads,
            batch_size=settings.batch_size,
            extra_bufts=settings.extra_bufts,
            backend=settings.backend,
            device=settings.device,
            on_progress=on_progress,
            layers_total=info.layers_total,
            file_size=info.size_bytes,
        )

    worker = Worker(settings, make_engine)
    worker.url = _url(sock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_shutdown)

    # Streams are drained before the server stops; idle keep-alives need no wait.
    config = server_config(sock, graceful_timeout_s=1.0)
    app = create_app(worker)
    log.info(
        "rbee-worker %s (%s) serving %s on %s",
        VERSION,
        settings.worker_id,
        settings.served_model,
        worker.url,
    )
    loading = asyncio.create_task(worker.run_loading())
    # Ignored: hypercorn types the app with its own ASGI TypedDicts, Starlette with plain
    # mappings; both are ASGI 3.
    await serve(app, config, shutdown_trigger=worker.stopped.wait)  # type: ignore[arg-type]
    loading.cancel()
