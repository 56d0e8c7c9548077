"""`rbee infer`: the eight phases of DESIGN §4 / SPEC test-001, and their edge cases.

Every way it can end is an exit code and words a person can act on: 0 answered, 1 failed
(with a suggestion), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import textwrap
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from rbee.dataplane.protocol.client import InvalidResponse, PeerSilent, RemoteError
from rbee.dataplane.protocol.events import Done, ErrorEvent, Token
from rbee.dataplane.protocol.hive_api import SpawnAnswer, WorkerRow
from rbee.dataplane.protocol.hive_client import HiveClient
from rbee.dataplane.protocol.states import SERVING_STATES
from rbee.dataplane.protocol.wire import VERSION, ErrorCode
from rbee.dataplane.protocol.worker_api import LoadingEvent, LoadingProgress, LoadingReady
from rbee.dataplane.protocol.worker_client import LoadFailed, WorkerClient

from .attempts import cannot_connect, connect_attempts
from .console import ActionableError, Console, bar
from .provisioning import provision, show_download
from .worker_registry import RegisteredWorker, WorkerRegistry, rbee_home

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
WARM_MAX_AGE_S = 60.0  # phase 1: a worker health-checked this recently is used as is
HIVE_TIMEOUT_S = 10.0  # each of EC1's attempts (attempts.py)
BUSY_RETRY_DELAYS_S = (1.0, 2.0, 4.0)
CANCEL_ACK_TIMEOUT_S = 5.0
CRASH_NOTICE_S = 3.0  # how long the hive may take to notice a worker's death
LOADING_STATES = frozenset({"starting", "loading"})
LOG_LINES_SHOWN = 5
_USE_CPU = 'use --backend cpu, or backend = "cpu" for {node} in the inventory'
_DAMAGED = "the model may be damaged or unsupported; `rbee logs --node {node}`"


class NodeAccess(Protocol):
    """How the keeper reaches one node's hive and workers (directly, or through SSH)."""

    name: str
    hive_address: str  # HOST:PORT as the person knows it, for messages
    key_source: str  # where this node's key is configured, for messages
    hive_key: str | None

    async def hive_url(self) -> str: ...

    async def worker_url(self, url: str) -> str: ...

    async def start_hive(self) -> str | None:
        """Starts (or restarts) the hive when the keeper may do so itself (the local node);
        what it did in a line, or None."""


@dataclass(frozen=True)
class InferRequest:
    prompt: str
    model_ref: str
    max_tokens: int = 20
    temperature: float = 0.7
    seed: int | None = None
    loading_timeout_s: float = 300.0
    busy_retries: int = 3
    backend: str = "cpu"
    device: int = 0


class InferFailed(Exception):
    """Ends the command: the console has already said why."""

    def __init__(self, exit_code: int = EXIT_FAILED) -> None:
        self.exit_code = exit_code


class Infer:
    def __init__(
        self, node: NodeAccess, request: InferRequest, console: Console, registry: WorkerRegistry
    ) -> None:
        self.node = node
        self.request = request
        self.console = console
        self.registry = registry
        self._interrupted = asyncio.Event()

    def cancel(self) -> None:
        """Ctrl+C (or the dashboard's cancel): stops the request as EC5 describes."""
        self._interrupted.set()

    async def run(self) -> int:
        try:
            worker = await self._until_interrupted(self._find_or_start_worker())
            return await self._stream(worker)
        except InferFailed as failed:
            return failed.exit_code
        except ActionableError as error:
            self.console.explain(error)
            return EXIT_FAILED

    async def _until_interrupted(self, work: Awaitable[Any]) -> Any:
        """Runs `work`; Ctrl+C before the stream starts simply ends the command."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._interrupted.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            return task.result()
        task.cancel()
        self.console.status("Canceled.")
        raise InferFailed(EXIT_INTERRUPTED)

    # ----------------------------------------------------------------- phases 1-7

    async def _find_or_start_worker(self) -> RegisteredWorker:
        req, node = self.request, self.node
        warm = self.registry.find_warm(node.name, req.model_ref, max_age_s=WARM_MAX_AGE_S)
        if warm is not None and await self._still_there(warm):
            return warm
        if warm is not None:
            self.registry.remove(warm.worker_id)
            self.console.status("No idle worker found, starting new worker...")
        hive_url = await self._hive_preflight()
        async with HiveClient(hive_url, node.hive_key, node=node.name) as hive:
            await self._provision(hive)
            spawned = await self._call_hive(
                hive.spawn(req.model_ref, backend=req.backend, device=req.device)
            )
        worker = RegisteredWorker(
            worker_id=spawned.worker_id,
            node=node.name,
            model_ref=req.model_ref,
            url=spawned.url,
            api_key=spawned.api_key,
            backend=req.backend,
            device=req.device,
            state=spawned.state,
            created_at=time.time(),
            last_health_check=None,
        )
        self.registry.record(worker)
        await self._wait_ready(worker)
        return worker

    async def _still_there(self, worker: RegisteredWorker) -> bool:
        try:
            async with WorkerClient(
                await self.node.worker_url(worker.url), worker.api_key, timeout_s=5
            ) as client:
                health = await client.health()
        except (httpx.HTTPError, RemoteError, OSError):
            return False
        return health.worker_id == worker.worker_id and health.state in SERVING_STATES

    async def _hive_preflight(self) -> str:
        """Phase 2: the hive answers (3 attempts) and speaks our version."""
        node = self.node
        if started := await node.start_hive():
            self.console.status(started)
        url = await node.hive_url()
        async with HiveClient(url, node.hive_key, timeout_s=HIVE_TIMEOUT_S, node=node.name) as hive:
            try:
                health = await connect_attempts(
                    hive.health,
                    address=node.hive_address,
                    timeout_s=HIVE_TIMEOUT_S,
                    say=self.console.status,
                    retry_if=lambda e: isinstance(e, httpx.TransportError),
                )
            except httpx.TransportError:
                raise cannot_connect(
                    node.hive_address,
                    suggestion=f"Check if rbee-hive is running on {node.name}: "
                    f"`rbee ssh-up {node.name}`",
                ) from None
            except (RemoteError, ValueError, KeyError):
                self.console.error(
                    f"Something other than rbee-hive answers at {node.hive_address}",
                    suggestion=f"give node {node.name} another hive_port in the inventory",
                )
                raise InferFailed() from None
        if health.version != VERSION:
            self.console.error(
                f"Version mismatch: rbee={VERSION}, rbee-hive={health.version}. Please upgrade.",
                suggestion=f"upgrade the node with `rbee deploy {node.name}` (or the ansible "
                f"playbook), then `rbee ssh-up {node.name}`",
            )
            raise InferFailed()
        return url

    async def _provision(self, hive: HiveClient) -> None:
        """Phase 3: the model in the node's catalog, downloading it with a progress bar."""
        try:
            await provision(hive, self.request.model_ref, show_download(self.console))
        except RemoteError as exc:
            self._explain(exc)
            raise InferFailed() from None
        except ActionableError as exc:
            self.console.explain(exc)
            raise InferFailed() from None

    async def _call_hive(self, call: Awaitable[SpawnAnswer]) -> SpawnAnswer:
        try:
            return await call
        except RemoteError as exc:
            self._explain(exc)
            raise InferFailed() from None

    def _explain(self, exc: RemoteError) -> None:
        node = self.node.name
        if exc.code == ErrorCode.INSUFFICIENT_RAM:
            self.console.error(
                f"Insufficient RAM on {node}",
                f"Required: {exc.details.get('required_mb')} MB",
                f"Available: {exc.details.get('available_mb')} MB",
                suggestion="Try a smaller quantized model (Q4 instead of Q8)",
            )
        elif exc.code == ErrorCode.INVALID_API_KEY:
            self.console.error(
                "Authentication failed",
                f"Invalid API key for {self.node.hive_address}",
                suggestion=f"check the key configured for {node}: {self.node.key_source}",
            )
        elif exc.code == ErrorCode.BACKEND_UNAVAILABLE:
            self.console.error(exc.message, suggestion=_USE_CPU.format(node=node))
        else:  # a worker that died while starting comes with its log's last lines
            self.console.error(
                exc.message,
                *_quoted_log(str(exc.details.get("log_tail", ""))),
                suggestion=f"see `rbee logs --node {node}`",
            )

    def _load_failed(self, message: str) -> None:
        """The worker could not load the model: the other backend, or the file itself."""
        node = self.node.name
        self.console.error(
            message,
            suggestion=_USE_CPU.format(node=node)
            if self.request.backend != "cpu"
            else _DAMAGED.format(node=node),
        )

    async def _wait_ready(self, worker: RegisteredWorker) -> None:
        """Phase 7: the loading bar, until ready; LOADING_TIMEOUT past the limit."""
        reached: dict[str, int] = {}

        def show(event: LoadingEvent) -> None:
            if isinstance(event, LoadingProgress) and event.layers_total:
                done, total = event.layers_loaded, event.layers_total
                reached.update(done=done, total=total)
                self.console.progress(
                    f"Loading model to VRAM... {bar(done / total)} "
                    f"{100 * done // total}% ({done}/{total} layers)"
                )
            elif isinstance(event, LoadingReady):
                self.console.status("Model ready!")

        try:
            async with WorkerClient(
                await self.node.worker_url(worker.url), worker.api_key
            ) as client:
                await client.wait_ready(timeout_s=self.request.loading_timeout_s, on_progress=show)
        except LoadFailed as exc:
            self.registry.remove(worker.worker_id)  # it will never serve
            self._load_failed(exc.message)
            raise InferFailed() from None
        except RemoteError as exc:
            if exc.code == ErrorCode.LOADING_TIMEOUT:
                limit = self.request.loading_timeout_s
                span = f"{limit / 60:g} minutes" if limit % 60 == 0 else f"{limit:g} seconds"
                where = (
                    f" (stuck at {reached['done']}/{reached['total']} layers)" if reached else ""
                )
                self.console.error(
                    f"Model loading timeout after {span}",
                    f"Worker state: loading{where}",
                    suggestion=f"Check worker logs on {self.node.name} for errors",
                )
                raise InferFailed() from None
            if exc.code != ErrorCode.CONNECTION_TIMEOUT:  # else the stream fell silent
                self.registry.remove(worker.worker_id)  # it will not serve us
                self.console.error(
                    exc.message, suggestion=f"see `rbee logs --node {self.node.name}` and retry"
                )
                raise InferFailed() from None
            await self._lost_while_loading(worker)
        except httpx.TransportError:  # the progress stream broke: did the worker die?
            await self._lost_while_loading(worker)
        self.registry.mark_healthy(worker.worker_id, "idle")

    async def _lost_while_loading(self, worker: RegisteredWorker) -> None:
        """Returns if the worker loaded after all; otherwise says how it ended (the hive saw
        it: its crash record holds the worker's last log lines), forgets it, InferFailed."""
        node = self.node.name
        try:
            entry, record = await self._hive_view(worker.worker_id)
            state = str(entry.state) if entry else "crashed"
        except (httpx.HTTPError, RemoteError, ValueError, KeyError):
            entry, record, state = None, None, "unknown"
        if state in SERVING_STATES:
            return
        self.registry.remove(worker.worker_id)
        if state == "failed" and entry:
            self._load_failed(entry.error or "the model failed to load")
        elif state == "crashed":
            why, tail = _crash_report(record)
            self.console.error(
                f"The worker crashed while loading the model on {node}",
                f"{worker.worker_id}: {why}",
                *(["Last lines of its log:", *_quoted_log(tail)] if tail else []),
                suggestion=_DAMAGED.format(node=node),
            )
        else:
            self.console.error(
                f"Lost contact with {worker.worker_id} on {node} while it was loading",
                suggestion=f"see `rbee logs --node {node}` and retry",
            )
        raise InferFailed()

    async def _hive_view(self, worker_id: str) -> tuple[WorkerRow | None, str | None]:
        """The hive's entry for the worker (None once it removed it as crashed), waiting a
        moment for the hive to notice a death, and then the hive's crash record of it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CRASH_NOTICE_S
        async with HiveClient(
            await self.node.hive_url(),
            self.node.hive_key,
            timeout_s=HIVE_TIMEOUT_S,
            node=self.node.name,
        ) as hive:
            while True:
                entry = next((w for w in await hive.workers() if w.worker_id == worker_id), None)
                if entry is None or entry.state not in LOADING_STATES or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
            if entry is not None:
                return entry, None
            errors = [
                line.message
                for line in await hive.logs()
                if line.level == "ERROR" and worker_id in line.message
            ]
        return None, errors[-1] if errors else None

    # ----------------------------------------------------------------- phase 8

    async def _stream(self, worker: RegisteredWorker) -> int:
        req = self.request
        request_id = f"req-{uuid.uuid4().hex[:16]}"
        params: dict[str, Any] = {
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "request_id": request_id,
        }
        if req.seed is not None:
            params["seed"] = req.seed
        url = await self.node.worker_url(worker.url)
        for delay in (*BUSY_RETRY_DELAYS_S[: req.busy_retries], None):
            async with WorkerClient(url, worker.api_key) as client:
                try:
                    return await self._stream_once(client, worker, request_id, params)
                except RemoteError as exc:
                    if exc.code != ErrorCode.ALL_SLOTS_BUSY:
                        self._explain(exc)
                        return EXIT_FAILED
                    if delay is None:
                        retries = "retry" if req.busy_retries == 1 else "retries"
                        self.console.error(
                            f"Worker still busy after {req.busy_retries} {retries}",
                            suggestion="Wait for current request to complete or use a "
                            "different node",
                        )
                        return EXIT_FAILED
                    self.console.status(
                        f"Worker is busy, retrying in {delay:g} "
                        f"second{'s' if delay != 1 else ''}..."
                    )
                    await asyncio.sleep(delay)
                except (httpx.TransportError, OSError):
                    self.console.error(
                        f"Cannot reach worker {worker.worker_id} on {self.node.name}",
                        suggestion="run `rbee workers list` and try again",
                    )
                    self.registry.remove(worker.worker_id)
                    return EXIT_FAILED
        return EXIT_FAILED

    async def _stream_once(
        self,
        client: WorkerClient,
        worker: RegisteredWorker,
        request_id: str,
        params: dict[str, Any],
    ) -> int:
        tokens: list[str] = []
        self.console.request_sent()
        events = client.stream(self.request.prompt, **params)
        next_event = asyncio.ensure_future(anext(events))
        interrupted = asyncio.ensure_future(self._interrupted.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {next_event, interrupted}, return_when=asyncio.FIRST_COMPLETED
                )
                if interrupted in done:
                    return await self._cancel(client, request_id, tokens)
                try:
                    event = next_event.result()
                except (StopAsyncIteration, httpx.TransportError):
                    return self._broken_stream(worker, request_id, tokens)
                except (PeerSilent, InvalidResponse) as exc:  # frozen, or answering nonsense
                    return self._broken_stream(worker, request_id, tokens, exc.message)
                if isinstance(event, Token):
                    tokens.append(event.token)
                    self.console.token(event.token)
                elif isinstance(event, Done):
                    self.console.end_answer()
                    self.registry.mark_healthy(worker.worker_id, "idle")
                    return EXIT_OK
                elif isinstance(event, ErrorEvent):
                    self.console.end_answer()
                    self.console.error(
                        event.error.message, suggestion=f"see `rbee logs --node {self.node.name}`"
                    )
                    return EXIT_FAILED
                next_event = asyncio.ensure_future(anext(events))
        finally:
            interrupted.cancel()
            if not next_event.done():
                next_event.cancel()  # the generator must be at rest before it is closed
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await next_event
            await events.aclose()

    async def _cancel(self, client: WorkerClient, request_id: str, tokens: list[str]) -> int:
        """EC5: tell the worker, wait a little for its acknowledgement, exit 130."""
        self.console.end_answer()
        try:
            await client.cancel(request_id, timeout_s=CANCEL_ACK_TIMEOUT_S)
            self.console.status("Canceled.")
        except (httpx.HTTPError, RemoteError, OSError):
            self.console.status("Canceled (worker may still be processing).")
        return EXIT_INTERRUPTED

    def _broken_stream(
        self, worker: RegisteredWorker, request_id: str, tokens: list[str], why: str | None = None
    ) -> int:
        """EC4: the stream ended without its terminal event; keep what arrived. `why`, when
        known, is a detail line (a worker that fell silent, or answered nonsense)."""
        self.console.end_answer()
        try:
            saved = f"Partial result saved to: {save_partial(request_id, ''.join(tokens))}"
        except OSError as exc:
            saved = f"Partial result not saved: {exc.strerror or exc}"
        self.registry.remove(worker.worker_id)
        self.console.error(
            "SSE stream closed unexpectedly",
            *([why[:1].upper() + why[1:]] if why else []),
            saved,
            f"Tokens generated: {len(tokens)} / {self.request.max_tokens}",
            suggestion=f"the worker may have crashed: `rbee logs --node {self.node.name}`",
        )
        return EXIT_FAILED


def save_partial(request_id: str, text: str) -> Path:
    """EC4's file: $RBEE_HOME/partial/<request id>.txt, 0600 in a 0700 folder (an answer may
    be as private as its prompt)."""
    folder = rbee_home() / "partial"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / f"{request_id}.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _crash_report(record: str | None) -> tuple[str, str]:
    """Why and the log tail from the hive's crash record ("… crashed: WHY; not restarting.
    Last log lines:" then the lines)."""
    if record is None:
        return "its process ended", ""
    head, _, tail = record.partition("\n")
    why = head.partition(" crashed: ")[2].partition("; ")[0] or head
    return why, tail


def _quoted_log(tail: str, lines: int = LOG_LINES_SHOWN) -> list[str]:
    """A log's last lines, indented and wrapped to the terminal's 80 columns."""
    return [
        wrapped
        for line in tail.strip().splitlines()[-lines:]
        for wrapped in textwrap.wrap(
            line, 78, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False
        )
        or ["  "]
    ]


async def run_infer(
    node: NodeAccess, request: InferRequest, console: Console, registry: WorkerRegistry
) -> int:
    """The command line's infer: Ctrl+C cancels it."""
    infer = Infer(node, request, console, registry)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, infer.cancel)
    try:
        return await infer.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
