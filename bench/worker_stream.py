"""Single-stream speed: llama-cpp-python in-process vs the same model through rbee-worker SSE.

Same model, threads, context, prompt and greedy decoding on both sides. Prints decode tokens/s
and time to first token (median of N runs) and the ratio rbee / in-process.

    .venv/bin/python bench/worker_stream.py [--model pkg:gemma3-270m] [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import httpx
from streams import free_port, wait_ready, worker_argv

PROMPT = "Once upon a time, in a small village by the sea,"


def speed(t0: float, stamps: list[float]) -> tuple[float, float]:
    """(ttft seconds, decode tokens/s) from the request start and each token's arrival."""
    ttft = stamps[0] - t0
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return ttft, decode


def bench_in_process(path: str, args: argparse.Namespace) -> list[tuple[float, float]]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=args.ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        verbose=False,
    )
    results = []
    for _ in range(args.warmup + args.runs):
        llm.reset()  # no prompt reuse from the last run: rbee-worker evaluates it fresh too
        t0 = time.perf_counter()
        stamps = []
        for _chunk in llm.create_completion(
            PROMPT, max_tokens=args.tokens, temperature=0, stream=True
        ):
            stamps.append(time.perf_counter())
        results.append(speed(t0, stamps))
    del llm
    return results[args.warmup :]


def bench_worker(ref: str, args: argparse.Namespace) -> tuple[list[tuple[float, float]], int]:
    port = free_port()
    proc = subprocess.Popen(
        worker_argv(ref, port, args.threads, args.ctx),
        env={k: v for k, v in os.environ.items() if k != "RBEE_WORKER_API_KEY"},
    )
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=None)) as client:
            wait_ready(client, proc, "rbee-worker")
            body = {"prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0}
            total = 0
            for _ in range(args.warmup + args.runs):
                t0 = time.perf_counter()
                stamps = []
                with client.stream("POST", "/v1/inference", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and '"type": "token"' in line:
                            stamps.append(time.perf_counter())
                        elif line.startswith("data: {") and '"type": "done"' in line:
                            total = json.loads(line[6:])["total_tokens"]
                results.append(speed(t0, stamps))
        return results[args.warmup :], total
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args()

    from rbee.dataplane.plumbing.gguf_file import resolve_model_path

    path = str(resolve_model_path(args.model))
    print(
        f"model {args.model} ({Path(path).name}), {args.threads} threads, ctx {args.ctx}, "
        f"{args.tokens} tokens greedy, median of {args.runs} (+{args.warmup} warm-up)"
    )
    inproc = bench_in_process(path, args)
    worker, total = bench_worker(args.model, args)
    if total != args.tokens:
        print(f"note: the worker stopped after {total} tokens")

    def row(name: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
        ttft = statistics.median(r[0] for r in runs) * 1000
        tps = statistics.median(r[1] for r in runs)
        spread = f"{min(r[1] for r in runs):.1f}-{max(r[1] for r in runs):.1f}"
        print(f"{name:<28} {tps:8.1f} tok/s ({spread})   TTFT {ttft:7.1f} ms")
        return ttft, tps

    print(f"{'':<28} {'decode':>14}              {'first token':>11}")
    a_ttft, a_tps = row("llama-cpp-python in-process", inproc)
    b_ttft, b_tps = row("rbee-worker over SSE", worker)
    print(
        f"ratio rbee / in-process: {b_tps / a_tps:.3f} (target >= 0.97); "
        f"TTFT overhead {b_ttft - a_ttft:+.1f} ms (target <= 10 ms)"
    )


if __name__ == "__main__":
    main()
