"""Repetition settings on the bundled model: how much of each answer repeats itself.

For each setting (repeat_penalty over the last repeat_last_n tokens, or OpenAI's
frequency_penalty), 8 story openings (streams.prompt_stream) continue for 128 tokens, greedy
and sampled (temperature 0.7, rbee infer's default, seeded); the score is the distinct 3-gram
ratio (distinct token 3-grams / all token 3-grams; 1.0: nothing repeats). Prints a markdown
table (docs/performance.md, "Repetition") and the first prompt's answer under each setting.

    .venv/bin/python bench/repetition.py [--model pkg:gemma3-270m] [--prompts 8] [--tokens 128]
        [--temperatures 0,0.7]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from streams import free_port, prompt_stream, stop_process, wait_ready

SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("off", {"repeat_penalty": 1.0}),
    ("repeat 1.1 / 64 (Ollama)", {"repeat_penalty": 1.1, "repeat_last_n": 64}),
    ("repeat 1.1 / 256", {"repeat_penalty": 1.1, "repeat_last_n": 256}),
    ("repeat 1.2 / 64", {"repeat_penalty": 1.2, "repeat_last_n": 64}),
    ("repeat 1.3 / 64", {"repeat_penalty": 1.3, "repeat_last_n": 64}),
    ("frequency 0.5", {"repeat_penalty": 1.0, "frequency_penalty": 0.5}),
]
SLOTS = 4


def distinct_ratio(tokens: list[str], n: int = 3) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@contextmanager
def worker(ref: str, ctx: int) -> Iterator[httpx.Client]:
    """A worker on `ref` with SLOTS slots, ready, stopped on the way out."""
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "rbee-worker"),
        *("--model", ref, "--port", str(port), "--slots", str(SLOTS)),
        *("--ctx-size", str(ctx), "--log-level", "warning"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RBEE_WORKER_API_KEY"}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(10, read=600)
            ) as client:
                wait_ready(client, proc, "rbee-worker", log=log)
                yield client
        finally:
            stop_process(proc)


def answer(
    client: httpx.Client, prompt: str, temperature: float, setting: dict[str, Any], n: int
) -> tuple[list[str], str]:
    body = {
        "prompt": prompt,
        "max_tokens": n,
        "temperature": temperature,
        "seed": 7,
        "logprobs": 0,  # the answer's tokens, for the n-grams
        **setting,
    }
    r = client.post("/v1/completions", json=body)
    r.raise_for_status()
    choice = r.json()["choices"][0]
    return choice["logprobs"]["tokens"], choice["text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--temperatures", default="0,0.7", help="greedy (0) and sampled")
    args = parser.parse_args()
    temperatures = [float(t) for t in args.temperatures.split(",")]
    prompts = list(itertools.islice(prompt_stream(), args.prompts))
    # Prompt by prompt, so a run cut short still has every setting on the same prompts.
    jobs = [(s, t, p) for p in prompts for t in temperatures for s in range(len(SETTINGS))]
    done = 0

    def run(job: tuple[int, float, str]) -> tuple[list[str], str]:
        nonlocal done
        result = answer(client, job[2], job[1], SETTINGS[job[0]][1], args.tokens)
        done += 1
        score = distinct_ratio(result[0])
        print(
            f"{done}/{len(jobs)} t {job[1]:g} {SETTINGS[job[0]][0]}: {score:.2f}", file=sys.stderr
        )
        return result

    with worker(args.model, args.tokens + 64) as client, ThreadPoolExecutor(SLOTS) as pool:
        results = list(pool.map(run, jobs))
    scores: dict[tuple[int, float], list[float]] = {}
    samples: dict[int, str] = {}
    for (s, t, p), (tokens, text) in zip(jobs, results, strict=True):
        scores.setdefault((s, t), []).append(distinct_ratio(tokens))
        if t == temperatures[0] and p == prompts[0]:
            samples[s] = text
    print(f"{args.model}: distinct 3-gram ratio over {args.tokens} tokens, {len(prompts)} prompts")
    print()
    heads = [f"t {t:g}: {what}" for t in temperatures for what in ("mean", "worst")]
    print(f"| setting | {' | '.join(heads)} |")
    print("| --- |" + " --- |" * len(heads))
    for s, (name, _setting) in enumerate(SETTINGS):
        cells = []
        for t in temperatures:
            values = scores[(s, t)]
            cells += [f"{statistics.mean(values):.2f}", f"{min(values):.2f}"]
        print(f"| {name} | {' | '.join(cells)} |")
    print()
    print(f"Answers (t {temperatures[0]:g}) to: {prompts[0]}")
    for s, (name, _setting) in enumerate(SETTINGS):
        print(f"\n[{name}]\n{samples[s].strip()}")


if __name__ == "__main__":
    main()
