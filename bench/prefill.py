"""What a prefill costs a client of rbee-worker: the second turn of a chat, and a request that
arrives while three streams decode.

1. Chat turns (POST /v1/chat/completions, streaming, greedy): a conversation with a long
   history (about --history tokens). Turn 1 prefills all of it; turn 2 sends the history, the
   answer and a new question, so the slot's cached cells hold all but the new part. Prints both
   TTFTs and their ratio (target: turn 2 <= 0.2x turn 1), then asks turn 2 of a fresh worker,
   whose answer must be the same text (reuse must not change what the model says).
2. An arrival among three decoding streams (POST /v1/completions): the newcomer's TTFT against
   what it would be on an idle worker plus two steps of the running streams (the rest of the
   step under way, then the step that holds its prefill chunk).

Bundled model, one rbee-worker with --slots 4; prints its peak RSS (one model's weights and
four slots of KV cells, whatever the cache holds).

    .venv/bin/python bench/prefill.py [--history 1500] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import httpx
from streams import (
    NAMES,
    PLACES,
    PeakRss,
    free_port,
    mb,
    prompt_stream,
    stop_process,
    wait_ready,
    worker_argv,
)


@contextmanager
def worker(args: argparse.Namespace) -> Iterator[tuple[str, PeakRss]]:
    port = free_port()
    argv = worker_argv(args.model, port, args.threads, args.ctx, "--slots", "4")
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w+", prefix="bench-prefill-", suffix=".log") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            with PeakRss(proc.pid) as rss:
                with httpx.Client(base_url=url, timeout=5) as client:
                    wait_ready(client, proc, "rbee-worker", log=log)
                yield url, rss
        finally:
            stop_process(proc)


def history(n_exchanges: int, salt: int) -> list[dict[str, str]]:
    """A made-up conversation; `salt` makes each one's first words differ, so no two share a
    cached prefix."""
    messages = []
    for i in range(n_exchanges):
        name = NAMES[(i + salt) % len(NAMES)]
        place = PLACES[(i * 3 + salt) % len(PLACES)]
        messages.append({"role": "user", "content": f"Tell me about {name}, who lived in {place}."})
        messages.append(
            {
                "role": "assistant",
                "content": (
                    f"{name} lived in {place} for many years. Every morning {name} walked "
                    f"to the market, greeted the neighbours by name, bought bread and "
                    f"apples, and came home to write a letter to an old friend far away."
                ),
            }
        )
    return messages


async def chat(
    client: httpx.AsyncClient, messages: list[dict[str, str]], tokens: int
) -> tuple[float, str, dict[str, Any]]:
    """(TTFT s, text, usage) of one streamed greedy chat answer."""
    body = {
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft, text, usage = 0.0, [], {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise SystemExit(f"HTTP {r.status_code}: {r.text[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"]
            for choice in obj["choices"]:
                piece = choice["delta"].get("content")
                if piece:
                    ttft = ttft or time.perf_counter() - t0
                    text.append(piece)
    return ttft, "".join(text), usage


async def chat_turns(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await chat(client, history(1, 999), 4)  # warm-up
        for salt in range(args.runs):
            messages = history(args.exchanges, salt)
            ttft1, answer, usage1 = await chat(client, messages, args.tokens)
            messages = [
                *messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "And what happened the next day?"},
            ]
            ttft2, text2, usage2 = await chat(client, messages, args.tokens)
            runs.append(
                {
                    "turn1_s": ttft1,
                    "turn2_s": ttft2,
                    "prompt1": usage1["prompt_tokens"],
                    "prompt2": usage2["prompt_tokens"],
                    "cached2": usage2["prompt_tokens_details"]["cached_tokens"],
                    "messages2": messages,
                    "text2": text2,
                }
            )
    return runs


async def fresh_answers(url: str, runs: list[dict[str, Any]], tokens: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return [(await chat(client, run["messages2"], tokens))[1] for run in runs]


async def completion(
    client: httpx.AsyncClient, prompt: str, tokens: int, stamps: list[float] | None = None
) -> float:
    """TTFT s of one streamed greedy completion; every token's arrival into `stamps`."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    ttft = 0.0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                now = time.perf_counter()
                ttft = ttft or now - t0
                if stamps is not None:
                    stamps.append(now)
    return ttft


async def arrival(url: str, args: argparse.Namespace) -> dict[str, float]:
    prompts = islice(prompt_stream(), 4 * args.runs + args.runs + 1)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await completion(client, next(prompts), 4)  # warm-up
        idle = [await completion(client, next(prompts), 4) for _ in range(args.runs)]
        late, steps = [], []
        for _ in range(args.runs):
            stamps: list[list[float]] = [[], [], []]
            running = [
                asyncio.create_task(completion(client, next(prompts), 200, s)) for s in stamps
            ]
            while min(len(s) for s in stamps) < 20:
                await asyncio.sleep(0.01)
            gaps = [b - a for s in stamps for a, b in zip(s[5:], s[6:], strict=False)]
            steps.append(statistics.median(gaps))
            late.append(await completion(client, next(prompts), 4))
            await asyncio.gather(*running)
    return {
        "idle_s": statistics.median(idle),
        "step_s": statistics.median(steps),
        "late_s": statistics.median(late),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096, help="context tokens per slot")
    parser.add_argument("--exchanges", type=int, default=24, help="history: user/assistant pairs")
    parser.add_argument("--tokens", type=int, default=32, help="answer tokens per turn")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with worker(args) as (url, rss):
        runs = asyncio.run(chat_turns(url, args))
        arrived = asyncio.run(arrival(url, args))
        peak = rss.peak
    with worker(args) as (url, _rss):
        fresh = asyncio.run(fresh_answers(url, runs, args.tokens))

    turn1 = statistics.median(r["turn1_s"] for r in runs)
    turn2 = statistics.median(r["turn2_s"] for r in runs)
    same = sum(r["text2"] == text for r, text in zip(runs, fresh, strict=True))
    print(
        f"rbee-worker --slots 4, {args.model}, {args.threads} threads, ctx {args.ctx} per "
        f"slot; median of {args.runs}"
    )
    print(
        f"chat: history {runs[0]['prompt1']} prompt tokens, turn 2 {runs[0]['prompt2']} "
        f"({runs[0]['cached2']} of them cached)"
    )
    print(f"  TTFT turn 1 {turn1 * 1000:6.0f} ms   turn 2 {turn2 * 1000:6.0f} ms")
    print(f"  turn 2 answers on a fresh worker (no cache) identical: {same}/{len(runs)}")
    print(
        f"arrival among 3 decoding streams: TTFT {arrived['late_s'] * 1000:.0f} ms; on an idle "
        f"worker {arrived['idle_s'] * 1000:.0f} ms; a step of the 3 streams "
        f"{arrived['step_s'] * 1000:.0f} ms"
    )
    print(f"peak RSS {mb(peak)}")
    print("targets:")
    bound = arrived["idle_s"] + 2 * arrived["step_s"]
    for ok, text in (
        (turn2 <= 0.2 * turn1, f"turn 2 TTFT / turn 1: {turn2 / turn1:.2f}x (target <= 0.2x)"),
        (same == len(runs), f"turn 2 with the cache answers as without: {same}/{len(runs)}"),
        (
            arrived["late_s"] <= bound,
            f"arrival TTFT {arrived['late_s'] * 1000:.0f} ms <= idle TTFT + 2 steps "
            f"({bound * 1000:.0f} ms)",
        ),
    ):
        print(f"  {'PASS' if ok else 'MISS'}  {text}")


if __name__ == "__main__":
    main()
