"""schemathesis against the hive's and the worker's own OpenAPI documents: no input, however
odd, gets a 5xx. Real processes, seeded, bounded in cases and time, loopback only."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, WorkerProcess, free_port, start_worker
from support.hive_process import HiveProcess, start_hive

KEY = "fuzz-key-0123456789"
CASES_PER_OPERATION = 25
TIME_BUDGET_S = 240  # the whole run, a bound rather than a budget


def nowhere() -> dict[str, str]:
    """Every outgoing request of the fuzzed hive (fuzzed https: and hf: refs download) goes
    to a closed loopback port: nothing leaves the machine, not even a DNS lookup."""
    dead = f"http://127.0.0.1:{free_port()}"
    return {
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "ALL_PROXY": dead,
        "NO_PROXY": "",
        "http_proxy": dead,
        "https_proxy": dead,
        "all_proxy": dead,
        "no_proxy": "",
        "HF_ENDPOINT": dead,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def fuzz(url: str, tmp_path: Path, *excluded_paths: str, busy_is_fine: bool = False) -> str:
    config = tmp_path / "schemathesis.toml"
    # A stream the fuzzer abandons holds its slot until the worker notices the disconnect, so
    # the next request may get 503 ALL_SLOTS_BUSY: capacity, said as the contract says it.
    allowed = '"2XX", "3XX", "4XX", "503"' if busy_is_fine else '"2XX", "3XX", "4XX"'
    config.write_text(f"[checks.not_a_server_error]\nexpected-statuses = [{allowed}]\n")
    argv = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(CASES_PER_OPERATION),
        "--seed",
        "7",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    for path in excluded_paths:
        argv += ["--exclude-path", path]
    run = subprocess.run(
        argv, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=TIME_BUDGET_S
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    return run.stdout


@pytest.fixture
def keyed_hive(tmp_path: Path) -> Iterator[HiveProcess]:
    hive = start_hive(tmp_path / "hive", api_key=KEY, env=nowhere())
    yield hive
    hive.stop()


def test_the_hive_answers_every_fuzzed_request_without_a_5xx(
    keyed_hive: HiveProcess, tmp_path: Path
) -> None:
    # /v1/logs with follow=true streams until the client leaves: nothing to fuzz there.
    out = fuzz(keyed_hive.url, tmp_path, "/v1/logs")
    assert "Traceback" not in keyed_hive.log()
    assert "passed" in out.lower()


@pytest.fixture
def fuzzed_worker(tiny_model: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    # A small context keeps each fuzzed generation short (max_tokens is clipped by it).
    worker = start_worker(tiny_model, tmp_path, args=("--ctx-size", "96"), api_key=KEY)
    yield worker
    worker.stop()


def test_the_worker_answers_every_fuzzed_request_without_a_5xx(
    fuzzed_worker: WorkerProcess, tmp_path: Path
) -> None:
    # Shutdown would end the run; the rest is fair game.
    out = fuzz(fuzzed_worker.url, tmp_path, "/v1/admin/shutdown", busy_is_fine=True)
    assert "Traceback" not in fuzzed_worker.log()
    assert "passed" in out.lower()
