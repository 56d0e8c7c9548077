"""A continuously batched llama.cpp engine on llama-cpp-python's low-level API.

One model, one context with `n_seq_max = slots` (one sequence id per slot), one decode loop on
one dedicated thread for the life of the process: every llama.cpp call happens there, because
calling llama.cpp from alternating threads costs about a third of decode speed (measured).

Each step puts into one `llama_decode` batch: one token for every running stream, then as many
prompt tokens of newly admitted requests as the batch has room for (chunked prefill, so running
streams keep flowing while a long prompt is read). A request submitted mid-generation joins at
the next step. Each sequence samples with its own sampler chain (a plain greedy one takes the
argmax of its logits itself). The events of a step reach the event loop together, with one
wake-up.

Prompt reuse: a slot keeps its KV cells after its request ends. A new request goes to the free
slot whose cached tokens share the longest prefix with its prompt (a chat client resends the
whole history each turn), and only the rest of the prompt is decoded; without such a slot it
takes the least recently used one that keeps the running sequence ids consecutive.
docs/worker.md has the rules and their measurements.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from rbee.dataplane.protocol.events import StopReason
from rbee.dataplane.protocol.wire import ApiError, ErrorCode

from .engine import (
    DoneEvent,
    ErrorEvent,
    Event,
    Generation,
    LoadProgress,
    SamplingParams,
    TokenEvent,
    deliver_all,
)
from .grammar_sampler import GrammarError, GrammarSampler
from .logprobs import LogprobAligner, TokenLogprob, TopLogprob, log_softmax_top
from .stops import StopBuffer
from .threadpool import QuietThreadpool

log = logging.getLogger(__name__)
llama_log = logging.getLogger("rbee.llama")
# A llama.cpp abort (GGML_ASSERT) then ends the worker's log with its own message, which the
# hive and keeper show, instead of a gdb backtrace that also holds the dying process 2 s or more.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")


# The most generated tokens OpenAI's penalties look back over when a request sets no
# max_tokens (the penalties sampler keeps a ring buffer of that many tokens).
MAX_PENALTY_WINDOW = 8192

# A reused prompt prefix ends on a multiple of this many tokens within a prefill batch
# (_reusable says why).
REUSE_ALIGN = 64

# How long, at most, a prefill waits for requests still being read or tokenized, so that
# requests sent together are prefilled in one step (a step costs about as much for one short
# prompt as for four), and how often it looks meanwhile.
GATHER_MAX_S = 0.015
GATHER_POLL_S = 0.001
# While requests have lately overlapped (CONCURRENT_RECENT_S), the first step after an idle
# spell also waits until no request has come for this long: requests sent together through
# the queen or a busy client reach the worker a few ms apart, and each one that missed the
# first step waited a whole prefill step behind it (docs/worker.md). A lone user's requests
# never overlap, so they never wait; for a minute after any overlap, one alone waits 3 ms.
GATHER_LINGER_S = 0.003
CONCURRENT_RECENT_S = 60.0


class LoadError(RuntimeError):
    """The model could not be loaded; the message says why."""


@dataclass
class _Sequence:
    """A request that holds a sequence id (a slot) in the context."""

    gen: Generation
    seq_id: int
    sampler: Any  # None: plain greedy, the argmax of the logits
    pending: deque[int]  # prompt tokens not yet decoded
    reused: int  # prompt tokens a slot's cache held from an earlier request
    n_past: int = 0  # tokens of this sequence in the KV cache
    n_generated: int = 0
    batch_index: int = -1  # where this sequence's logits are in the current batch, or -1
    last_token: int = -1
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    stops: StopBuffer = field(default_factory=lambda: StopBuffer(()))
    grammar: GrammarSampler | None = None
    logprobs: LogprobAligner | None = None  # when the request asked for them


class LlamaEngine:
    """Owns the llama.cpp model, context and decode thread (see the module docstring)."""

    def __init__(
        self,
        model_path: str,
        *,
        slots: int,
        ctx_size: int,
        threads: int,
        batch_size: int,
        extra_bufts: bool,
        backend: str,
        device: int,
        on_progress: Callable[[LoadProgress], None],
        layers_total: int,
        file_size: int,
    ) -> None:
        self._model_path = model_path
        self._slots = slots
        self._ctx_size = ctx_size
        self._threads = threads
        self._batch_size = max(batch_size, slots)
        self._extra_bufts = extra_bufts
        self._backend = backend
        self._device = device
        self._on_progress = on_progress
        self._layers_total = max(layers_total, 1)
        self._file_size = file_size

        self._inbox: queue.SimpleQueue[Generation | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llama", daemon=True)
        self._loaded: Future[None] = Future()
        self._stopped: Future[None] = Future()
        self._closing = False
        self._abort_load = threading.Event()  # set by close(): a load in progress gives up

        # Filled on the engine thread by _load(); read-only afterwards.
        self.n_ctx_per_slot = ctx_size
        self.n_vocab = 0
        self.chat_template: str | None = None
        self.bos_text = ""
        self.eos_text = ""
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._batch: Any = None
        self._pool: QuietThreadpool | None = None
        self._errors: deque[str] = deque(maxlen=5)
        self._piece_buf = ctypes.create_string_buffer(64)  # engine thread only
        self._vocab_lock = threading.Lock()

        self._waiting: deque[Generation] = deque()
        self._running: list[_Sequence] = []
        self._free_seq_ids = list(range(slots))
        self._cached: list[list[int]] = [[] for _ in range(slots)]  # per slot, when free
        self._last_used = [0] * slots  # per slot: when its last request ended (a count)
        self._requests_ended = 0
        self._n_swa = 0  # the model's sliding attention window (0: none)
        self._outbox: list[tuple[Generation, Event]] = []  # this step's events
        self.arriving = 0  # written by the event loop (see Engine.arriving)
        self._concurrent_at = -math.inf  # when two requests or more last ran at once

    # ----------------------------------------------------------------- event-loop side

    def start(self) -> None:
        self._thread.start()

    async def wait_loaded(self) -> None:
        """Returns when the model is ready; raises LoadError when it could not be loaded."""
        await asyncio.wrap_future(self._loaded)

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """On a thread of its own, not the engine's: a prompt that arrives while others
        decode is not held until the step ends, and a long one does not hold the event loop.
        llama.cpp's own server tokenizes on its HTTP threads while its loop decodes: the
        vocabulary is read-only once loaded."""
        return await asyncio.to_thread(self._tokenize_loaded, text, add_special)

    def submit(self, generation: Generation) -> None:
        self._inbox.put(generation)

    async def close(self) -> None:
        """Cancels whatever runs, frees the context and model, and ends the thread."""
        if self._thread.is_alive():
            self._abort_load.set()
            self._inbox.put(None)
            await asyncio.wrap_future(self._stopped)

    # ----------------------------------------------------------------- engine thread

    def _run(self) -> None:
        _route_llama_logs(self._errors)
        try:
            self._load()
        except LoadError as exc:
            self._loaded.set_exception(exc)
            self._drain_inbox_after_stop()
            self._stopped.set_result(None)
            return
        self._loaded.set_result(None)
        try:
            while not self._closing:
                self._take_inbox(block=not (self._running or self._waiting))
                self._gather()
                if self._closing:
                    break
                self._admit()
                if self._running:
                    self._step()
                self._flush()
        except Exception:
            log.exception("decode loop failed")
            for seq in list(self._running):
                self._finish(seq, error=(ErrorCode.WORKER_CRASHED, "the decode loop failed"))
        finally:
            for seq in list(self._running):
                self._finish(seq, StopReason.CANCELED)
            for gen in self._waiting:
                self._post(gen, DoneEvent(StopReason.CANCELED, 0))
            self._waiting.clear()
            self._flush()
            self._free()
            self._drain_inbox_after_stop()
            self._stopped.set_result(None)

    def _load(self) -> None:
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        if self._backend != "cpu":
            if not llama_cpp.llama_supports_gpu_offload():
                raise LoadError(f"the {self._backend} backend is not available in this build")
            mparams.n_gpu_layers = -1  # every layer on the device
            mparams.main_gpu = self._device
        else:
            mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = self._extra_bufts
        last = -1

        @llama_cpp.llama_progress_callback  # type: ignore[untyped-decorator]  # a ctypes type
        def progress(fraction: float, _user: ctypes.c_void_p) -> bool:
            nonlocal last
            layers = min(self._layers_total, int(fraction * self._layers_total + 1e-6))
            if layers != last:
                last = layers
                self._on_progress(
                    LoadProgress(layers, self._layers_total, int(fraction * self._file_size) >> 20)
                )
            return not self._abort_load.is_set()

        mparams.progress_callback = progress
        model = llama_cpp.llama_model_load_from_file(self._model_path.encode(), mparams)
        if not model:
            if self._abort_load.is_set():
                raise LoadError("loading was aborted by a shutdown")
            raise LoadError(self._load_failure("llama.cpp could not load it"))
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._n_swa = llama_cpp.llama_model_n_swa(model)

        cparams = llama_cpp.llama_context_default_params()
        # Each slot gets ctx_size cells of its own (llama.cpp splits n_ctx across sequences).
        cparams.n_ctx = self._ctx_size * self._slots
        cparams.n_batch = self._batch_size
        cparams.n_ubatch = self._batch_size
        cparams.n_seq_max = self._slots
        cparams.n_threads = self._threads
        cparams.n_threads_batch = self._threads
        cparams.kv_unified = False
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise LoadError(self._load_failure("llama.cpp could not create a context"))
        self._ctx = ctx
        # A persistent pool whose worker naps briefly between decodes: without it ggml starts
        # a thread per decode and the engine thread spins at barriers while the event loop
        # waits for a core (measured: 80-2100 tok/s run to run on the tiny model, steady ~3000
        # with it).
        self._pool = QuietThreadpool(self._threads)
        self._pool.attach(ctx)
        self.n_ctx_per_slot = llama_cpp.llama_n_ctx(ctx) // self._slots
        # llama.cpp may lower the batch (to a context smaller than it) and pad the context:
        # a step larger than its batch aborts the process (GGML_ASSERT), so its word counts.
        self._batch_size = min(
            self._batch_size, llama_cpp.llama_n_batch(ctx), llama_cpp.llama_n_ubatch(ctx)
        )
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8", "replace") if template else None
        self.bos_text = self._piece(llama_cpp.llama_vocab_bos(self._vocab), special=True)
        self.eos_text = self._piece(llama_cpp.llama_vocab_eos(self._vocab), special=True)
        self._on_progress(
            LoadProgress(self._layers_total, self._layers_total, self._file_size >> 20)
        )

    def _load_failure(self, fallback: str) -> str:
        """Names the file and llama.cpp's first error line (the cause; later ones are echoes)."""
        cause = self._errors[0].split(": ", 1)[-1] if self._errors else fallback
        return f"{os.path.basename(self._model_path)}: {cause}"

    def _free(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._pool is not None:
            self._pool.free()  # after llama_free: the backend keeps its pointer until then
            self._pool = None
        if self._model:
            with self._vocab_lock:  # no tokenization under way (tokenize)
                self._vocab = None
                llama_cpp.llama_model_free(self._model)
            self._model = None

    def _take_inbox(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(block=block)
            while True:
                self._accept(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _accept(self, item: Generation | None) -> None:
        if item is None:
            self._closing = True
        else:
            self._waiting.append(item)

    def _gather(self) -> None:
        """Before the first step after idle, waits (GATHER_MAX_S at most) for the requests the
        event loop is still preparing, and while requests have lately overlapped, until none
        has come for GATHER_LINGER_S, while slots are free for them: requests sent together then
        share one prefill step instead of each waiting for the previous one's. Never while
        streams decode: they would stall meanwhile (a newcomer joins the next step)."""
        if self._running or not self._waiting:
            return
        now = time.monotonic()
        lingering = now - self._concurrent_at < CONCURRENT_RECENT_S
        linger_until = now + GATHER_LINGER_S if lingering else now
        deadline = now + GATHER_MAX_S
        while (
            (self.arriving > 0 or time.monotonic() < linger_until)
            and len(self._waiting) < len(self._free_seq_ids)
            and not self._closing
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                item = self._inbox.get(timeout=min(left, GATHER_POLL_S))
            except queue.Empty:
                continue
            self._accept(item)
            if lingering:  # a burst still coming in: wait as long again after each one
                linger_until = time.monotonic() + GATHER_LINGER_S

    def _post(self, gen: Generation, event: Event) -> None:
        self._outbox.append((gen, event))

    def _flush(self) -> None:
        """Hands this step's events to their event loops, one call (one wake-up) per loop
        rather than one per token."""
        if not self._outbox:
            return
        events, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Generation, Event]]] = {}
        for gen, event in events:
            by_loop.setdefault(gen.loop, []).append((gen, event))
        for loop, loop_events in by_loop.items():
            loop.call_soon_threadsafe(deliver_all, loop_events)

    def _drain_inbox_after_stop(self) -> None:
        """Answers whatever arrives once the engine cannot serve any more."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.post(ErrorEvent(ErrorCode.BACKEND_UNAVAILABLE, "the model is not loaded"))

    def _admit(self) -> None:
        while self._waiting and self._free_seq_ids:
            gen = self._waiting.popleft()
            if gen.canceled:
                self._post(gen, DoneEvent(StopReason.CANCELED, 0))
                continue
            prompt = gen.prompt_tokens
            grammar = None
            try:
                if gen.params.grammar:
                    grammar = GrammarSampler(self._vocab, gen.params.grammar)
                sampler = _make_sampler(gen.params, self.n_vocab, prompt)
            except GrammarError as exc:
                self._post(gen, ErrorEvent(ErrorCode.INVALID_REQUEST, str(exc)))
                continue
            except Exception:  # this request is answered; the others go on
                log.exception("%s: the request's sampler could not be built", gen.request_id)
                if grammar is not None:
                    grammar.free()
                message = "the request's sampler could not be built"
                self._post(gen, ErrorEvent(ErrorCode.INTERNAL_ERROR, message))
                continue
            seq_id, reused = self._claim_slot(prompt)
            seq = _Sequence(
                gen=gen,
                seq_id=seq_id,
                sampler=sampler,
                pending=deque(prompt[reused:]),
                reused=reused,
                n_past=reused,
                stops=StopBuffer(gen.params.stop),
                grammar=grammar,
                logprobs=LogprobAligner() if gen.params.logprobs is not None else None,
            )
            self._running.append(seq)

    def _claim_slot(self, prompt: list[int]) -> tuple[int, int]:
        """A free slot for `prompt`, and how many of the prompt's first tokens its KV cells
        already hold (they are not decoded again).

        The reused part ends where a fresh prefill of the prompt would start a tile of rows
        (see _reusable), so the answer is bit for bit the one a fresh slot gives when both
        prompts were prefilled alone. The last prompt token is always decoded again: its
        logits give the first token. Among slots that help as much (the same prefix, a
        system prompt every chat shares, or none), `_placed_slot` chooses."""
        reused, equal = 0, list(self._free_seq_ids)
        for seq_id in self._free_seq_ids:
            shared = _reusable(self._cached[seq_id], prompt, self._batch_size)
            if shared > reused:
                reused, equal = shared, [seq_id]
            elif shared == reused and shared:
                equal.append(seq_id)
        running = [seq.seq_id for seq in self._running]
        slot = _placed_slot(equal, running, self._last_used)
        self._free_seq_ids.remove(slot)
        self._cached[slot] = []
        mem = llama_cpp.llama_get_memory(self._ctx)
        if reused > 0 and self._truncate(mem, slot, reused):
            return slot, reused
        llama_cpp.llama_memory_seq_rm(mem, slot, -1, -1)
        return slot, 0

    def _truncate(self, mem: Any, seq_id: int, n: int) -> bool:
        """Keeps the first n cached positions of a sequence, if the memory can: a partial
        removal may be refused, and a sliding-window cache may no longer hold the window
        that position n attends to (llama.cpp's server checks the same)."""
        if not llama_cpp.llama_memory_seq_rm(mem, seq_id, n, -1):
            return False
        window_start = max(0, n - self._n_swa) if self._n_swa else 0
        pos_min: int = llama_cpp.llama_memory_seq_pos_min(mem, seq_id)
        return 0 <= pos_min <= window_start

    def _step(self) -> None:
        for seq in [s for s in self._running if s.gen.canceled]:
            self._finish(seq, StopReason.CANCELED)
        if not self._running:
            return
        if len(self._running) > 1:
            self._concurrent_at = time.monotonic()
        batch = self._batch
        n = 0

        def add(token: int, seq: _Sequence, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = seq.n_past
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = logits
            seq.n_past += 1
            n += 1

        # Running streams get one token each; the rest of the batch goes to prompt chunks,
        # oldest request first (chunked prefill).
        room = self._batch_size - sum(1 for s in self._running if not s.pending)
        chunk: dict[int, int] = {}
        for seq in self._running:
            if seq.pending and room > 0:
                chunk[seq.seq_id] = min(len(seq.pending), room)
                room -= chunk[seq.seq_id]
        # Tokens go in grouped by sequence, in seq_id order: with a KV stream per sequence,
        # llama.cpp cuts a batch into one ubatch per run of consecutive seq ids, in order of
        # first appearance (measured: 4 streams in order 1,2,3,0 took 72 ms a step, in order
        # 0,1,2,3 46 ms).
        for seq in sorted(self._running, key=lambda s: s.seq_id):
            seq.batch_index = -1
            if not seq.pending:
                seq.batch_index = n
                add(seq.last_token, seq, True)
            for _ in range(chunk.get(seq.seq_id, 0)):
                token = seq.pending.popleft()
                last = not seq.pending
                if last:
                    seq.batch_index = n
                add(token, seq, last)
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            # 1: no room in the KV cache for this batch; <0: a fatal error. Either way the
            # sequences in this batch cannot go on.
            message = "the context is full" if rc == 1 else f"llama_decode failed ({rc})"
            for seq in list(self._running):
                self._finish(seq, error=(ErrorCode.INTERNAL_ERROR, message))
            return
        for seq in list(self._running):
            if seq.batch_index >= 0:
                self._sample(seq)

    def _sample(self, seq: _Sequence) -> None:
        if seq.sampler is None:
            token = int(np.argmax(self._logits(seq.batch_index)))
        elif seq.grammar is None:
            token = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, seq.batch_index)
        else:
            sampled = seq.grammar.sample(seq.sampler, self._ctx, seq.batch_index)
            if sampled is None:
                message = (
                    "response_format: no token of the model's vocabulary continues the "
                    "required format; loosen the schema"
                )
                self._finish(seq, error=(ErrorCode.INVALID_REQUEST, message))
                return
            token = sampled
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, StopReason.EOS)
            return
        seq.n_generated += 1
        seq.last_token = token
        piece = self._piece_bytes(token)
        decoded = seq.utf8.decode(piece)
        if seq.logprobs is not None:
            seq.logprobs.add(self._score(seq, token, piece, decoded))
        self._emit(seq, seq.stops.feed(decoded))
        if seq.stops.stopped:
            self._finish(seq, StopReason.STOP)
        elif seq.gen.params.max_tokens is not None and seq.n_generated >= seq.gen.params.max_tokens:
            self._finish(seq, StopReason.MAX_TOKENS)
        elif seq.n_past >= self.n_ctx_per_slot:
            self._finish(seq, StopReason.MAX_TOKENS)  # the slot's context is full

    def _finish(
        self,
        seq: _Sequence,
        reason: StopReason = StopReason.CANCELED,
        *,
        error: tuple[ErrorCode, str] | None = None,
    ) -> None:
        self._running.remove(seq)
        if error is None:
            # The prompt's cells, for a later prompt that starts alike. Not the answer's: a
            # token decoded alone rounds differently from one prefilled in a batch (llama.cpp
            # documents the same of its server's cache_prompt), and a cached answer would
            # make the next turn's answer differ from what a fresh slot says.
            self._cached[seq.seq_id] = seq.gen.prompt_tokens[: seq.n_past]
        else:  # a failed decode may have left part of its batch in the cells
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), seq.seq_id, -1, -1)
        self._requests_ended += 1
        self._last_used[seq.seq_id] = self._requests_ended
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
        if seq.grammar is not None:
            seq.grammar.free()
        self._free_seq_ids.append(seq.seq_id)
        if error is not None:
            self._post(seq.gen, ErrorEvent(*error))
            return
        if reason is not StopReason.CANCELED:
            final = seq.utf8.decode(b"", final=True)
            if seq.logprobs is not None:
                seq.logprobs.append_text(final)
            self._emit(seq, seq.stops.feed(final) + seq.stops.flush())
        self._post(seq.gen, DoneEvent(reason, seq.n_generated, seq.reused))

    def _emit(self, seq: _Sequence, text: str) -> None:
        """Posts the text the stop strings let through, with its tokens' logprobs."""
        entries: tuple[TokenLogprob, ...] = ()
        if seq.logprobs is not None:
            entries = seq.logprobs.release(len(text))
            if seq.stops.stopped:
                entries += seq.logprobs.cut()
        if text or entries:
            self._post(seq.gen, TokenEvent(text, entries))

    def _score(self, seq: _Sequence, token: int, piece: bytes, text: str) -> TokenLogprob:
        """The sampled token's log-probability and the runners-up it asked for."""
        logits = self._logits(seq.batch_index)
        logprob, best = log_softmax_top(logits, token, seq.gen.params.logprobs or 0)
        top = []
        for alt, alt_logprob in best:
            alt_piece = self._piece_bytes(alt)
            top.append(TopLogprob(alt_piece.decode("utf-8", "replace"), alt_piece, alt_logprob))
        return TokenLogprob(text, piece, logprob, tuple(top))

    def _logits(self, batch_index: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The logits the last decode computed for one token of its batch (a view)."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, batch_index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    # ----------------------------------------------------------------- text helpers

    def _tokenize_loaded(self, text: str, add_special: bool) -> list[int]:
        with self._vocab_lock:  # the model is not freed meanwhile
            if self._vocab is None:
                raise ApiError(ErrorCode.BACKEND_UNAVAILABLE, "the model is not loaded")
            return self._tokenize(text, add_special)

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special, True
            )
        return list(buf[:n])

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        # Called once per generated token: one buffer, grown when a piece needs more room.
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def _piece(self, token: int, *, special: bool) -> str:
        if token < 0:
            return ""
        return self._piece_bytes(token, special).decode("utf-8", "replace")


def _reusable(cached: list[int], prompt: list[int], batch: int) -> int:
    """How many first tokens of `prompt` a slot holding `cached` can skip: their shared
    prefix, leaving at least the prompt's last token out (decoded again for its logits), cut
    back to a multiple of REUSE_ALIGN within a batch of the prompt's prefill (batches start
    at multiples of `batch`). llama.cpp's numbers depend on where a prompt is cut: reused
    cells cut at 1,754 tokens left first-token logprobs 0.02-0.13 from a fresh slot's and
    parted a greedy answer at a near tie in 1 of 4 chats; cut at a multiple of 16, in 3 of
    4; cut at multiples of 32, 64 or 512, the answers and logprobs were bit for bit the same
    (the bundled model; docs/worker.md)."""
    limit = min(len(cached), len(prompt) - 1)
    n = 0
    while n + REUSE_ALIGN <= limit and cached[n : n + REUSE_ALIGN] == prompt[n : n + REUSE_ALIGN]:
        n += REUSE_ALIGN
    # A batch that is not a multiple of the alignment restarts it at each batch.
    whole, rest = divmod(n, batch)
    return whole * batch + rest // REUSE_ALIGN * REUSE_ALIGN


def _placed_slot(free: list[int], running: list[int], last_used: list[int]) -> int:
    """Of `free` slots, the one used longest ago (LRU) among those that keep the running
    sequence ids consecutive, a gap first. llama.cpp cuts a step into one ubatch per run of
    consecutive ids (kv_unified off), and two ubatches cost about two steps: 72 against 46 ms
    for four streams (docs/performance.md)."""
    if running:
        low, high = min(running), max(running)
        gaps = [s for s in free if low < s < high]
        ends = [s for s in free if s in (low - 1, high + 1)]
        free = gaps or ends or free
    return min(free, key=last_used.__getitem__)


def _make_sampler(params: SamplingParams, n_vocab: int, prompt: list[int]) -> Any:
    """One request's own sampler chain: the logit shaping it asked for, then its sampling.
    None for plain greedy decoding: the engine takes the argmax of the logits itself, where a
    chain would first copy every one of n_vocab logits into a candidate array (most of a
    step's sampling time on a 262k vocabulary)."""
    shaping = _shaping_samplers(params, n_vocab, prompt)
    if params.temperature <= 0 and not shaping and params.grammar is None:
        return None
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in shaping:
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    if params.temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
        )
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def _shaping_samplers(params: SamplingParams, n_vocab: int, prompt: list[int]) -> list[Any]:
    """Logit bias, then penalties, as llama.cpp's own chain orders them (llama_sampler_sample
    feeds each sampled token back to every sampler of the chain)."""
    samplers = []
    if params.logit_bias:
        biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
            *(llama_cpp.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
        )
        samplers.append(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
    if params.repeat_penalty != 1.0 and params.repeat_last_n > 0:
        # llama.cpp's and Ollama's repetition penalty sees the prompt's tail too: a story
        # that repeats its opening line is as much a loop as one that repeats itself.
        repeat = llama_cpp.llama_sampler_init_penalties(
            n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0
        )
        for token in prompt[-params.repeat_last_n :]:
            llama_cpp.llama_sampler_accept(repeat, token)
        samplers.append(repeat)
    if params.presence_penalty or params.frequency_penalty:
        # OpenAI's penalties count the tokens sampled so far in this answer, every one of them.
        window = params.max_tokens or MAX_PENALTY_WINDOW
        samplers.append(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                min(window, MAX_PENALTY_WINDOW),
                1.0,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    return samplers


# ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line. llama.cpp is
# chatty at load time: its info goes to DEBUG and its warnings to INFO.
_GGML_TO_LOGGING = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
_log_callback: Any = None  # keeps the ctypes callback alive for the life of the process


def _route_llama_logs(errors: deque[str]) -> None:
    """Sends llama.cpp's own log lines to `logging` (quietly) and remembers the errors."""
    global _log_callback
    level_of_last = [logging.DEBUG]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # a ctypes type
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        lvl = level_of_last[0] if level == 5 else _GGML_TO_LOGGING.get(level, logging.DEBUG)
        level_of_last[0] = lvl
        line = text.decode("utf-8", "replace").rstrip()
        if not line:
            return
        if lvl >= logging.ERROR:
            errors.append(line)
        llama_log.log(lvl, "%s", line)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
