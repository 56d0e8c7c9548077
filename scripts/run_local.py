"""`make run`: stream one answer from the bundled model through a real rbee-worker process.

Temporary front door until the keeper's `rbee infer` (which goes through the hive) exists.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys

from rbee.control.api_client import RemoteError
from rbee.control.worker_client import WorkerClient

MODEL = "pkg:gemma3-270m"
LOAD_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(prompt: str) -> int:
    port = free_port()
    worker_bin = shutil.which("rbee-worker", path=os.path.dirname(sys.executable)) or "rbee-worker"
    proc = subprocess.Popen(
        [worker_bin, "--model", MODEL, "--port", str(port), "--log-level", "warning"],
    )
    try:
        async with WorkerClient(f"http://127.0.0.1:{port}") as client:
            for _ in range(100):  # the port answers within a second of the process starting
                try:
                    await client.health()
                    break
                except Exception:
                    await asyncio.sleep(0.1)

            def show(event: dict) -> None:
                if event.get("stage") == "loading_to_vram":
                    print(f"\rLoading {MODEL}... {event['layers_loaded']}/{event['layers_total']}"
                          " layers", end="", file=sys.stderr, flush=True)
                elif event.get("stage") == "ready":
                    print("\nModel ready!", file=sys.stderr)

            await client.wait_ready(timeout_s=LOAD_TIMEOUT_S, on_progress=show)
            print(f"> {prompt}", file=sys.stderr)
            async for event in client.stream(prompt, max_tokens=120, temperature=0.7):
                if event["type"] == "token":
                    print(event["token"], end="", flush=True)
                elif event["type"] == "done":
                    seconds = event["duration_ms"] / 1000
                    print(f"\n[{event['total_tokens']} tokens in {seconds:.1f} s, "
                          f"{event['stop_reason']}]", file=sys.stderr)
                elif event["type"] == "error":
                    print(f"\nError: {event['error']['message']}", file=sys.stderr)
                    return 1
            await client.shutdown()
        return proc.wait(timeout=30)
    except RemoteError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(asyncio.run(run(" ".join(sys.argv[1:]) or "write a short story")))
