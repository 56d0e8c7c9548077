"""Soak: many streams against one rbee-worker, clients vanishing and canceling at random.

Each request streams from /v1/inference; by the seeded dice it runs to its end, or its client
disconnects after a few tokens, or its client sends DELETE (twice: DELETE is idempotent) and
reads on to the terminal event. A 503 ALL_SLOTS_BUSY is counted and retried after a short
wait. At the end the worker must have every slot free within a second, and its RSS and open
file descriptors must be what they were after a warm-up.

    .venv/bin/python bench/soak.py [--requests 800] [--concurrency 12] [--slots 4]
                                   [--model PATH|pkg:NAME] [--seed 1]

With no --model it writes the test suite's tiny random model (tests/support/tinymodel.py).
Exit status 1 when a slot stays busy, a stream ends without its terminal event, or the
worker's memory or descriptors grew past the bounds printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from streams import free_port

KEY = "soak-key-0123456789"
RSS_GROWTH_LIMIT_MB = 64  # allocator noise, caches; a leak per request exceeds it quickly
FD_GROWTH_LIMIT = 8
SERVER_KEEP_ALIVE_S = 5


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.tinymodel import write_tiny_gguf

    return write_tiny_gguf(folder / "soak-tiny.gguf", quant="q8_0", n_ctx_train=16384)


def start_worker(model: str, slots: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    bin_dir = Path(sys.executable).parent
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(bin_dir / "rbee-worker"),
                "--model",
                model,
                "--port",
                str(port),
                "--slots",
                str(slots),
                "--ctx-size",
                "1024",
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RBEE_WORKER_API_KEY": KEY},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(f"{url}/v1/ready", headers={"Authorization": f"Bearer {KEY}"}, timeout=2)
                .json()
                .get("ready")
            ):
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"the worker did not become ready; see {log}")


async def one_request(
    client: httpx.AsyncClient, rng: random.Random, n: int, outcomes: collections.Counter[str]
) -> None:
    fate = rng.choices(["complete", "disconnect", "delete"], weights=[4, 3, 3])[0]
    after = rng.randint(1, 24)  # tokens before the client vanishes or cancels
    body = {
        "prompt": "Once upon a time",
        "max_tokens": rng.randint(8, 96),
        "temperature": rng.choice([0, 0.8]),
        "seed": n,
        "request_id": f"soak-{n}",
    }
    for _attempt in range(50):
        async with client.stream("POST", "/v1/inference", json=body) as response:
            if response.status_code == 503:
                outcomes["busy (retried)"] += 1
                await response.aread()
                await asyncio.sleep(0.02 + rng.random() * 0.05)
                continue
            if response.status_code != 200:
                outcomes[f"HTTP {response.status_code}"] += 1
                return
            tokens = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event["type"] == "token":
                    tokens += 1
                    if tokens == after and fate == "disconnect":
                        outcomes["disconnected"] += 1
                        return  # leaving the block closes the connection mid-stream
                    if tokens == after and fate == "delete":
                        for _twice in range(2):
                            r = await client.delete(f"/v1/inference/{body['request_id']}")
                            outcomes[
                                "DELETE 204" if r.status_code == 204 else f"DELETE {r.status_code}"
                            ] += 1
                elif event["type"] == "done":
                    outcomes[f"done: {event['stop_reason']}"] += 1
                    return
                elif event["type"] == "error":
                    outcomes[f"error: {event['error']['code']}"] += 1
                    return
            outcomes["ended without a terminal event"] += 1
            return
    outcomes["gave up: busy 50 times"] += 1


async def soak(url: str, args: argparse.Namespace) -> collections.Counter[str]:
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60, limits=limits
    ) as client:

        async def gated(n: int) -> None:
            async with gate:
                await one_request(client, random.Random(rng.random()), n, outcomes)

        await asyncio.gather(*(gated(n) for n in range(args.requests)))
    return outcomes


def slots_busy_after(url: str, within_s: float) -> tuple[int, float]:
    """The worker's busy slots once they drop to 0, or after `within_s`; and the wait."""
    start = time.monotonic()
    while True:
        busy = httpx.get(f"{url}/health", timeout=5).json()["slots_busy"]
        waited = time.monotonic() - start
        if busy == 0 or waited > within_s:
            return busy, waited
        time.sleep(0.02)


def settled_fds(worker: psutil.Process) -> int:
    """Open descriptors once the server has closed the clients' idle keep-alive connections
    (Hypercorn does so after its keep_alive_timeout, 5 s by default)."""
    time.sleep(SERVER_KEEP_ALIVE_S + 1)
    return worker.num_fds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rbee-soak-") as tmp:
        folder = Path(tmp)
        model = args.model or str(tiny_model(folder))
        proc, url = start_worker(model, args.slots, folder / "worker.log")
        worker = psutil.Process(proc.pid)
        try:
            # Warm-up: the first requests allocate what every later one reuses.
            asyncio.run(soak(url, argparse.Namespace(**{**vars(args), "requests": 20})))
            slots_busy_after(url, 5)
            rss0, fds0 = worker.memory_info().rss, settled_fds(worker)
            started = time.monotonic()
            outcomes = asyncio.run(soak(url, args))
            elapsed = time.monotonic() - started
            busy, waited = slots_busy_after(url, 1.0)
            rss1, fds1 = worker.memory_info().rss, settled_fds(worker)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)

    print(
        f"rbee-worker soak: {args.requests} requests, {args.concurrency} clients, "
        f"{args.slots} slots, seed {args.seed}, {elapsed:.1f} s"
    )
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome:<32} {count:>6}")
    print(f"  slots busy after                 {busy:>6}  (settled in {waited * 1000:.0f} ms)")
    print(f"  RSS MB before / after        {rss0 / 2**20:>6.0f} / {rss1 / 2**20:.0f}")
    print(f"  open fds before / after      {fds0:>6} / {fds1}")
    print(f"  worker alive at the end          {'yes' if alive else 'NO':>6}")
    failed = (
        busy != 0
        or not alive
        or outcomes["ended without a terminal event"]
        or (rss1 - rss0) / 2**20 > RSS_GROWTH_LIMIT_MB
        or fds1 - fds0 > FD_GROWTH_LIMIT
    )
    print("FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
