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

`--serve` keeps one context of --slots sequences loaded and measures once per line on stdin
(a JSON list of prompts), answering a JSON line: bench/compare.py measures it this way just
before each of rbee-worker's repetitions, with the same prompts, so that the ratio of the two
is taken within seconds (this machine's speed drifts by more than the targets' margins over a
run's minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import deque
from itertools import islice
from typing import Any

import llama_cpp
from streams import prompt_stream

from rbee.dataplane.plumbing.gguf_file import resolve_model_path
from rbee.dataplane.worker.llama_engine import LlamaEngine, _route_llama_logs


class Ceiling:
    """One context of `slots` sequences, loaded by the worker's own load path on this
    thread (every llama.cpp call of a context belongs on one thread, as the worker's engine
    thread does)."""

    def __init__(self, path: str, slots: int, args: argparse.Namespace) -> None:
        self._tokens = args.tokens
        self._engine = LlamaEngine(
            path,
            slots=slots,
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
        _route_llama_logs(deque())  # llama.cpp's load chatter to logging, as in the worker
        self._engine._load()
        self._token = self._engine._tokenize(" the", False)[0]
        self._warm: set[int] = set()  # batch sizes whose graph has been built once

    def close(self) -> None:
        self._engine._free()

    def tokenize(self, prompts: list[str]) -> list[list[int]]:
        return [self._engine._tokenize(p, True) for p in prompts]

    def run(self, prompts: list[list[int]]) -> tuple[float, float]:
        """Seconds to prefill the prompts in one batch, and to decode the rest of --tokens
        one fixed token a sequence at a time. The first run of a batch size is run twice
        (graph allocation, caches)."""
        if len(prompts) not in self._warm:
            self._warm.add(len(prompts))
            self.run(prompts)
        engine = self._engine
        ctx, batch = engine._ctx, engine._batch
        if sum(len(p) for p in prompts) > engine._batch_size:  # past it, ctypes writes freely
            raise SystemExit(f"the {len(prompts)} prompts do not fit one batch")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        n = 0
        for seq_id, prompt in enumerate(prompts):
            for pos, tok in enumerate(prompt):
                _put(batch, n, tok, pos, seq_id, logits=pos == len(prompt) - 1)
                n += 1
        batch.n_tokens = n
        t0 = time.perf_counter()
        _decode(ctx, batch)
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(self._tokens - 1):
            for seq_id, prompt in enumerate(prompts):
                _put(batch, seq_id, self._token, len(prompt) + step, seq_id, logits=True)
            batch.n_tokens = len(prompts)
            _decode(ctx, batch)
        return prefill_s, time.perf_counter() - t0

    def row(self, prompts: list[list[int]], runs: list[tuple[float, float]]) -> dict[str, float]:
        """Medians over runs of these prompts."""
        n_seq, steps = len(prompts), self._tokens - 1
        return {
            "batch": n_seq,
            "prompt_tokens": sum(len(p) for p in prompts),
            "prefill_ms": statistics.median(p for p, _d in runs) * 1000,
            "decode_tok_s": statistics.median(n_seq * steps / d for _p, d in runs),
            "e2e_tok_s": statistics.median(n_seq * self._tokens / (p + d) for p, d in runs),
        }


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


def serve(path: str, args: argparse.Namespace) -> None:
    """A JSON line of prompts in, one measurement's row out, until stdin closes."""
    ceiling = Ceiling(path, args.slots, args)
    try:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            prompts = ceiling.tokenize(json.loads(line))
            print(json.dumps(ceiling.row(prompts, [ceiling.run(prompts)])), flush=True)
    finally:
        ceiling.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m")
    parser.add_argument("--batch", default="1,2,4,8", help="sequences per step, comma-separated")
    parser.add_argument("--tokens", type=int, default=128, help="decode steps per measurement")
    parser.add_argument("--reps", type=int, default=3, help="(not with --serve: one each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=512, help="the worker's --batch-size")
    parser.add_argument("--json", action="store_true", help="one JSON list")
    parser.add_argument("--serve", action="store_true", help="measure per line on stdin")
    parser.add_argument("--slots", type=int, default=8, help="sequences of --serve's context")
    args = parser.parse_args()
    path = str(resolve_model_path(args.model))
    if args.serve:
        serve(path, args)
        return
    rows = []
    for n_seq in (int(b) for b in args.batch.split(",")):
        ceiling = Ceiling(path, n_seq, args)
        try:
            prompts = ceiling.tokenize(list(islice(prompt_stream(), n_seq)))
            rows.append(ceiling.row(prompts, [ceiling.run(prompts) for _ in range(args.reps)]))
        finally:
            ceiling.close()
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
