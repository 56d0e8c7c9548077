"""llama.cpp's own ceiling on this machine: what rbee-worker could reach if nothing but
`llama_decode` ran.

For B = 1, 2, 4, 8 sequences: a context made by the worker's own load path (the same context
parameters, `kv_unified` off, its threadpool), the bench's prompts prefilled in one batch
(timed: the floor for a TTFT of B simultaneous arrivals; its logits give each sequence's first
token), then `--tokens` - 1 decode steps of one fixed token per sequence with its logits
computed (timed: the decode ceiling in tok/s). No sampling, no HTTP, no Python between steps
but the loop. Median of --reps. `e2e_tok_s` is what a client timing B streams of --tokens
tokens from their requests to their last token could see at best: B x tokens / (prefill +
decode), the measure bench/compare.py's rows use.

    .venv/bin/python bench/ceiling.py [--batch 1,2,4,8] [--tokens 128] [--json]

bench/compare.py runs it first and prints rbee-worker's ratio to it (`make bench-compare`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque
from itertools import islice
from typing import Any

import llama_cpp
from streams import prompt_stream

from rbee.dataplane.plumbing.gguf_file import resolve_model_path
from rbee.dataplane.worker.llama_engine import LlamaEngine, _route_llama_logs


def measure(path: str, n_seq: int, args: argparse.Namespace) -> dict[str, float]:
    engine = LlamaEngine(
        path,
        slots=n_seq,
        ctx_size=args.ctx,
        threads=args.threads,
        batch_size=args.batch_size,
        extra_bufts=False,
        backend="cpu",
        device=0,
        on_progress=lambda _p: None,
        layers_total=1,
        file_size=0,
    )
    # The worker's own load, run on this thread (every llama.cpp call of a context belongs on
    # one thread, as the worker's engine thread does).
    _route_llama_logs(deque())  # llama.cpp's load chatter to logging, as in the worker
    engine._load()
    try:
        ctx, batch = engine._ctx, engine._batch
        mem = llama_cpp.llama_get_memory(ctx)
        prompts = [engine._tokenize(p, True) for p in islice(prompt_stream(), n_seq)]
        if sum(len(p) for p in prompts) > engine._batch_size:  # past it, ctypes writes freely
            raise SystemExit(f"the {n_seq} prompts do not fit one batch of {engine._batch_size}")
        token = engine._tokenize(" the", False)[0]
        steps = args.tokens - 1
        prefill_s: list[float] = []
        decode_s: list[float] = []
        for rep in range(args.reps + 1):  # the first warms up (graph allocation, caches)
            llama_cpp.llama_memory_clear(mem, True)
            n = 0
            for seq_id, prompt in enumerate(prompts):
                for pos, tok in enumerate(prompt):
                    _put(batch, n, tok, pos, seq_id, logits=pos == len(prompt) - 1)
                    n += 1
            batch.n_tokens = n
            t0 = time.perf_counter()
            _decode(ctx, batch)
            if rep:
                prefill_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for step in range(steps):
                for seq_id, prompt in enumerate(prompts):
                    _put(batch, seq_id, token, len(prompt) + step, seq_id, logits=True)
                batch.n_tokens = n_seq
                _decode(ctx, batch)
            if rep:
                decode_s.append(time.perf_counter() - t0)
        return {
            "batch": n_seq,
            "prompt_tokens": sum(len(p) for p in prompts),
            "prefill_ms": statistics.median(prefill_s) * 1000,
            "decode_tok_s": statistics.median(n_seq * steps / t for t in decode_s),
            "e2e_tok_s": statistics.median(
                n_seq * args.tokens / (p + d) for p, d in zip(prefill_s, decode_s, strict=True)
            ),
        }
    finally:
        engine._free()


def _put(batch: Any, i: int, token: int, pos: int, seq_id: int, *, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits


def _decode(ctx: Any, batch: Any) -> None:
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise SystemExit(f"llama_decode failed ({rc})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m")
    parser.add_argument("--batch", default="1,2,4,8", help="sequences per step, comma-separated")
    parser.add_argument("--tokens", type=int, default=128, help="decode steps per measurement")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=512, help="the worker's --batch-size")
    parser.add_argument("--json", action="store_true", help="one JSON list, for compare.py")
    args = parser.parse_args()
    path = str(resolve_model_path(args.model))
    rows = [measure(path, int(b), args) for b in args.batch.split(",")]
    if args.json:
        print(json.dumps(rows))
        return
    print(
        f"llama.cpp ceiling: {args.model}, {args.threads} threads, ctx {args.ctx} per "
        f"sequence, {args.tokens} decode steps, median of {args.reps}"
    )
    print(f"{'B':>3} {'prompt tokens':>13} {'prefill':>9} {'decode tok/s':>12} {'e2e tok/s':>9}")
    for r in rows:
        print(
            f"{r['batch']:>3} {r['prompt_tokens']:>13} {r['prefill_ms']:6.1f} ms "
            f"{r['decode_tok_s']:12.1f} {r['e2e_tok_s']:9.1f}"
        )


if __name__ == "__main__":
    main()
