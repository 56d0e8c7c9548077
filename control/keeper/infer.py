"""`rbee infer`: the eight phases of DESIGN §4 / SPEC test-001, and their edge cases.

Every way it can end is an exit code and words a person can act on: 0 answered, 1 failed
(with a suggestion), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from rbee.dataplane.protocol.chat_templates import serves_template
from rbee.dataplane.protocol.client import InvalidResponse, PeerSilent, RemoteError
from rbee.dataplane.protocol.events import Done, ErrorEvent
from rbee.dataplane.protocol.events import Token as TokenEvent
from rbee.dataplane.protocol.hive_api import WorkerRow
from rbee.dataplane.protocol.hive_client import HiveClient
from rbee.dataplane.protocol.states import SERVING_STATES, WorkerState
from rbee.dataplane.protocol.wire import VERSION, ErrorCode
from rbee.dataplane.protocol.worker_api import (
    LoadingEvent,
    LoadingProgress,
    LoadingReady,
    WorkerHealth,
)
from rbee.dataplane.protocol.worker_client import LoadFailed, WorkerClient

from .attempts import cannot_connect, connect_attempts
from .events import AnswerEnded, Failed, Listener, Loading, RequestSent, Step, Token
from .hive_control import ensure_local_hive
from .node_access import NodeAccess
from .provisioning import provision
from .words import (
    ActionableError,
    damaged_model,
    not_our_hive,
    quoted_log,
    remote_failure,
    see_logs,
    use_cpu,
    version_mismatch,
)
from .worker_registry import RegisteredWorker, WorkerRegistry, rbee_home

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
WARM_MAX_AGE_S = 60.0  # phase 1: a worker health-checked this recently is used as is
HIVE_TIMEOUT_S = 10.0  # each of EC1's attempts (attempts.py)
BUSY_RETRY_DELAYS_S = (1.0, 2.0, 4.0)
CANCEL_ACK_TIMEOUT_S = 5.0
CRASH_NOTICE_S = 3.0  # how long the hive may take to notice a worker's death
LOADING_STATES: frozenset[str] = frozenset({WorkerState.STARTING, WorkerState.LOADING})


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
    chat: bool = False  # the prompt as one user message, in the model's chat template
    # A new worker's built-in template: Keeper.infer sets the inventory's for the model.
    chat_template: str | None = None
    # The worker to use while it serves this model (the dashboard's highlighted one), if
    # this keeper's registry has it; else a warm one, or a new one, as usual.
    worker_id: str | None = None


class Interrupted(Exception):
    """Ctrl+C (or a cancel) before the stream started: the command simply ends."""


class Infer:
    """One prompt on one node, from a warm worker or a new one, reported to a listener:
    the flow the CLI, the dashboard and the queen share."""

    def __init__(
        self,
        access: NodeAccess,
        request: InferRequest,
        listener: Listener,
        registry: WorkerRegistry,
    ) -> None:
        self.access = access
        self.node = access.node
        self.request = request
        self.listener = listener
        self.registry = registry
        self._interrupted = asyncio.Event()

    def cancel(self) -> None:
        """Ctrl+C (or the dashboard's cancel): stops the request as EC5 describes."""
        self._interrupted.set()

    def _step(self, text: str) -> None:
        self.listener.heard(Step(text))

    async def run(self) -> int:
        """The exit code: 0 answered, 1 failed (the listener heard why), 130 interrupted."""
        try:
            worker = await self._until_interrupted(self._find_or_start_worker())
            return await self._stream(worker)
        except Interrupted:
            return EXIT_INTERRUPTED
        except ActionableError as error:
            self.listener.heard(Failed(error))
            return EXIT_FAILED

    async def _until_interrupted(self, work: Awaitable[T]) -> T:
        """Runs `work`; Ctrl+C before the stream starts simply ends the command."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._interrupted.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            return task.result()
        task.cancel()
        self._step("Canceled.")
        raise Interrupted()

    # ----------------------------------------------------------------- phases 1-7

    async def _find_or_start_worker(self) -> RegisteredWorker:
        req, node = self.request, self.node
        chosen = self.registry.get(req.worker_id) if req.worker_id else None
        if (
            chosen is not None
            and (chosen.node, chosen.model_ref) == (node.name, req.model_ref)
            and await self._health_of(chosen) is not None
        ):
            return chosen  # picked by the person: whatever template it was started with
        warm = self.registry.find_warm(node.name, req.model_ref, max_age_s=WARM_MAX_AGE_S)
        if warm is not None:
            health = await self._health_of(warm)
            if health is None:
                self.registry.remove(warm.worker_id)
                self._step("No idle worker found, starting new worker...")
            elif serves_template(health.chat_template, req.chat_template):
                return warm
            else:  # a fine worker, started with another template: left to those who want it
                self._step("No idle worker with this chat template, starting new worker...")
        async with self.access.hive(timeout_s=HIVE_TIMEOUT_S) as hive:
            await self._hive_preflight(hive)
            try:
                await provision(hive, node.name, req.model_ref, self.listener)
                spawned = await hive.spawn(
                    req.model_ref,
                    backend=req.backend,
                    device=req.device,
                    chat_template=req.chat_template,
                )
            except RemoteError as exc:
                raise remote_failure(node, exc) from None
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

    async def _health_of(self, worker: RegisteredWorker) -> WorkerHealth | None:
        """The worker's health while it is still there and serving; else None."""
        try:
            async with WorkerClient(
                await self.access.worker_url(worker.url), worker.api_key, timeout_s=5
            ) as client:
                health = await client.health()
        except (httpx.HTTPError, RemoteError, OSError):
            return None
        if health.worker_id == worker.worker_id and health.state in SERVING_STATES:
            return health
        return None

    async def _hive_preflight(self, hive: HiveClient) -> None:
        """Phase 2: the hive answers (3 attempts) and speaks our version."""
        node = self.node
        if node.is_local:
            await ensure_local_hive(self.access, self._step)
        try:
            health = await connect_attempts(
                hive.health,
                address=node.hive_address,
                timeout_s=HIVE_TIMEOUT_S,
                say=self._step,
                retry_if=lambda e: isinstance(e, httpx.TransportError),
            )
        except httpx.TransportError:
            raise cannot_connect(
                node.hive_address,
                suggestion=f"Check if rbee-hive is running on {node.name}: "
                f"`rbee ssh-up {node.name}`",
            ) from None
        except (RemoteError, ValueError, KeyError):
            raise not_our_hive(node) from None
        if health.version != VERSION:
            raise version_mismatch(node, health.version)

    def _load_failed(self, message: str) -> ActionableError:
        """The worker could not load the model: the other backend, or the file itself."""
        return ActionableError(
            message,
            suggestion=use_cpu(self.node)
            if self.request.backend != "cpu"
            else damaged_model(self.node),
        )

    async def _wait_ready(self, worker: RegisteredWorker) -> None:
        """Phase 7: the loading bar, until ready; LOADING_TIMEOUT past the limit."""
        reached: dict[str, int] = {}

        def show(event: LoadingEvent) -> None:
            if isinstance(event, LoadingProgress) and event.layers_total:
                reached.update(done=event.layers_loaded, total=event.layers_total)
                self.listener.heard(Loading(event.layers_loaded, event.layers_total))
            elif isinstance(event, LoadingReady):
                self._step("Model ready!")

        try:
            async with WorkerClient(
                await self.access.worker_url(worker.url), worker.api_key
            ) as client:
                await client.wait_ready(timeout_s=self.request.loading_timeout_s, on_progress=show)
        except LoadFailed as exc:
            self.registry.remove(worker.worker_id)  # it will never serve
            raise self._load_failed(exc.message) from None
        except RemoteError as exc:
            if exc.code == ErrorCode.LOADING_TIMEOUT:
                limit = self.request.loading_timeout_s
                span = f"{limit / 60:g} minutes" if limit % 60 == 0 else f"{limit:g} seconds"
                where = (
                    f" (stuck at {reached['done']}/{reached['total']} layers)" if reached else ""
                )
                raise ActionableError(
                    f"Model loading timeout after {span}",
                    f"Worker state: loading{where}",
                    suggestion=f"Check worker logs on {self.node.name} for errors",
                ) from None
            if exc.code != ErrorCode.CONNECTION_TIMEOUT:  # else the stream fell silent
                self.registry.remove(worker.worker_id)  # it will not serve us
                raise ActionableError(
                    exc.message, suggestion=f"{see_logs(self.node)} and retry"
                ) from None
            await self._lost_while_loading(worker)
        except httpx.TransportError:  # the progress stream broke: did the worker die?
            await self._lost_while_loading(worker)
        self.registry.mark_healthy(worker.worker_id, WorkerState.IDLE)

    async def _lost_while_loading(self, worker: RegisteredWorker) -> None:
        """Returns if the worker loaded after all; otherwise forgets it and raises how it
        ended (the hive saw it: its crash record holds the worker's last log lines)."""
        node = self.node
        try:
            entry, record = await self._hive_view(worker.worker_id)
            state = str(entry.state) if entry else "crashed"
        except (httpx.HTTPError, RemoteError, ValueError, KeyError):
            entry, record, state = None, None, "unknown"
        if state in SERVING_STATES:
            return
        self.registry.remove(worker.worker_id)
        if state == "failed" and entry:
            raise self._load_failed(entry.error or "the model failed to load")
        if state == "crashed":
            why, tail = _crash_report(record)
            raise ActionableError(
                f"The worker crashed while loading the model on {node.name}",
                f"{worker.worker_id}: {why}",
                *(["Last lines of its log:", *quoted_log(tail)] if tail else []),
                suggestion=damaged_model(node),
            )
        raise ActionableError(
            f"Lost contact with {worker.worker_id} on {node.name} while it was loading",
            suggestion=f"{see_logs(node)} and retry",
        )

    async def _hive_view(self, worker_id: str) -> tuple[WorkerRow | None, str | None]:
        """The hive's entry for the worker (None once it removed it as crashed), waiting a
        moment for the hive to notice a death, and then the hive's crash record of it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CRASH_NOTICE_S
        async with self.access.hive(timeout_s=HIVE_TIMEOUT_S) as hive:
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
        if req.chat:
            params["messages"] = one_user_message(req.prompt)
        url = await self.access.worker_url(worker.url)
        for delay in (*BUSY_RETRY_DELAYS_S[: req.busy_retries], None):
            async with WorkerClient(url, worker.api_key) as client:
                try:
                    return await self._stream_once(client, worker, request_id, params)
                except RemoteError as exc:
                    if exc.code != ErrorCode.ALL_SLOTS_BUSY:
                        raise remote_failure(self.node, exc) from None
                    if delay is None:
                        retries = "retry" if req.busy_retries == 1 else "retries"
                        raise ActionableError(
                            f"Worker still busy after {req.busy_retries} {retries}",
                            suggestion="Wait for current request to complete or use a "
                            "different node",
                        ) from None
                    self._step(
                        f"Worker is busy, retrying in {delay:g} "
                        f"second{'s' if delay != 1 else ''}..."
                    )
                    await asyncio.sleep(delay)
                except (httpx.TransportError, OSError):
                    self.registry.remove(worker.worker_id)
                    raise ActionableError(
                        f"Cannot reach worker {worker.worker_id} on {self.node.name}",
                        suggestion="run `rbee workers list` and try again",
                    ) from None
        return EXIT_FAILED

    async def _stream_once(
        self,
        client: WorkerClient,
        worker: RegisteredWorker,
        request_id: str,
        params: dict[str, Any],
    ) -> int:
        tokens: list[str] = []
        self.listener.heard(RequestSent())
        events = client.stream(None if self.request.chat else self.request.prompt, **params)
        next_event = asyncio.ensure_future(anext(events))
        interrupted = asyncio.ensure_future(self._interrupted.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {next_event, interrupted}, return_when=asyncio.FIRST_COMPLETED
                )
                if interrupted in done:
                    return await self._cancel(client, request_id)
                try:
                    event = next_event.result()
                except (StopAsyncIteration, httpx.TransportError):
                    raise self._broken_stream(worker, request_id, tokens) from None
                except (PeerSilent, InvalidResponse) as exc:  # frozen, or answering nonsense
                    raise self._broken_stream(worker, request_id, tokens, exc.message) from None
                if isinstance(event, TokenEvent):
                    tokens.append(event.token)
                    self.listener.heard(Token(event.token))
                elif isinstance(event, Done):
                    self.listener.heard(AnswerEnded())
                    self.registry.mark_healthy(worker.worker_id, WorkerState.IDLE)
                    return EXIT_OK
                elif isinstance(event, ErrorEvent):
                    self.listener.heard(AnswerEnded())
                    raise ActionableError(event.error.message, suggestion=see_logs(self.node))
                next_event = asyncio.ensure_future(anext(events))
        finally:
            interrupted.cancel()
            await close_at_rest(events, next_event)

    async def _cancel(self, client: WorkerClient, request_id: str) -> int:
        """EC5: tell the worker, wait a little for its acknowledgement, exit 130."""
        self.listener.heard(AnswerEnded())
        try:
            await client.cancel(request_id, timeout_s=CANCEL_ACK_TIMEOUT_S)
            self._step("Canceled.")
        except (httpx.HTTPError, RemoteError, OSError):
            self._step("Canceled (worker may still be processing).")
        return EXIT_INTERRUPTED

    def _broken_stream(
        self, worker: RegisteredWorker, request_id: str, tokens: list[str], why: str | None = None
    ) -> ActionableError:
        """EC4: the stream ended without its terminal event; keep what arrived. `why`, when
        known, is a detail line (a worker that fell silent, or answered nonsense)."""
        self.listener.heard(AnswerEnded())
        try:
            saved = f"Partial result saved to: {save_partial(request_id, ''.join(tokens))}"
        except OSError as exc:
            saved = f"Partial result not saved: {exc.strerror or exc}"
        self.registry.remove(worker.worker_id)
        return ActionableError(
            "SSE stream closed unexpectedly",
            *([why[:1].upper() + why[1:]] if why else []),
            saved,
            f"Tokens generated: {len(tokens)} / {self.request.max_tokens}",
            suggestion=f"the worker may have crashed: `rbee logs --node {self.node.name}`",
        )


def one_user_message(prompt: str) -> list[dict[str, str]]:
    """`--chat`: the prompt as a conversation of one user message, which the worker renders
    with its chat template (as POST /v1/chat/completions does)."""
    return [{"role": "user", "content": prompt}]


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


async def close_at_rest(events: AsyncGenerator[Any, None], pending: asyncio.Future[Any]) -> None:
    """Closes a stream of events whose next event `pending` may still be awaited: the
    generator must be at rest (that wait settled) before it can be closed."""
    if not pending.done():
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
    await events.aclose()
