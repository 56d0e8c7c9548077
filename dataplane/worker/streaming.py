"""Turning a Generation into an HTTP answer: SSE with disconnect-cancels, or one collected body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from rbee.dataplane.plumbing.sse import EventStream
from rbee.dataplane.protocol.wire import SSE_DONE

from .engine import DoneEvent, ErrorEvent, Event, Generation, TokenEvent
from .logprobs import TokenLogprob


def sse_response(
    gen: Generation,
    render: Callable[[Event], list[dict[str, Any]]],
    *,
    first: list[dict[str, Any]],
    ping_s: float,
    headers: dict[str, str],
) -> EventStream:
    """Streams `first`, then each event rendered, then `[DONE]`.

    A client that goes away cancels the generation: the stream closes this generator when
    it sees the disconnect, and the `finally` tells the engine.
    """

    async def lines() -> AsyncGenerator[str, None]:
        try:
            for obj in first:
                yield json.dumps(obj)
            async for event in gen:
                for obj in render(event):
                    yield json.dumps(obj)
            yield SSE_DONE
        finally:
            if not gen.finished.is_set():
                gen.cancel()

    return EventStream(lines(), ping_s=ping_s, headers=headers)


@dataclass
class Collected:
    text: str
    terminal: DoneEvent | ErrorEvent
    logprobs: tuple[TokenLogprob, ...] = ()


def ttft_header(gen: Generation) -> dict[str, str]:
    """`Server-Timing: ttft` of a whole answer: from its generation's start to the first
    token (the queen adds its own share before the worker)."""
    if gen.first_token_at is None:
        return {}
    return {"Server-Timing": f"ttft;dur={(gen.first_token_at - gen.created) * 1000:.1f}"}


async def collect(request: Request, gen: Generation) -> Collected:
    """Waits for the whole answer (stream: false); a client that disconnects cancels it."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, gen))
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    try:
        async for event in gen:
            if isinstance(event, TokenEvent):
                parts.append(event.text)
                logprobs.extend(event.logprobs)
    finally:
        watcher.cancel()
    assert gen.terminal is not None
    return Collected("".join(parts), gen.terminal, tuple(logprobs))


async def _cancel_on_disconnect(request: Request, gen: Generation) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gen.cancel()
            return
