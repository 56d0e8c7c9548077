"""The worker service: lifecycle, slots, generations, loading progress, shutdown.

The HTTP routes (`http_api.py`, `openai_api.py`) are thin layers over this object; it talks to the
engine only through the interface in `engine.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from rbee.dataplane.plumbing.gguf_file import ModelInfo, read_model_info, resolve_model_path
from rbee.dataplane.protocol.states import WorkerState
from rbee.dataplane.protocol.wire import VERSION, ApiError, ErrorCode, ErrorInfo
from rbee.dataplane.protocol.worker_api import (
    LoadingEvent,
    LoadingFailed,
    LoadingProgress,
    LoadingReady,
    ReadyCallback,
    WorkerHealth,
    WorkerReadiness,
)

from .chat import ChatTemplate, choose_template
from .engine import DoneEvent, Engine, ErrorEvent, Generation, LoadProgress, SamplingParams
from .lifecycle import Lifecycle
from .metrics import WorkerMetrics
from .settings import WorkerSettings

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0  # after a drain times out, how long canceled streams get to end


EngineFactory = Callable[[Path, ModelInfo, Callable[[LoadProgress], None]], Engine]


class Worker:
    def __init__(self, settings: WorkerSettings, engine_factory: EngineFactory) -> None:
        self.settings = settings
        self._engine_factory = engine_factory
        self.engine: Engine | None = None  # exists once the model file has been found
        self.chat_template: ChatTemplate | None = None  # chosen once the model has loaded
        self.lifecycle = Lifecycle()
        self.metrics = WorkerMetrics(settings.slots)
        self.url = ""  # set once the server is bound
        self.load_error: str | None = None
        self.slots_busy = 0
        self._last_activity = time.monotonic()  # start or end of the latest request
        self.last_tokens_per_s: float | None = None  # decode speed of the latest finished request
        self.stopped = asyncio.Event()
        self._generations: dict[str, Generation] = {}
        self._progress = LoadProgress(0, 0, 0)
        self._progress_changed = asyncio.Condition()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- loading

    async def run_loading(self) -> None:
        """Finds the model, loads it, then moves to idle or failed; tells the callback."""
        self.lifecycle.to(WorkerState.LOADING)
        await self._notify_callback()
        loop = asyncio.get_running_loop()
        try:
            # Finding and reading the file is plain I/O (a bundled model may be assembled
            # first); only the engine's own thread calls llama.cpp.
            path = await asyncio.to_thread(resolve_model_path, self.settings.model_ref)
            info = await asyncio.to_thread(read_model_info, path)
            if self.lifecycle.state is not WorkerState.LOADING:
                return  # shut down while the file was being found
            self._progress = LoadProgress(0, info.layers_total, 0)

            def on_progress(progress: LoadProgress) -> None:  # on the engine's thread
                loop.call_soon_threadsafe(self.report_progress, progress)

            self.engine = self._engine_factory(path, info, on_progress)
            self.engine.start()
            await self.engine.wait_loaded()
            self.chat_template = choose_template(
                self.engine.chat_template, info.architecture, self.settings.chat_template
            )
        except Exception as exc:
            self.load_error = str(exc)
            log.error("model failed to load: %s", exc)
            if self.lifecycle.can(WorkerState.FAILED):
                self.lifecycle.to(WorkerState.FAILED)
        else:
            if self.lifecycle.can(WorkerState.IDLE):
                self.lifecycle.to(WorkerState.IDLE)
                log.info(
                    "model ready: %s (%d slots, chat template: %s)",
                    self.settings.served_model,
                    self.settings.slots,
                    self.chat_template_in_use,
                )
        async with self._progress_changed:
            self._progress_changed.notify_all()
        if self.lifecycle.state in (WorkerState.IDLE, WorkerState.FAILED):
            await self._notify_callback()

    def report_progress(self, progress: LoadProgress) -> None:
        """Called on the event loop for each step of the load."""
        self._progress = progress
        self._spawn(self._notify_progress())

    async def _notify_progress(self) -> None:
        async with self._progress_changed:
            self._progress_changed.notify_all()

    async def loading_events(self) -> AsyncIterator[LoadingEvent]:
        """Loading progress as DESIGN §4's SSE objects, ending with ready or failed."""
        sent: LoadProgress | None = None
        while True:
            state = self.lifecycle.state
            if self._progress != sent and state in (WorkerState.STARTING, WorkerState.LOADING):
                sent = self._progress
                yield LoadingProgress(
                    layers_loaded=sent.layers_loaded,
                    layers_total=sent.layers_total,
                    vram_mb=sent.loaded_mb,
                )
            if self.lifecycle.serving:
                yield LoadingReady()
                return
            if state is WorkerState.FAILED:
                yield LoadingFailed(error=self._failure())
                return
            if state in (WorkerState.DRAINING, WorkerState.STOPPED):
                yield LoadingFailed(
                    error=ErrorInfo(
                        code=ErrorCode.BACKEND_UNAVAILABLE, message="the worker is shutting down"
                    )
                )
                return
            async with self._progress_changed:
                await self._progress_changed.wait()

    def _failure(self) -> ErrorInfo:
        return ErrorInfo(
            code=ErrorCode.BACKEND_UNAVAILABLE, message=f"model failed to load: {self.load_error}"
        )

    # ----------------------------------------------------------------- status

    def health(self) -> WorkerHealth:
        return WorkerHealth(
            state=self.lifecycle.state,
            worker_id=self.settings.worker_id,
            model_ref=self.settings.served_model,
            slots_total=self.settings.slots,
            slots_busy=self.slots_busy,
            idle_s=self.idle_seconds(),
            last_tokens_per_s=self.last_tokens_per_s,
            version=VERSION,
            chat_template=self.chat_template_in_use,
        )

    @property
    def chat_template_in_use(self) -> str | None:
        """Which template chat requests get ("gemma (fallback)"…); None until loaded."""
        return self.chat_template.in_use if self.chat_template else None

    def idle_seconds(self) -> float:
        """How long no request has been in flight (0 while one is): the hive's idle timer."""
        if self.slots_busy:
            return 0.0
        return round(time.monotonic() - self._last_activity, 3)

    def readiness(self) -> WorkerReadiness:
        state = self.lifecycle.state
        if self.lifecycle.serving:
            return WorkerReadiness(ready=True, state=state, model_loaded=True)
        if state in (WorkerState.STARTING, WorkerState.LOADING):
            return WorkerReadiness(
                ready=False,
                state=state,
                progress_url=f"{self.url}/v1/loading/progress",
                layers_loaded=self._progress.layers_loaded,
                layers_total=self._progress.layers_total,
            )
        if state is WorkerState.FAILED:
            return WorkerReadiness(ready=False, state=state, error=self._failure())
        return WorkerReadiness(ready=False, state=state)

    # ----------------------------------------------------------------- generation

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around preparing a request whose body has been read (validating, tokenizing), up
        to `begin`: the engine knows a request is on its way and lets a prefill wait a moment
        for it (Engine.arriving). Not around reading the body: a client sends it at its own
        pace."""
        engine = self.engine
        if engine is None:
            yield
            return
        engine.arriving += 1
        try:
            yield
        finally:
            engine.arriving -= 1

    async def prepare_prompt(self, text: str, *, add_special: bool = True) -> list[int]:
        """Tokenizes a prompt and checks it fits one slot's context."""
        engine = self.serving_engine()
        return self._fitting(await engine.tokenize(text, add_special=add_special))

    def prepare_token_prompt(self, tokens: list[int]) -> list[int]:
        """Checks a prompt sent as token ids: each one of the model's, and they fit a slot."""
        n_vocab = self.serving_engine().n_vocab
        unknown = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if unknown is not None:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"prompt: token id {unknown} is not one of this model's (0 to {n_vocab - 1})",
                details={"field": "prompt", "n_vocab": n_vocab},
            )
        return self._fitting(tokens)

    def _fitting(self, tokens: list[int]) -> list[int]:
        """`tokens`, once they are known to fit one slot's context."""
        limit = self.serving_engine().n_ctx_per_slot
        if not tokens:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                "prompt: the prompt is empty",
                details={"field": "prompt"},
            )
        if len(tokens) >= limit:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"prompt: the prompt is {len(tokens)} tokens; this worker's context holds "
                f"{limit} tokens per request (prompt and answer together)",
                details={"field": "prompt", "prompt_tokens": len(tokens), "n_ctx": limit},
            )
        return tokens

    def begin(
        self, prompt_tokens: list[int], params: SamplingParams, request_id: str | None
    ) -> Generation:
        """Claims a slot and starts a generation. Never awaits, so the claim is atomic."""
        engine = self.serving_engine()
        if self.slots_busy >= self.settings.slots:
            self.metrics.requests.labels("busy").inc()
            raise ApiError(
                ErrorCode.ALL_SLOTS_BUSY,
                f"all {self.settings.slots} slots are busy; retry shortly",
                details={"slots_total": self.settings.slots, "slots_busy": self.slots_busy},
                headers={"Retry-After": "1"},
            )
        request_id = request_id or f"req-{uuid.uuid4().hex[:16]}"
        if request_id in self._generations:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"request_id: {request_id} is already running",
                details={"field": "request_id"},
            )
        gen = Generation(request_id, prompt_tokens, params, asyncio.get_running_loop())
        self._last_activity = time.monotonic()
        self.slots_busy += 1
        self.metrics.slots_busy.set(self.slots_busy)
        self._generations[request_id] = gen
        if self.lifecycle.state is WorkerState.IDLE:
            self.lifecycle.to(WorkerState.BUSY)
        engine.submit(gen)
        self._spawn(self._release_when_finished(gen))
        return gen

    async def _release_when_finished(self, gen: Generation) -> None:
        await gen.finished.wait()
        self._generations.pop(gen.request_id, None)
        self._last_activity = time.monotonic()
        self.slots_busy -= 1
        self.metrics.slots_busy.set(self.slots_busy)
        if self.slots_busy == 0 and self.lifecycle.state is WorkerState.BUSY:
            self.lifecycle.to(WorkerState.IDLE)
        self._record(gen)

    def _record(self, gen: Generation) -> None:
        end = time.monotonic()
        result = gen.terminal
        if isinstance(result, ErrorEvent):
            self.metrics.requests.labels("error").inc()
            return
        assert isinstance(result, DoneEvent)
        self.metrics.requests.labels(str(result.stop_reason)).inc()
        self.metrics.tokens.inc(result.total_tokens)
        if gen.first_token_at is not None:
            self.metrics.ttft.observe(gen.first_token_at - gen.created)
            decode_s = end - gen.first_token_at
            if result.total_tokens > 1 and decode_s > 0:
                self.last_tokens_per_s = round((result.total_tokens - 1) / decode_s, 2)
                self.metrics.tokens_per_second.observe(self.last_tokens_per_s)

    def cancel(self, request_id: str) -> bool:
        gen = self._generations.get(request_id)
        if gen is None:
            return False
        gen.cancel()
        return True

    def serving_engine(self) -> Engine:
        """The engine, when the worker takes requests; otherwise an ApiError saying why not."""
        state = self.lifecycle.state
        if self.lifecycle.serving and self.engine is not None:
            return self.engine
        if state in (WorkerState.STARTING, WorkerState.LOADING):
            message = "the model is still loading; wait until GET /v1/ready says ready"
        elif state is WorkerState.FAILED:
            message = f"the model failed to load: {self.load_error}"
        else:
            message = "the worker is shutting down"
        raise ApiError(
            ErrorCode.BACKEND_UNAVAILABLE,
            message,
            details={"state": str(state)},
            headers={"Retry-After": "2"} if state is WorkerState.LOADING else None,
        )

    # ----------------------------------------------------------------- shutdown

    def request_shutdown(self) -> None:
        """Starts the graceful shutdown once; safe to call many times (admin API, signals)."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown())

    async def _shutdown(self) -> None:
        log.info("shutting down: %d stream(s) in flight", len(self._generations))
        self.lifecycle.to(WorkerState.DRAINING)
        async with self._progress_changed:
            self._progress_changed.notify_all()
        if self._generations:
            pending = [g.finished.wait() for g in self._generations.values()]
            done = await _wait_all(pending, self.settings.drain_timeout_s)
            if not done:
                log.warning("drain timeout: canceling %d stream(s)", len(self._generations))
                for gen in list(self._generations.values()):
                    gen.cancel()
                await _wait_all(
                    [g.finished.wait() for g in self._generations.values()], CANCEL_GRACE_S
                )
        if self.engine is not None:
            await self.engine.close()
        self.lifecycle.to(WorkerState.STOPPED)
        log.info("stopped")
        self.stopped.set()

    # ----------------------------------------------------------------- callback

    async def _notify_callback(self) -> None:
        """POSTs this worker's identity and state to --callback-url (the hive), with retries."""
        url = self.settings.callback_url
        if not url:
            return
        body = ReadyCallback(
            worker_id=self.settings.worker_id,
            url=self.url,
            model_ref=self.settings.served_model,
            backend=self.settings.backend,
            device=self.settings.device,
            slots_total=self.settings.slots,
            state=self.lifecycle.state,
            error=self._failure() if self.load_error else None,
        ).wire()
        key = self.settings.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.callback_attempts),
                wait=wait_exponential(multiplier=0.2, max=2),
                reraise=True,
            ):
                with attempt:
                    async with httpx.AsyncClient(timeout=5) as client:
                        response = await client.post(url, json=body, headers=headers)
                        response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("callback to %s failed: %s", url, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _wait_all(waits: list[Any], timeout: float) -> bool:
    if not waits:
        return True
    tasks = [asyncio.ensure_future(w) for w in waits]
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    return not pending
