"""The queen's cost (issue 13): one warm worker straight and through `rbee queen`, the
queen's memory, and eight streams over two nodes against one.

    make bench-queen    # = .venv/bin/python bench/queen.py [--layout apart|shared]

Everything it measures runs as a real process, in a temporary RBEE_HOME that it deletes
after: two hives (`rbee-hive daemon`; nodes `a` and `b`, both `ssh = false` on this machine,
each with its own state dir and port), three workers spawned through the keeper
(Keeper.hive_up, spawn_worker, wait_worker_ready), and `rbee queen` on loopback over an
inventory that names them. It stops them all on the way out, Ctrl+C and failures included.

1. Overhead: 1 and 4 streams to one warm 8-slot worker on node a, straight (its URL and key
   from the registry, model `pkg:NAME`, the name it answers to) and through the queen (model
   `gemma`, which the queen renames so), the same prompts both ways, which way goes first
   alternating. TTFT in many pairs of short requests (each pair: the same prompts one way,
   then the other), the queen's overhead being each pair's difference; aggregate tokens/s
   in rounds of full-length streams.
2. The queen's RSS after the runs.
3. 8 streams through the queen: 2 nodes x one 4-slot worker (model `gemma-2x4`) against
   1 node x the 8-slot worker, rounds alternating, each node on its cores (below).

The 8-slot worker serves the model as `pkg:NAME`, the 4-slot ones the same file as
`file:PATH`: two references, so the queen keeps the two inventory models' workers apart.

Layouts (`--layout`): `apart` (the default) gives node a's hive and workers the first half
of the cores this process may use (rounded down), and node b's, the queen and this client
the rest: the queen runs apart from the worker it is measured against, as on an operator
machine, and each worker runs one decode thread per core it may use. Node b shares its
cores with the queen and the client, which slows it in section 3. `shared` lets everything
run on every core, as a queen on the node it serves (runs A-L in docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from streams import (
    ForeignCpu,
    PeakRss,
    Server,
    free_port,
    mb,
    one_stream,
    percentile,
    prompt_stream,
    stop_process,
    summarize,
)

from rbee.control.keeper.events import Unheard
from rbee.control.keeper.hive_control import running_hive_pid
from rbee.control.keeper.inventory import Inventory, load_inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.words import ActionableError
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.control.queen.upstream import WorkerLinks
from rbee.dataplane.plumbing.gguf_file import resolve_model_path
from rbee.dataplane.protocol.states import SERVING_STATES

ONE_NODE = "gemma"  # inventory model: the 8-slot worker on node a
TWO_NODES = "gemma-2x4"  # inventory model: a 4-slot worker on each of nodes a and b
TTFT_OVERHEAD_TARGET_MS = 5.0
TOK_S_RATIO_TARGET = 0.97
LOAD_TIMEOUT_S = 300.0
QUEEN_START_TIMEOUT_S = 20.0
QUEEN_SEES_WORKERS_S = 30.0  # the queen probes each node every 2 s
QUIET_CORES = 0.15  # busy elsewhere on average, above which the numbers are suspect


def write_inventory(path: Path, root: Path, model: str, same_file: str) -> Inventory:
    nodes = "".join(
        f"[nodes.{name}]\nssh = false\nhive_port = {free_port()}\n"
        f'state_dir = "{root / f"hive-{name}"}"\nidle_timeout_s = 3600\n\n'
        for name in ("a", "b")
    )
    path.write_text(
        nodes
        + f'[models.{ONE_NODE}]\nref = "{model}"\nnodes = ["a"]\nslots = 8\n\n'
        + f'[models.{TWO_NODES}]\nref = "{same_file}"\nnodes = ["a", "b"]\nslots = 4\n'
    )
    return load_inventory(path)


@dataclass(frozen=True)
class Worker:
    url: str
    api_key: str | None


def split_cores() -> dict[str, set[int]]:
    """The `apart` layout: node a's cores, and node b's (which the queen and this client
    share)."""
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    return {"a": set(cores[:half]), "b": set(cores[half:])}


async def start_cluster(
    inventory: Inventory,
    registry: WorkerRegistry,
    model: str,
    same_file: str,
    cores_of: dict[str, set[int]] | None,
) -> tuple[Worker, list[int]]:
    """Both hives up (each on its node's cores, if given: a hive and the workers it starts
    keep the CPU affinity of the process that started it), the three workers loaded: the
    8-slot worker, and the hives' pids."""
    async with Keeper(inventory, registry) as keeper:
        for node in keeper.nodes:
            if cores_of is not None:
                os.sched_setaffinity(0, cores_of[node.name])
            print(f"  {await keeper.hive_up(node, Unheard())}", flush=True)
        a, b = inventory.get("a"), inventory.get("b")
        spawns = [(a, model, 8), (a, same_file, 4), (b, same_file, 4)]
        ids = [await keeper.spawn_worker(n, ref, Unheard(), slots=s) for n, ref, s in spawns]
        await asyncio.gather(
            *(
                keeper.wait_worker_ready(n, worker_id, Unheard(), timeout_s=LOAD_TIMEOUT_S)
                for (n, _ref, _slots), worker_id in zip(spawns, ids, strict=True)
            )
        )
        registered = registry.get(ids[0])
        assert registered is not None  # spawn_worker recorded it
        url = await keeper.access(a).worker_url(registered.url)
        pids = [await running_hive_pid(n, keeper.access(n).runner) for n in keeper.nodes]
        return Worker(url, registered.api_key), [p for p in pids if p is not None]


async def stop_cluster(inventory: Inventory, registry: WorkerRegistry) -> bool:
    """Every node's hive down (its workers with it); whether all went."""
    stopped = True
    async with Keeper(inventory, registry) as keeper:
        for node in keeper.nodes:
            try:
                print(f"  {await keeper.hive_down(node, Unheard())}", flush=True)
            except ActionableError as exc:
                print(f"  {node.name}: {exc}", file=sys.stderr, flush=True)
                stopped = False
    return stopped


def start_queen(inventory: Path, home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "rbee"),
                "--inventory",
                str(inventory),
                "queen",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RBEE_HOME": str(home)},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + QUEEN_START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the queen did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def wait_until_queen_sees(url: str, workers: int) -> None:
    deadline = time.monotonic() + QUEEN_SEES_WORKERS_S
    while True:
        seen = httpx.get(f"{url}/v1/cluster", timeout=5).json()["workers"]
        if sum(w["state"] in SERVING_STATES for w in seen) >= workers:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the queen saw {len(seen)} of {workers} workers ready: {seen}")
        time.sleep(0.2)


@dataclass
class Way:
    """One way to a model (straight to the worker, or through the queen) and what its
    rounds measured."""

    server: Server
    model: str
    ttfts: list[float] = field(default_factory=list)  # every stream's, every round's
    heads: list[float] = field(default_factory=list)  # to the answer's headers, the same
    pair_ttfts: list[float] = field(default_factory=list)  # every stream's, every pair's
    pair_heads: list[float] = field(default_factory=list)  # to the answer's headers, the same
    tok_s: list[float] = field(default_factory=list)  # each round's aggregate
    tokens: int = 0
    wall_s: float = 0.0
    queen_cpu_s: float = 0.0  # the queen's CPU time during these rounds
    elsewhere: list[float] = field(default_factory=list)  # cores busy elsewhere, each round

    def ttft_p50_ms(self) -> float:
        return percentile(self.ttfts, 0.5) * 1000

    def pair_ttft_p50_ms(self) -> float:
        return percentile(self.pair_ttfts, 0.5) * 1000

    def pair_head_p50_ms(self) -> float:
        return percentile(self.pair_heads, 0.5) * 1000

    def tok_s_median(self) -> float:
        return statistics.median(self.tok_s)

    def tok_s_spread(self) -> str:
        return f"{min(self.tok_s):.1f}-{max(self.tok_s):.1f}"


@dataclass
class Bench:
    args: argparse.Namespace
    queen: psutil.Process
    ours: list[int]  # this process (the queen is its child) and the hives (workers theirs)
    prompts: Iterator[str] = field(default_factory=prompt_stream)

    async def round(self, way: Way, prompts: list[str]) -> None:
        """The prompts sent together; TTFT counts from then."""
        cpu0 = self.queen.cpu_times()
        with ForeignCpu(self.ours) as cpu:
            t0 = time.perf_counter()
            streams = await asyncio.gather(
                *(one_stream(way.server, p, t0, self.args, model=way.model) for p in prompts)
            )
        cpu1 = self.queen.cpu_times()
        row = summarize(t0, list(streams))
        way.ttfts += [s.ttft for s in streams]
        way.heads += [s.head for s in streams]
        way.tok_s.append(row.tok_s)
        way.tokens += row.tokens
        way.wall_s += cpu.wall
        way.queen_cpu_s += cpu1.user + cpu1.system - cpu0.user - cpu0.system
        way.elsewhere.append(cpu.cores)

    async def warm_up(self, way: Way, streams: int) -> None:
        """`streams` short requests at once, so that the rounds meet warm engines and open
        connections (the queen's to the worker included)."""
        short = argparse.Namespace(**{**vars(self.args), "tokens": self.args.warmup_tokens})
        await asyncio.gather(
            *(
                one_stream(way.server, next(self.prompts), 0.0, short, model=way.model)
                for _ in range(streams)
            )
        )

    async def pairs(self, straight: Way, queen: Way, streams: int, pairs: int) -> list[float]:
        """`pairs` pairs of `streams` short requests sent together, the same prompts one way
        then the other (which first alternating); each pair's TTFT p50 through the queen
        minus straight. Pairs cancel what varies from prompt to prompt and as the machine's
        speed drifts; short requests make many pairs cheap."""
        short = argparse.Namespace(**{**vars(self.args), "tokens": self.args.pair_tokens})
        overheads = []
        for i in range(pairs):
            batch = [next(self.prompts) for _ in range(streams)]
            ttft: dict[int, float] = {}
            for way in (straight, queen) if i % 2 == 0 else (queen, straight):
                t0 = time.perf_counter()
                sent = await asyncio.gather(
                    *(one_stream(way.server, p, t0, short, model=way.model) for p in batch)
                )
                way.pair_ttfts += [s.ttft for s in sent]
                way.pair_heads += [s.head for s in sent]
                ttft[id(way)] = percentile([s.ttft for s in sent], 0.5)
            overheads.append(ttft[id(queen)] - ttft[id(straight)])
        return overheads

    async def compare(self, a: Way, b: Way, streams: int, rounds: int) -> None:
        """Rounds of `streams` at once on a and on b: the same prompts both ways, which way
        goes first alternating (the machine's speed drifts)."""
        for i in range(rounds):
            batch = [next(self.prompts) for _ in range(streams)]
            for way in (a, b) if i % 2 == 0 else (b, a):
                await self.round(way, batch)


@dataclass
class Results:
    overhead: dict[int, tuple[Way, Way]]  # streams → (straight, through the queen)
    pair_overheads: dict[int, list[float]]  # streams → each pair's TTFT overhead, seconds
    one_node: Way
    two_nodes: Way
    queen_rss_before: int
    queen_rss_peak: int
    queen_rss_after: int
    routed: dict[str, int]


async def measure(
    args: argparse.Namespace, worker: Worker, queen_url: str, bench: Bench
) -> Results:
    before = bench.queen.memory_info().rss
    links = WorkerLinks()
    w, q = Server(worker.url, links, worker.api_key), Server(queen_url, links)
    try:
        with PeakRss(bench.queen.pid) as rss:
            overhead: dict[int, tuple[Way, Way]] = {}
            pair_overheads: dict[int, list[float]] = {}
            plan = ((1, args.pairs, args.rounds), (4, args.pairs_4, args.rounds_4))
            for n, pairs, rounds in plan:
                straight, queen = Way(w, args.model), Way(q, ONE_NODE)
                await bench.warm_up(straight, n)
                await bench.warm_up(queen, n)
                print(
                    f"  {n} stream(s): {pairs} pairs of {args.pair_tokens} tokens, "
                    f"{rounds} rounds of {args.tokens} each way",
                    flush=True,
                )
                pair_overheads[n] = await bench.pairs(straight, queen, n, pairs)
                await bench.compare(straight, queen, n, rounds)
                overhead[n] = (straight, queen)
            one, two = Way(q, ONE_NODE), Way(q, TWO_NODES)
            await bench.warm_up(one, 8)
            await bench.warm_up(two, 8)
            print(f"  8 streams, 1 node and 2 nodes, {args.rounds_8} rounds each", flush=True)
            await bench.compare(one, two, 8, args.rounds_8)
        after = bench.queen.memory_info().rss
        seen = httpx.get(f"{queen_url}/v1/cluster", timeout=5).json()
    finally:
        links.close()
    routed = {n["name"]: n["routed"] for n in seen["nodes"]}
    return Results(overhead, pair_overheads, one, two, before, rss.peak, after, routed)


def median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the median: the order statistics
    at ranks (n - 1.96 sqrt n) / 2 and 1 + (n + 1.96 sqrt n) / 2 (the sign test's, with the
    normal approximation: fine from about 30 values on)."""
    xs = sorted(values)
    n, spread = len(xs), 1.96 * math.sqrt(len(xs))
    lo = max(1, math.floor((n - spread) / 2))
    hi = min(n, math.ceil(1 + (n + spread) / 2))
    return xs[lo - 1], xs[hi - 1]


def report(args: argparse.Namespace, r: Results, cores: int) -> None:
    print()
    print(
        f"1. One warm worker ({ONE_NODE}, 8 slots, node a): straight vs through the queen\n"
        f"   (which runs, probing its nodes, through both). Headers (the answer's status\n"
        f"   and headers came) and TTFT: p50 over every stream of every pair of short\n"
        f"   requests; tok/s: median of the full-length rounds' aggregates (min-max),\n"
        f"   their ratio the median of each round's ratio to its neighbour of the same prompts"
    )
    head = (
        f"{'streams':>7}  {'way':<14} {'headers p50':>11} {'TTFT p50':>10} {'tok/s':>7}  (min-max)"
    )
    print(head)
    print("-" * len(head))
    checks: list[tuple[bool, str]] = []
    for n, (straight, queen) in r.overhead.items():
        for name, way in (("straight", straight), ("through queen", queen)):
            print(
                f"{n:>7}  {name:<14} {way.pair_head_p50_ms():8.1f} ms "
                f"{way.pair_ttft_p50_ms():7.1f} ms {way.tok_s_median():7.1f}  {way.tok_s_spread()}"
            )
        extra = queen.pair_ttft_p50_ms() - straight.pair_ttft_p50_ms()
        added_head = queen.pair_head_p50_ms() - straight.pair_head_p50_ms()
        # Each round through the queen against the straight round of the same prompts next
        # to it: the machine's speed drifts by more than the target's margin over the rounds.
        ratios = sorted(q / s for q, s in zip(queen.tok_s, straight.tok_s, strict=True))
        ratio = statistics.median(ratios)
        print(
            f"{'':>7}  {'queen adds':<14} {added_head:+8.1f} ms {extra:+7.1f} ms {ratio:6.3f}x"
            f"  (rounds' ratios {ratios[0]:.3f}-{ratios[-1]:.3f}x)"
        )
        overheads = [o * 1000 for o in r.pair_overheads[n]]
        paired = percentile(overheads, 0.5)
        low, high = median_interval(overheads)
        print(
            f"{'':>7}  TTFT overhead of each pair ({len(overheads)}): p50 {paired:+.1f} ms "
            f"(95 % interval {low:+.1f} to {high:+.1f}),\n{'':>7}  "
            f"p25 {percentile(overheads, 0.25):+.1f}, p75 {percentile(overheads, 0.75):+.1f}"
        )
        s = "stream" if n == 1 else "streams"
        checks.append(
            (
                paired <= TTFT_OVERHEAD_TARGET_MS,
                f"{n} {s}: TTFT overhead p50 {paired:+.1f} ms, over {len(overheads)} pairs "
                f"(target <= {TTFT_OVERHEAD_TARGET_MS:g} ms)",
            )
        )
        checks.append(
            (
                ratio >= TOK_S_RATIO_TARGET,
                f"{n} {s}: tok/s through queen / straight {ratio:.3f}x "
                f"(target >= {TOK_S_RATIO_TARGET}x)",
            )
        )
    for ok, text in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    queen_ways = [q for _s, q in r.overhead.values()]
    straight_ways = [s for s, _q in r.overhead.values()]
    # The queen runs through the straight rounds too (probing the nodes): that is its cost
    # with nothing to relay, the same for both ways; what relaying adds is the rest.
    idle = sum(s.queen_cpu_s for s in straight_ways) / sum(s.wall_s for s in straight_ways)
    relay_wall = sum(q.wall_s for q in queen_ways)
    relay_cpu = sum(q.queen_cpu_s for q in queen_ways)
    per_token = (relay_cpu - idle * relay_wall) / sum(q.tokens for q in queen_ways)
    print(
        f"  the queen's CPU: {idle:.3f} cores with nothing to relay (its probes of the\n"
        f"  nodes, during the straight rounds), {relay_cpu / relay_wall:.3f} while relaying: "
        f"{per_token * 1e6:+.0f} us a token"
    )
    print()
    print(
        f"2. The queen's RSS: {mb(r.queen_rss_after)} after the runs\n   "
        f"({mb(r.queen_rss_before)} before the first request, peak {mb(r.queen_rss_peak)})"
    )
    print()
    if args.layout == "apart":
        print(
            f"3. 8 streams through the queen, median of {args.rounds_8} rounds. Each node\n"
            f"   on its own cores (node b on those of the queen and this client)."
        )
    else:
        print(
            f"3. 8 streams through the queen, median of {args.rounds_8} rounds. Both nodes\n"
            f"   are hives on this machine, sharing its {cores} cores (each worker runs\n"
            f"   {cores} threads): no speed-up is expected here, only the queen's spreading."
        )
    head = f"{'layout':<34} {'TTFT p50':>10} {'tok/s':>8}  (min-max)"
    print(head)
    print("-" * len(head))
    for name, way in (
        ("1 node: 1 worker x 8 slots", r.one_node),
        ("2 nodes: 1 worker x 4 slots each", r.two_nodes),
    ):
        print(
            f"{name:<34} {way.ttft_p50_ms():7.1f} ms {way.tok_s_median():8.1f}  "
            f"{way.tok_s_spread()}"
        )
    print(
        "  requests the queen routed, warm-ups included: "
        + ", ".join(f"node {node} {n}" for node, n in sorted(r.routed.items()))
    )
    print()
    ways = [*queen_ways, *straight_ways, r.one_node, r.two_nodes]
    elsewhere = [c for way in ways for c in way.elsewhere]
    print(
        f"other load: {statistics.mean(elsewhere):.2f} cores on average (max "
        f"{max(elsewhere):.2f}) went to processes\nother than this bench's while rounds ran"
    )
    if statistics.mean(elsewhere) > QUIET_CORES:
        print("WARNING: the machine was busy elsewhere; rerun when it is quiet.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m", help="a bundled model, pkg:NAME")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens a stream")
    # One stream's pairs vary less (a 70 ms prefill), but the p50 of 60 was still
    # uncertain by about ±6 ms (its 95 % interval): 120, each 0.2 s.
    parser.add_argument("--pairs", type=int, default=120, help="TTFT pairs of 1 stream")
    # A pair of 4 streams varies by tens of ms (a 250 ms prefill step's speed drifts by
    # ±8 % between the pair's two sends): the p50 of 120 pairs was uncertain by ±6 ms (its
    # 95 % interval), of 360 by about ±3.5. Each pair takes 0.65 s.
    parser.add_argument("--pairs-4", type=int, default=360, help="TTFT pairs of 4 streams")
    parser.add_argument("--pair-tokens", type=int, default=4, help="max_tokens in a pair")
    # One stream's rounds' ratios range over about ±8 % as the machine's speed drifts, so
    # the median of 16 was uncertain by about 2 %, as much as the margin it is judged by.
    parser.add_argument("--rounds", type=int, default=32, help="rounds of 1 stream, each way")
    # The median of 8 four-stream rounds' ratios read 0.961-1.000 over runs of one build.
    parser.add_argument("--rounds-4", type=int, default=16, help="rounds of 4 streams, each way")
    parser.add_argument("--rounds-8", type=int, default=3, help="rounds of 8 streams, each way")
    parser.add_argument("--warmup-tokens", type=int, default=16, help="max_tokens to warm up")
    parser.add_argument(
        "--retry-s", type=float, default=0.1, help="wait before retrying a worker's 503"
    )
    parser.add_argument(
        "--layout",
        choices=("apart", "shared"),
        default="apart",
        help="apart: node a on half the cores, node b, the queen and the client on the "
        "rest; shared: all on every core",
    )
    args = parser.parse_args()
    if not args.model.startswith("pkg:"):
        parser.error("--model: give a bundled model (pkg:NAME)")
    cores = len(os.sched_getaffinity(0))
    if args.layout == "apart" and cores < 2:
        parser.error("--layout apart needs 2 cores or more: use --layout shared")
    cores_of = split_cores() if args.layout == "apart" else None
    started = time.perf_counter()
    same_file = f"file:{resolve_model_path(args.model)}"
    where = (
        "all on every core"
        if cores_of is None
        else f"node a on cores {_listed(cores_of['a'])}; node b, the queen and this client "
        f"on {_listed(cores_of['b'])}"
    )
    print(
        f"model {args.model}, {args.tokens} tokens a stream, greedy; {cores} cores\n"
        f"hives, workers and queen: this bench's own, in a temporary RBEE_HOME\n"
        f"layout {args.layout}: {where}",
        flush=True,
    )

    # Ctrl+C and a plain kill both stop what this bench started (the finally below).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="rbee-bench-queen-"))
    home = root / "home"
    home.mkdir()
    os.environ["RBEE_HOME"] = str(home)  # the keeper's files too, never the user's
    inventory_path = root / "inventory.toml"
    inventory = write_inventory(inventory_path, root, args.model, same_file)
    registry = WorkerRegistry(home / "workers.db")
    queen: subprocess.Popen[bytes] | None = None
    status = 1
    try:
        print("starting 2 hives and 3 workers", flush=True)
        worker, hive_pids = asyncio.run(
            start_cluster(inventory, registry, args.model, same_file, cores_of)
        )
        if cores_of is not None:
            os.sched_setaffinity(0, cores_of["b"])  # the queen's and this client's
        queen, queen_url = start_queen(inventory_path, home, root / "queen.log")
        wait_until_queen_sees(queen_url, workers=3)
        print(f"measuring (queen at {queen_url})", flush=True)
        bench = Bench(args, psutil.Process(queen.pid), [os.getpid(), *hive_pids])
        results = asyncio.run(measure(args, worker, queen_url, bench))
        report(args, results, cores)
        status = 0
    except ActionableError as exc:
        print(f"Error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        # Stopping is not to be cut short: a second Ctrl+C would leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping the queen, the hives and their workers", flush=True)
        if queen is not None:
            stop_process(queen, timeout_s=15)
        stopped = asyncio.run(stop_cluster(inventory, registry))
        registry.close()
        if stopped:
            shutil.rmtree(root)
        else:
            print(
                f"left {root}: stop a hive still running with "
                f"`rbee-hive stop --state-dir {root}/hive-NODE`",
                file=sys.stderr,
            )
    print(f"total {time.perf_counter() - started:.0f} s")
    return status


def _listed(cores: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


if __name__ == "__main__":
    sys.exit(main())
