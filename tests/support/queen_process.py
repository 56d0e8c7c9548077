"""A real `rbee queen` process for tests, and the `openai` SDK pointed at it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from conftest import BIN, free_port


@dataclass
class Queen:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def run_queen(inventory: Path, home: Path, *args: str) -> Queen:
    """`rbee queen ARGS` with its own log file (the process may not be serving yet)."""
    log_path = home / f"queen-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "rbee"), "--inventory", str(inventory), "queen", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RBEE_HOME": str(home)},
        )
    return Queen(proc, "", log_path)


def start_queen(inventory: Path, home: Path, *args: str) -> Queen:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    queen = run_queen(inventory, home, "--listen", f"127.0.0.1:{port}", *args)
    queen.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{queen.url}/health", timeout=1).status_code == 200:
                return queen
        except httpx.TransportError:
            pass
        assert queen.proc.poll() is None, queen.log()
        assert time.monotonic() < deadline, "the queen did not start"
        time.sleep(0.1)


def wait_until_it_sees(queen: Queen, workers: int, timeout_s: float = 30) -> None:
    """Until the queen's view of the cluster holds `workers` workers."""
    deadline = time.monotonic() + timeout_s
    while len(httpx.get(f"{queen.url}/v1/cluster").json()["workers"]) < workers:
        assert time.monotonic() < deadline, f"the queen never saw {workers} workers"
        time.sleep(0.2)


def sdk(queen: Queen, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{queen.url}/v1", api_key=key, max_retries=0)
