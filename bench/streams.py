"""What the benches that stream share: distinct prompts, one streaming request over OpenAI
`/v1/completions` timed token by token, rows of concurrent streams (TTFT percentiles,
aggregate tokens/s), and where a machine's CPU and memory went meanwhile.

Imported by bench/compare.py and bench/queen.py, which Python runs with bench/ on sys.path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from rbee.control.queen.upstream import UpstreamAnswer, WorkerLinks

CONNECT_TIMEOUT_S = 30.0
# llama_cpp.server answers a queued stream's headers only once it starts (8 streams: ~17 s).
READ_TIMEOUT_S = 600.0
# Each prompt starts with a different word, so a server that keeps the last prompt's KV cache
# (llama_cpp.server's single Llama does prefix matching) shares at most the BOS token with it.
NAMES = [
    "Amelia",
    "Bartholomew",
    "Cecilia",
    "Desmond",
    "Eleanor",
    "Fitzgerald",
    "Genevieve",
    "Horatio",
    "Isadora",
    "Jasper",
    "Katarina",
    "Leopold",
    "Marguerite",
    "Nathaniel",
    "Ophelia",
    "Percival",
    "Quentin",
    "Rosalind",
    "Sebastian",
    "Theodora",
    "Ulysses",
    "Valentina",
    "Wilhelmina",
    "Xavier",
    "Yolanda",
    "Zachariah",
    "Beatrix",
    "Cornelius",
    "Dorothea",
    "Ebenezer",
    "Felicity",
    "Gideon",
    "Harriet",
    "Ignatius",
    "Josephine",
    "Lysander",
    "Millicent",
    "Octavius",
    "Penelope",
    "Reginald",
    "Seraphina",
    "Tobias",
    "Winifred",
    "Alistair",
    "Bernadette",
    "Clementine",
    "Dashiell",
    "Evangeline",
]
PLACES = [
    "a lighthouse on a windy cape",
    "a bakery in a mountain town",
    "an old library by the river",
    "a farm at the edge of the forest",
    "a harbour full of fishing boats",
    "a castle above the valley",
    "a train station in the desert",
    "a cottage near the sea",
]


def prompt_stream() -> Iterator[str]:
    """The same sequence of distinct prompts for every backend; neighbours differ in name."""
    endings = (
        "One morning, {} found",
        "One evening, {} heard",
        "One night, {} saw",
        "One afternoon, {} met",
        "One day, {} lost",
        "One spring, {} built",
    )
    for ending in endings:
        for i in range(len(NAMES) * len(PLACES)):
            name = NAMES[i % len(NAMES)]
            place = PLACES[(i + i // len(NAMES)) % len(PLACES)]
            yield f"{name} lived in {place}. {ending.format(name)}"
    raise SystemExit("bench: out of distinct prompts")


def worker_argv(model: str, port: int, threads: int, ctx: int, *extra: str) -> list[str]:
    """The command line of an rbee-worker for a bench: quiet, on loopback `port`."""
    return [
        str(Path(sys.executable).parent / "rbee-worker"),
        "--model",
        model,
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--ctx-size",
        str(ctx),
        "--log-level",
        "warning",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(
    client: httpx.Client,
    proc: subprocess.Popen[Any],
    what: str,
    *,
    ready: Callable[[httpx.Client], bool] = lambda c: bool(c.get("/v1/ready").json().get("ready")),
    log: IO[str] | None = None,
    timeout_s: float = 300,
) -> None:
    """Until the server `proc` runs says it is ready (an rbee worker's /v1/ready by default);
    SystemExit with its log's tail if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready(client):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            tail = ""
            if log is not None:
                log.seek(0)
                tail = ":\n" + log.read()[-3000:]
            raise SystemExit(f"{what} did not become ready{tail}")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL past `timeout_s`: a server this bench started is gone after."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


class PeakRss:
    """Samples a process's RSS (children included) on a thread; `peak` is the highest seen."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.now())
            except psutil.Error:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ForeignCpu:
    """Where the machine's CPU went during a block: `own` (the processes named), `children`
    (their descendants: the servers) and `cores`, everything else (other processes,
    interrupts, hypervisor steal), each as an average number of cores. A process is counted
    once, though it be named and another's descendant too."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()  # guest time is already inside user and nice
        return sum(
            getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")
        )

    def _ours(self) -> tuple[float, float]:
        """CPU seconds of (the processes named, their descendants)."""
        named: dict[int, psutil.Process] = {}
        descendants: dict[int, psutil.Process] = {}
        for pid in self._pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                named[pid] = proc
                descendants.update((p.pid, p) for p in proc.children(recursive=True))

        def cpu(procs: dict[int, psutil.Process], skip: dict[int, psutil.Process]) -> float:
            total = 0.0
            for pid, proc in procs.items():
                if pid not in skip:
                    with contextlib.suppress(psutil.Error):
                        c = proc.cpu_times()
                        total += c.user + c.system
            return total

        return cpu(named, {}), cpu(descendants, named)

    def __enter__(self) -> ForeignCpu:
        self._t0, self._busy0, self._ours0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.perf_counter() - self._t0
        own, children = (a - b for a, b in zip(self._ours(), self._ours0, strict=True))
        busy = self._busy() - self._busy0
        self.wall = wall
        self.own = own / wall  # cores used by this process (the client, or in-process llama)
        self.children = children / wall  # cores used by the server
        self.cores = max(0.0, busy - own - children) / wall


@dataclass
class Stream:
    ttft: float  # seconds from the row's start (all requests sent together) to the first text
    end: float  # perf_counter of the last token
    tokens: int
    text: str
    retries: int = 0  # 503s retried (rbee with more streams than slots)
    head: float = 0.0  # seconds from the row's start to the answer's status and headers


@dataclass
class Row:
    ttft_p50: float
    ttft_p95: float
    tok_s: float
    tokens: int
    retries: int


def summarize(t0: float, streams: list[Stream]) -> Row:
    ttfts = [s.ttft for s in streams]
    tokens = sum(s.tokens for s in streams)
    wall = max(s.end for s in streams) - t0
    return Row(
        percentile(ttfts, 0.5),
        percentile(ttfts, 0.95),
        tokens / wall,
        tokens,
        sum(s.retries for s in streams),
    )


def median_row(reps: list[Row]) -> Row:
    return Row(
        statistics.median(r.ttft_p50 for r in reps),
        statistics.median(r.ttft_p95 for r in reps),
        statistics.median(r.tok_s for r in reps),
        round(statistics.median(r.tokens for r in reps)),
        round(statistics.median(r.retries for r in reps)),
    )


@dataclass(frozen=True)
class Server:
    """Where a bench's streams go. They are read with the queen's own HTTP/1.1 client
    (control/queen/upstream.py): the bench runs on the cores the server decodes on, and
    httpx spent 0.43-0.49 ms of CPU a token there (docs/performance.md, "The bench's
    client")."""

    base_url: str
    links: WorkerLinks
    api_key: str | None = None


async def sse_data(answer: UpstreamAnswer) -> AsyncIterator[bytes]:
    """Each event's `data:` payload (one-line events: what the servers send)."""
    pending = b""
    async for chunk in answer.aiter_raw():
        pending = (pending + chunk).replace(b"\r\n", b"\n")  # sse-starlette's default
        *events, pending = pending.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()


async def one_stream(
    server: Server,
    prompt: str,
    t0: float,
    args: argparse.Namespace,
    *,
    model: str | None = None,
) -> Stream:
    """One streaming completion of `args.tokens` tokens, greedy; `model` when the server
    routes by it (the queen)."""
    # llama_cpp.server defaults repeat_penalty to 1.1 (the Llama API and rbee: none), which
    # changes greedy output; rbee's OpenAI endpoints ignore fields they do not know.
    body: dict[str, object] = {
        "prompt": prompt,
        "max_tokens": args.tokens,
        "temperature": 0,
        "stream": True,
        "repeat_penalty": 1.0,
    }
    if model is not None:
        body["model"] = model
    payload = json.dumps(body).encode()
    retries = 0
    while True:
        r = await server.links.post(
            f"{server.base_url}/v1/completions",
            payload,
            api_key=server.api_key,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            read_timeout_s=READ_TIMEOUT_S,
        )
        try:
            if r.status_code == 503:  # rbee: ALL_SLOTS_BUSY; wait in line like a client would
                await r.aread()
                retries += 1
                await asyncio.sleep(args.retry_s)
                continue
            if r.status_code != 200:
                detail = (await r.aread()).decode(errors="replace")
                raise SystemExit(f"{server.base_url}: HTTP {r.status_code}: {detail[:300]}")
            head = time.perf_counter() - t0
            first = None
            text = []
            n = 0
            finish = None
            async for data in sse_data(r):
                if data == b"[DONE]":
                    continue  # the body ends next
                obj = json.loads(data)
                if "error" in obj:
                    raise SystemExit(f"{server.base_url}: stream error {obj['error']}")
                choice = obj["choices"][0]
                if choice.get("text"):
                    now = time.perf_counter()
                    first = first or now
                    text.append(choice["text"])
                    n += 1
                finish = choice.get("finish_reason") or finish
            end = time.perf_counter()
            if finish is None:
                raise SystemExit(
                    f"{server.base_url}: a stream ended after {n} tokens with no finish_reason "
                    "(cut off: llama_cpp.server does that without --interrupt_requests False)"
                )
            tokens = args.tokens if finish == "length" else n
            return Stream((first or end) - t0, end, tokens, "".join(text), retries, head)
        finally:
            r.close()
