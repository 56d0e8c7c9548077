"""Shared fixtures: tiny generated GGUF models and real rbee-worker processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support.model_server import ModelServer
from support.tinymodel import write_corrupt_gguf, write_tiny_gguf

from rbee.control.keeper.worker_registry import WorkerRegistry

BIN = Path(sys.executable).parent
# Long enough that a greedy stream from the tiny model (which never emits EOS) runs for
# seconds, so cancel/disconnect/busy tests have something to interrupt.
LONG_CTX = 8192 + 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """A quantised (Q8_0) llama model with a chat template: exercises the quantised decode."""
    return write_tiny_gguf(models_dir / "tiny-q8.gguf", quant="q8_0", n_ctx_train=16384)


@pytest.fixture(scope="session")
def deep_tiny_model(models_dir: Path) -> Path:
    """A tiny model with 16 layers, for tests that need a generation still running seconds
    later on any CPU: the 2-layer model finishes its context (about 2k tokens at the default
    context, 8k at most) in one to three seconds on a fast CPU, and a worker frees its slot
    when the engine is done, however far behind the client still reads (and Pilot's key
    presses wait up to a second for the dashboard to go idle)."""
    return write_tiny_gguf(models_dir / "tiny-deep.gguf", n_layers=16, n_ctx_train=16384)


@pytest.fixture(scope="session")
def tiny_model_no_template(models_dir: Path) -> Path:
    return write_tiny_gguf(models_dir / "tiny-base.gguf", chat_template=None, n_ctx_train=16384)


@pytest.fixture(scope="session")
def corrupt_model(models_dir: Path) -> Path:
    return write_corrupt_gguf(models_dir / "corrupt.gguf")


@dataclass
class WorkerProcess:
    """A real rbee-worker child process and how to reach it."""

    proc: subprocess.Popen[bytes]
    url: str
    api_key: str | None
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def model_id(self) -> str:
        """The model it serves, as clients name it: its --model, as given."""
        return str(self.proc.args[2])

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while time.monotonic() < deadline:
                body = client.get("/v1/ready").json()
                if body.get("ready"):
                    return
                if body.get("state") == "failed":
                    raise AssertionError(f"worker failed to load: {body}\n{self.log()}")
                time.sleep(0.05)
        raise AssertionError(f"worker not ready after {timeout_s} s\n{self.log()}")

    def stop(self, timeout_s: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_worker(
    model: Path | str,
    log_dir: Path,
    *,
    args: tuple[str, ...] = (),
    api_key: str | None = None,
    wait_ready: bool = True,
) -> WorkerProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RBEE_WORKER_API_KEY"}
    if api_key:
        env["RBEE_WORKER_API_KEY"] = api_key
    log_path = log_dir / f"worker-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(BIN / "rbee-worker"), "--model", str(model), "--port", str(port), *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
    )
    worker = WorkerProcess(proc, f"http://127.0.0.1:{port}", api_key, log_path, log_file)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{worker.url}/health", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker did not start\n{worker.log()}") from None
                time.sleep(0.05)
        if wait_ready:
            worker.wait_ready()
    except BaseException:
        worker.stop()  # a worker that did not come up in time is not left running
        raise
    return worker


def sse_data(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def events_of(lines: list[str]) -> list[dict]:
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def start_long_stream(
    worker: WorkerProcess,
    request_id: str,
    got_token: threading.Event,
    result: dict,
    *,
    prompt: str = "Once upon a time",
) -> threading.Thread:
    """Starts a greedy 8192-token stream in a thread; `result` gets status and events at the end."""

    def run() -> None:
        with (
            worker.client() as client,
            client.stream(
                "POST",
                "/v1/inference",
                json={
                    "prompt": prompt,
                    "max_tokens": 8192,
                    "temperature": 0,
                    "request_id": request_id,
                },
            ) as r,
        ):
            result["status"] = r.status_code
            lines = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                    got_token.set()
            result["events"] = events_of(lines)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[object]:
    """Starts workers for one test and stops them (SIGTERM, then SIGKILL) afterwards."""
    started: list[WorkerProcess] = []

    def spawn(model: Path | str, *args: str, **kwargs: object) -> WorkerProcess:
        worker = start_worker(model, tmp_path, args=args, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def shared_worker(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One keyed, two-slot worker on the tiny model, for the tests that leave it as they found
    it."""
    worker = start_worker(
        tiny_model,
        tmp_path_factory.mktemp("shared-worker"),
        args=("--slots", "2", "--ctx-size", str(LONG_CTX)),
        api_key="test-key-0123456789",
    )
    yield worker
    worker.stop()


@pytest.fixture
def server() -> Iterator[ModelServer]:
    """A loopback stand-in for the internet's model hosts (and the hub's file paths)."""
    with ModelServer() as s:
        yield s


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A tiny model's bytes, for a server to serve (about 70 kB)."""
    path = tmp_path_factory.mktemp("blobs") / "tiny.gguf"
    return write_tiny_gguf(path, n_layers=1, n_embd=8).read_bytes()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[WorkerRegistry]:
    """The keeper's worker registry in a fresh $RBEE_HOME-like folder."""
    registry = WorkerRegistry(tmp_path / "home" / "workers.db")
    yield registry
    registry.close()
