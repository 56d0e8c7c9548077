"""Concurrent streams: rbee-worker vs llama_cpp.server vs llama-cpp-python in-process, and
llama.cpp's own ceiling.

Same model, threads, context per stream, prompts and greedy decoding everywhere. For 1, 2, 4 and
8 streams that start together, prints TTFT p50/p95 and aggregate tokens/s (median of N
repetitions), the ratios rbee / llama.cpp's ceiling (bench/ceiling.py, measured on each of
rbee's repetitions' prompts just before it: the median of the repetitions' ratios) and
rbee / llama_cpp.server, the targets, and each server's peak RSS; then draws
aggregate tokens/s and TTFT p50 against streams for the three into one PNG (--chart).

    make bench-compare      # creates bench/.venv with llama-cpp-python[server], then runs this
    bench/.venv/bin/python bench/compare.py [--streams 1,2,4,8] [--reps 3] [--tokens 128]

Needs llama-cpp-python[server] (fastapi, uvicorn, ...) and matplotlib, which are not project
dependencies: `make bench-compare` installs them into bench/.venv only.

On a 2-core machine any other busy process skews every number: each repetition measures the CPU
that went elsewhere and is rerun when that is more than --max-other cores (see Guard); the
report says how many reruns there were and whether any kept repetition was still disturbed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from streams import (
    ForeignCpu,
    PeakRss,
    Row,
    Server,
    Stream,
    free_port,
    mb,
    median_row,
    one_stream,
    prompt_stream,
    stop_process,
    summarize,
    wait_ready,
    worker_argv,
)

from rbee.control.queen.upstream import WorkerLinks


class Guard:
    """Keeps other work on the machine out of the kept repetitions.

    Before each repetition it waits (up to --quiet-wait-s) until at most --max-other cores are
    busy elsewhere; a repetition during which more went elsewhere is run again with fresh
    prompts, up to --redo times. Waits and reruns draw on one budget for the whole run
    (--extra-s), so a busy machine cannot stretch the run without bound; kept repetitions that
    were still disturbed are counted and reported.
    """

    def __init__(self, args: argparse.Namespace, budget: list[float]) -> None:
        self.args = args
        self.budget = budget  # [seconds left], shared by the backends' guards
        self.redone = 0
        self.disturbed = 0
        self.worst = 0.0
        self.kept: list[ForeignCpu] = []

    def quiet(self) -> None:
        start = time.monotonic()
        until = start + min(self.args.quiet_wait_s, max(0.0, self.budget[0]))
        while True:
            with ForeignCpu([os.getpid()]) as probe:
                time.sleep(0.3)
            if probe.cores <= self.args.max_other or time.monotonic() >= until:
                break
        self.budget[0] -= time.monotonic() - start

    def accept(self, other: ForeignCpu, attempt: int, what: str) -> bool:
        if other.cores > self.args.max_other:
            if attempt < self.args.redo and self.budget[0] > other.wall:
                self.budget[0] -= other.wall
                self.redone += 1
                print(
                    f"    {what}: {other.cores:.2f} cores went elsewhere; running it again",
                    flush=True,
                )
                return False
            self.disturbed += 1
        self.worst = max(self.worst, other.cores)
        self.kept.append(other)
        return True

    def usage(self) -> tuple[float, float]:
        """Average cores used by (this process, the server) over the kept repetitions."""
        wall = sum(o.wall for o in self.kept) or 1.0
        return (
            sum(o.own * o.wall for o in self.kept) / wall,
            sum(o.children * o.wall for o in self.kept) / wall,
        )


# --- (a) llama-cpp-python in-process: one request at a time ------------------------------------


def bench_in_process(
    path: str, args: argparse.Namespace, prompts: Iterator[str], guard: Guard
) -> tuple[dict[int, list[Row]], dict[str, Any], dict[str, str]]:
    """N streams here means N requests that arrive together and are served one after another."""
    import llama_cpp

    me = psutil.Process()
    before = me.memory_info().rss
    texts: dict[str, str] = {}
    with PeakRss(os.getpid()) as rss:
        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=args.ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            n_batch=512,
            verbose=False,
        )
        loaded = me.memory_info().rss

        def run(prompt: str, t0: float) -> Stream:
            llm.reset()  # no prompt reuse from the last request
            first = None
            text = []
            n = 0
            for chunk in llm.create_completion(
                prompt, max_tokens=args.tokens, temperature=0, stream=True
            ):
                piece = chunk["choices"][0]["text"]
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    text.append(piece)
                    n += 1
                finish = chunk["choices"][0]["finish_reason"]
            end = time.perf_counter()
            tokens = args.tokens if finish == "length" else n
            texts[prompt] = "".join(text)
            return Stream((first or end) - t0, end, tokens, texts[prompt])

        for _ in range(args.warmup):
            run(next(prompts), time.perf_counter())
        rows: dict[int, list[Row]] = {}
        for n in args.streams:
            rows[n] = []
            for _ in range(args.reps):
                for attempt in range(args.redo + 1):
                    guard.quiet()
                    batch = [next(prompts) for _ in range(n)]
                    with ForeignCpu([os.getpid()]) as other:
                        t0 = time.perf_counter()
                        row = summarize(t0, [run(p, t0) for p in batch])
                    if guard.accept(other, attempt, f"in-process, {n} streams"):
                        break
                rows[n].append(row)
        llm.close()
    return rows, {"before": before, "loaded": loaded, "peak": rss.peak}, texts


# --- (b) llama_cpp.server and (c) rbee-worker over /v1/completions ----------------------------


async def run_rows(
    url: str,
    args: argparse.Namespace,
    prompts: Iterator[str],
    guard: Guard,
    name: str,
    ceiling: CeilingProcess | None,
) -> tuple[dict[int, list[Row]], dict[str, str]]:
    texts: dict[str, str] = {}
    links = WorkerLinks()
    server = Server(url, links)
    try:
        for _ in range(args.warmup):
            await one_stream(server, next(prompts), time.perf_counter(), args)
        rows: dict[int, list[Row]] = {}
        for n in args.streams:
            rows[n] = []
            for _ in range(args.reps):
                for attempt in range(args.redo + 1):
                    guard.quiet()  # blocks the loop, but no stream is open between repetitions
                    batch = [next(prompts) for _ in range(n)]
                    measured = ceiling.measure(batch) if ceiling else None
                    with ForeignCpu([os.getpid()]) as other:  # the server is our child
                        t0 = time.perf_counter()
                        streams = await asyncio.gather(
                            *(one_stream(server, p, t0, args) for p in batch)
                        )
                    texts.update((p, s.text) for p, s in zip(batch, streams, strict=True))
                    row = summarize(t0, list(streams))
                    if guard.accept(other, attempt, f"{name}, {n} streams"):
                        break
                rows[n].append(row)
                if ceiling and measured is not None:
                    ceiling.kept.setdefault(n, []).append(measured)
    finally:
        links.close()
    return rows, texts


def bench_server(
    name: str,
    argv: list[str],
    ready: Callable[[httpx.Client], bool],
    url: str,
    args: argparse.Namespace,
    prompts: Iterator[str],
    guard: Guard,
    ceiling: CeilingProcess | None = None,
) -> tuple[dict[int, list[Row]], dict[str, Any], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "RBEE_WORKER_API_KEY"}
    # The server's output, read back if it does not become ready; deleted on the way out.
    with tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with PeakRss(proc.pid) as rss:
                with httpx.Client(base_url=url, timeout=5) as client:
                    wait_ready(client, proc, name, ready=ready, log=log)
                rows, texts = asyncio.run(run_rows(url, args, prompts, guard, name, ceiling))
            return rows, {"peak": rss.peak}, texts
        finally:
            stop_process(proc)


def bench_llama_server(path: str, args: argparse.Namespace, prompts: Iterator[str], guard: Guard):
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(args.ctx),
        "--n_batch",
        "512",
        "--n_threads",
        str(args.threads),
        "--n_threads_batch",
        str(args.threads),
        "--interrupt_requests",
        "False",
        "--verbose",
        "False",
    ]
    return bench_server(
        "llama_cpp.server",
        argv,
        lambda c: c.get("/v1/models").status_code == 200,
        f"http://127.0.0.1:{port}",
        args,
        prompts,
        guard,
    )


def bench_rbee(
    ref: str,
    args: argparse.Namespace,
    prompts: Iterator[str],
    guard: Guard,
    ceiling: CeilingProcess,
):
    port = free_port()
    argv = worker_argv(
        ref, port, args.threads, args.ctx, "--slots", str(args.slots), *args.rbee_arg
    )
    return bench_server(
        "rbee-worker",
        argv,
        lambda c: c.get("/v1/ready").json().get("ready"),
        f"http://127.0.0.1:{port}",
        args,
        prompts,
        guard,
        ceiling,
    )


# --- (d) llama.cpp's own ceiling: decode and batched prefill, nothing else ------------------------


class CeilingProcess:
    """bench/ceiling.py --serve in a process of its own: llama.cpp's ceiling measured on a
    repetition's prompts just before rbee-worker serves them, so that each repetition's
    ratio is taken within seconds (this machine's speed drifts by more than the targets'
    margins over a run's minutes). Idle while the worker runs, and the worker while it does."""

    def __init__(self, args: argparse.Namespace) -> None:
        argv = [
            sys.executable,
            str(Path(__file__).with_name("ceiling.py")),
            "--serve",
            "--model",
            args.model,
            "--slots",
            str(max(args.streams)),
            "--tokens",
            str(args.tokens),
            "--threads",
            str(args.threads),
            "--ctx",
            str(args.ctx),
        ]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.kept: dict[int, list[dict[str, float]]] = {}  # streams → each kept repetition's
        try:
            self._read()  # loaded
        except BaseException:
            stop_process(self._proc)
            raise

    def measure(self, prompts: list[str]) -> dict[str, float]:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(prompts) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._exited() from None
        return self._read()

    def _read(self) -> dict[str, float]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise self._exited()
        return json.loads(line)

    def _exited(self) -> SystemExit:
        return SystemExit(f"bench/ceiling.py --serve exited ({self._proc.wait()})")

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        stop_process(self._proc)


# --- report ------------------------------------------------------------------------------------


def draw_chart(results: dict[str, dict[int, Row]], title: str, path: Path) -> None:
    """Aggregate tok/s and TTFT p50 against concurrent streams, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; write the file only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    colors = {
        "in-process": "tab:blue",
        "llama_cpp.server": "tab:orange",
        "rbee-worker": "tab:green",
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for name, by_n in results.items():
        streams = sorted(by_n)
        style = {"marker": "o", "label": name, "color": colors[name]}
        left.plot(streams, [by_n[n].tok_s for n in streams], **style)
        right.plot(streams, [by_n[n].ttft_p50 * 1000 for n in streams], **style)
    for ax, label in ((left, "aggregate tokens/s"), (right, "TTFT p50 (ms, log scale)")):
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(next(iter(results.values()))))
        ax.grid(True, alpha=0.3)
    right.set_yscale("log")
    right.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 100, 200, 500, 1000 ... in ms
    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(NullFormatter())
    left.set_ylim(bottom=0)
    left.legend()
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m")
    parser.add_argument("--streams", default="1,2,4,8", help="concurrency levels, comma-separated")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per row (median)")
    parser.add_argument("--warmup", type=int, default=1, help="single requests before the rows")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per stream")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context tokens per stream")
    parser.add_argument("--slots", type=int, default=4, help="rbee-worker --slots")
    parser.add_argument(
        "--retry-s",
        type=float,
        default=0.1,
        help="client wait before retrying rbee's 503 ALL_SLOTS_BUSY",
    )
    parser.add_argument(
        "--rbee-arg",
        action="append",
        default=[],
        help="extra rbee-worker option, e.g. --rbee-arg=--extra-bufts",
    )
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.15,
        help="cores busy elsewhere above which a repetition is run again",
    )
    parser.add_argument("--redo", type=int, default=2, help="reruns allowed per repetition")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=15,
        help="longest wait for a quiet machine before each repetition",
    )
    parser.add_argument(
        "--extra-s",
        type=float,
        default=150,
        help="most seconds spent, over the whole run, on reruns and waits",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "performance.png",
        help="where to write the chart (PNG)",
    )
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]

    try:
        import llama_cpp.server.app  # noqa: F401  (checks that its extra deps are there)
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"{exc.name} is not importable: run `make bench-compare`, which "
            "installs llama-cpp-python[server] and matplotlib into bench/.venv"
        ) from None
    from rbee.dataplane.plumbing.gguf_file import resolve_model_path

    path = str(resolve_model_path(args.model))
    print(
        f"model {args.model} ({Path(path).name}), {args.threads} threads, ctx {args.ctx} per "
        f"stream, max_tokens {args.tokens} greedy (repeat_penalty 1), /v1/completions "
        f"streaming, median of {args.reps} (+{args.warmup} warm-up request)"
        + (f"; rbee-worker {' '.join(args.rbee_arg)}" if args.rbee_arg else "")
    )
    print(
        f"- concurrent streams are sent together (asyncio.gather over one client, "
        f"the queen's own);\n  TTFT counts from then.\n"
        f"- llama_cpp.server runs with --interrupt_requests False, so extra streams queue "
        f"behind the running one;\n  its default (True) ends the running stream as soon as "
        f"another request arrives, with [DONE] and\n  no finish_reason, so a client cannot "
        f"tell a cut-off answer from a finished one.\n"
        f"- rbee-worker --slots {args.slots}: a stream beyond the slots gets 503 "
        f"ALL_SLOTS_BUSY and the client retries\n  every {args.retry_s * 1000:.0f} ms "
        f"(ignoring Retry-After: 1); the wait counts in its TTFT.\n"
        f"- in-process: one request at a time, llm.reset() before each; N streams = N "
        f"requests arriving together,\n  served one after another (TTFT includes the wait).\n"
        f"- aggregate tok/s = generated tokens / (last token - requests sent).",
        flush=True,
    )

    started = time.perf_counter()
    # Each backend gets the same prompt sequence (a fresh prompt_stream()).
    budget = [args.extra_s]
    reps: dict[str, dict[int, list[Row]]] = {}
    info: dict[str, dict[str, Any]] = {}
    texts: dict[str, dict[str, str]] = {}
    guards: dict[str, Guard] = {}
    runs = [("llama_cpp.server", bench_llama_server, path), ("rbee-worker", bench_rbee, args.model)]
    if not args.skip_in_process:
        runs.insert(0, ("in-process", bench_in_process, path))
    ceiling: CeilingProcess | None = None
    try:
        for name, bench, model in runs:
            guards[name] = Guard(args, budget)
            extra: tuple[CeilingProcess, ...] = ()
            if name == "rbee-worker":  # loaded beside it only (the others' RSS counts children)
                ceiling = CeilingProcess(args)
                extra = (ceiling,)
            reps[name], info[name], texts[name] = bench(
                model, args, prompt_stream(), guards[name], *extra
            )
            print(f"  {name} done ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        if ceiling is not None:
            ceiling.close()
    assert ceiling is not None
    # Each rbee repetition against the ceiling measured on its prompts just before it.
    paired = {
        n: [
            (r.tok_s / c["e2e_tok_s"], r.ttft_p50 * 1000 / c["prefill_ms"])
            for r, c in zip(reps["rbee-worker"][n], ceiling.kept[n], strict=True)
        ]
        for n in args.streams
    }
    results = {name: {n: median_row(r) for n, r in by_n.items()} for name, by_n in reps.items()}
    print()

    head = (
        f"{'streams':>7}  {'backend':<17} {'TTFT p50':>9} {'TTFT p95':>9} "
        f"{'tok/s':>7} {'(min-max of reps)':>17} {'tokens':>6}"
    )
    print(head)
    print("-" * len(head))
    for n in args.streams:
        for name, by_n in results.items():
            r = by_n[n]
            spread = (
                f"{min(x.tok_s for x in reps[name][n]):.1f}-"
                f"{max(x.tok_s for x in reps[name][n]):.1f}"
            )
            print(
                f"{n:>7}  {name:<17} {r.ttft_p50 * 1000:6.0f} ms {r.ttft_p95 * 1000:6.0f} ms "
                f"{r.tok_s:7.1f} {spread:>17} {r.tokens:6d}"
            )
        rb, ls = results["rbee-worker"][n], results["llama_cpp.server"][n]
        retries = sum(x.retries for x in reps["rbee-worker"][n])
        print(
            f"{'':>7}  {'rbee / server':<17} {rb.ttft_p50 / ls.ttft_p50:8.2f}x "
            f"{rb.ttft_p95 / ls.ttft_p95:8.2f}x {rb.tok_s / ls.tok_s:6.2f}x"
            + (f"   (rbee: {retries} 503 retries over {args.reps} reps)" if retries else "")
        )
        c = {k: statistics.median(x[k] for x in ceiling.kept[n]) for k in ceiling.kept[n][0]}
        print(
            f"{'':>7}  {'llama.cpp ceiling':<17} {c['prefill_ms']:6.0f} ms "
            f"{'':>9} {c['e2e_tok_s']:7.1f}   (prefill of the {n} prompts in one batch; "
            f"prefill + decode, {c['decode_tok_s']:.1f} decode alone)"
        )
        tok_x, ttft_x = (sorted(x) for x in zip(*paired[n], strict=True))
        print(
            f"{'':>7}  {'rbee / ceiling':<17} {statistics.median(ttft_x):8.2f}x "
            f"{'':>9} {statistics.median(tok_x):6.2f}x   (median of the reps' ratios; "
            f"tok/s {tok_x[0]:.2f}-{tok_x[-1]:.2f}x)"
        )
    print()

    rb, ls = results["rbee-worker"], results["llama_cpp.server"]
    print("targets:")

    def check(ok: bool, text: str) -> None:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")

    if 1 in args.streams:
        x = rb[1].tok_s / ls[1].tok_s
        check(x >= 1.0, f"1 stream, tok/s rbee / llama_cpp.server: {x:.2f}x (target >= 1.0x)")
    if 4 in args.streams:
        x = rb[4].tok_s / ls[4].tok_s
        check(x >= 2.5, f"4 streams, tok/s rbee / llama_cpp.server: {x:.2f}x (target >= 2.5x)")
    for n in (1, 4):
        if n in args.streams:
            x = statistics.median(tok for tok, _ttft in paired[n])
            check(
                x >= 0.95,
                f"{n} stream{'s' * (n > 1)}, tok/s rbee / llama.cpp's ceiling: {x:.2f}x "
                "(target >= 0.95x)",
            )
    if 4 in args.streams:
        x = statistics.median(ttft for _tok, ttft in paired[4])
        check(
            x <= 1.2,
            f"4 streams sent together, rbee TTFT p50 / llama.cpp's prefill of the 4 prompts in "
            f"one batch: {x:.2f}x (target <= 1.2x)",
        )
    if 1 in args.streams and 4 in args.streams:
        x = rb[4].ttft_p50 / rb[1].ttft_p50
        check(
            x <= 2.0,
            f"rbee TTFT p50 4 streams / 1 stream: {x:.2f}x (target <= 2x; "
            f"{rb[4].ttft_p50 * 1000:.0f} ms vs {rb[1].ttft_p50 * 1000:.0f} ms)",
        )
    print()
    print("peak RSS (sampled every 50 ms, children included):")
    for name in ("llama_cpp.server", "rbee-worker"):
        print(f"  {name:<17} {mb(info[name]['peak'])}")
    if "in-process" in info:
        mem = info["in-process"]
        print(
            f"  {'in-process':<17} +{mb(mem['loaded'] - mem['before'])} after load, "
            f"+{mb(mem['peak'] - mem['before'])} at peak (the process had "
            f"{mb(mem['before'])} before loading)"
        )
    print()

    # Greedy decoding on three engines: texts agree for a while, then may part where two
    # tokens are near ties (batch shapes and kernels round differently). Informational only.
    base = texts["llama_cpp.server"]
    for name in ("in-process", "rbee-worker"):
        if name in texts:
            common = [p for p in base if p in texts[name]]
            same = sum(base[p] == texts[name][p] for p in common)
            shared = statistics.median(
                len(os.path.commonprefix([base[p], texts[name][p]])) / max(1, len(base[p]))
                for p in common
            )
            print(
                f"greedy texts vs llama_cpp.server: {name} identical {same}/{len(common)}, "
                f"median shared prefix {shared:.0%}"
            )
    print(
        f"other load (another process on the {psutil.cpu_count()} cores; a repetition with "
        f"more than {args.max_other} cores busy elsewhere is rerun, up to {args.redo} times):"
    )
    for name, g in guards.items():
        print(
            f"  {name:<17} reruns {g.redone}, kept while disturbed {g.disturbed}, "
            f"worst kept {g.worst:.2f} cores"
        )
    print("cores used while the rows ran (average over the kept repetitions):")
    for name, g in guards.items():
        own, server = g.usage()
        print(
            f"  {name:<17} "
            + (
                f"in-process {own:.2f}"
                if name == "in-process"
                else f"server {server:.2f}, benchmark client {own:.2f}"
            )
        )
    if any(g.disturbed for g in guards.values()):
        print(
            "WARNING: some kept repetitions ran while the machine was busy elsewhere; "
            "rerun when it is quiet."
        )
    draw_chart(
        results,
        f"{args.model}, {args.threads} threads, greedy, {args.tokens} tokens per "
        f"stream; rbee-worker --slots {args.slots}; median of {args.reps}",
        args.chart,
    )
    print(f"chart: {args.chart}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
