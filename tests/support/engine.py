"""A worker's engine run in the test's own process, on a tiny generated model: requests
submitted together (so that they share the engine's steps) and their texts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from rbee.dataplane.worker.engine import DoneEvent, Generation, SamplingParams, TokenEvent
from rbee.dataplane.worker.llama_engine import LlamaEngine


@contextlib.asynccontextmanager
async def running_engine(
    model: Path, *, slots: int, ctx_size: int = 256, threads: int = 2, extra_bufts: bool = False
) -> AsyncIterator[LlamaEngine]:
    engine = LlamaEngine(
        str(model),
        slots=slots,
        ctx_size=ctx_size,
        threads=threads,
        batch_size=64,
        extra_bufts=extra_bufts,
        backend="cpu",
        device=0,
        on_progress=lambda _p: None,
        layers_total=2,
        file_size=1,
    )
    engine.start()
    try:
        await engine.wait_loaded()
        yield engine
    finally:
        await engine.close()


async def texts_together(
    engine: LlamaEngine, prompt: str, params: list[SamplingParams]
) -> list[tuple[str, DoneEvent]]:
    """One request of `prompt` per params, all in the same first step: each one's text and
    how it ended. Submitted without a pause, they are: the engine thread, woken by the
    first, waits for the GIL that this thread holds until the last."""
    loop = asyncio.get_running_loop()
    tokens = await engine.tokenize(prompt, add_special=True)
    gens = [Generation(f"r{i}", tokens, p, loop) for i, p in enumerate(params)]
    for gen in gens:
        engine.submit(gen)
    done = []
    for gen in gens:
        text = "".join([e.text async for e in gen if isinstance(e, TokenEvent)])
        assert isinstance(gen.terminal, DoneEvent), gen.terminal
        done.append((text, gen.terminal))
    return done
