"""The engine interface the worker talks to: submit a request, receive its events, cancel it.

The worker's HTTP layer only knows these types; the llama.cpp implementation lives in
`llama_engine.py` and runs every llama.cpp call on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from rbee.dataplane.protocol.events import StopReason
from rbee.dataplane.protocol.wire import ErrorCode

from .logprobs import TokenLogprob


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None  # None: until the context is full
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None  # None: a random seed
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF the answer must follow (structured.py)
    # llama.cpp's repetition penalty over the last `repeat_last_n` tokens, prompt included
    # (1.0: off); OpenAI's presence and frequency penalties over the tokens generated (0: off).
    repeat_penalty: float = 1.0
    repeat_last_n: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: int | None = None  # None: none; k: each token's log-probability and k runners-up


@dataclass(frozen=True)
class TokenEvent:
    text: str
    # When the request asked for them: the log-probabilities of the tokens whose text `text`
    # completes (their texts concatenate to the stream's text).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class DoneEvent:
    stop_reason: StopReason
    total_tokens: int
    cached_tokens: int = 0  # prompt tokens the slot's KV cache held from an earlier request


@dataclass(frozen=True)
class ErrorEvent:
    code: ErrorCode
    message: str


Event = TokenEvent | DoneEvent | ErrorEvent


@dataclass(frozen=True)
class LoadProgress:
    layers_loaded: int
    layers_total: int
    loaded_mb: int


@dataclass
class Generation:
    """One request in flight. Events arrive on the event loop; `cancel()` is thread-safe."""

    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    created: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    terminal: DoneEvent | ErrorEvent | None = None
    _canceled: threading.Event = field(default_factory=threading.Event)

    @property
    def canceled(self) -> bool:
        return self._canceled.is_set()

    def cancel(self) -> None:
        self._canceled.set()

    def post(self, event: Event) -> None:
        """Called from the engine thread: hand one event to the event loop."""
        self.loop.call_soon_threadsafe(self.deliver, event)

    def deliver(self, event: Event) -> None:
        """On the event loop: the event reaches whoever iterates this generation."""
        if isinstance(event, TokenEvent) and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.events.put_nowait(event)
        if not isinstance(event, TokenEvent):
            self.terminal = event
            self.finished.set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.events.get()
            yield event
            if not isinstance(event, TokenEvent):
                return


def deliver_all(events: list[tuple[Generation, Event]]) -> None:
    """On the event loop: a whole engine step's events, handed over with one wake-up."""
    for gen, event in events:
        gen.deliver(event)


class Engine(Protocol):
    """What the worker needs from an engine."""

    n_ctx_per_slot: int
    n_vocab: int  # token ids are 0 to n_vocab - 1
    chat_template: str | None
    bos_text: str
    eos_text: str
    # Requests being read or tokenized now (counted on the event loop): the engine waits a
    # moment for them before a prefill, so simultaneous arrivals share one prefill step.
    arriving: int

    def start(self) -> None: ...

    async def wait_loaded(self) -> None:
        """Returns once the model serves; raises when it could not be loaded."""

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    def submit(self, generation: Generation) -> None: ...

    async def close(self) -> None: ...
