"""rbee-worker's command line: refusals before anything starts, keys kept out of sight."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, WorkerProcess


def run_worker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rbee-worker"), *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_version() -> None:
    result = run_worker("--version")
    assert result.returncode == 0 and "0.1.0" in result.stdout


def test_refuses_a_public_address_without_a_key(tiny_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RBEE_WORKER_API_KEY"}
    result = run_worker("--model", str(tiny_model), "--host", "0.0.0.0", env=env)
    assert result.returncode == 2
    assert "RBEE_WORKER_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("/nonexistent/model.gguf", "no such model file"),
        ("pkg:nope", "unknown bundled model"),
        ("https://example.invalid/x.gguf", "through the hive"),
        ("hf:org/repo:x.gguf", "through the hive"),
    ],
)
def test_bad_model_refs_are_clear_errors(model: str, says: str) -> None:
    result = run_worker("--model", model)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(shared_worker: WorkerProcess, tiny_model: Path) -> None:
    port = shared_worker.url.rsplit(":", 1)[1]
    result = run_worker("--model", str(tiny_model), "--port", port)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_key_is_not_in_argv_or_the_log(spawn_worker, tiny_model: Path) -> None:
    key = "secret-key-for-proc-check"
    worker = spawn_worker(tiny_model, api_key=key)
    with worker.client() as client:
        assert client.get("/v1/ready").json()["ready"]
        assert client.get("/v1/ready", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert key not in Path(f"/proc/{worker.proc.pid}/cmdline").read_text()  # what `ps` shows
    assert key not in worker.log()


def test_sigint_shuts_down_cleanly(spawn_worker, tiny_model: Path) -> None:
    worker = spawn_worker(tiny_model)
    worker.proc.send_signal(signal.SIGINT)
    assert worker.proc.wait(15) == 0
    assert "Traceback" not in worker.log()
