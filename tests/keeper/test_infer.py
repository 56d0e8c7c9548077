"""`rbee infer` on the local node, as a person runs it: the console script in a subprocess,
a real hive it starts itself, real workers on a tiny model, and the edge cases' exact words."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from conftest import BIN
from support.hive_process import start_hive
from support.model_server import ModelServer
from support.operators import Keeper, make_keeper
from support.tinymodel import write_tiny_gguf

from rbee.control.hive.settings import KEY_FILE
from rbee.control.keeper.worker_registry import WorkerRegistry


@pytest.fixture
def keeper(tmp_path: Path, tiny_model: Path):
    k = make_keeper(tmp_path, tiny_model)
    yield k
    k.stop_hive()


def test_cold_then_warm(keeper: Keeper) -> None:
    cold = keeper.infer("Once upon a time", "--max-tokens", "12", "--temperature", "0")
    assert cold.returncode == 0, cold.stderr
    assert "Started the hive on local." in cold.stderr
    assert "It keeps running for the next answer: `rbee ssh-down local` stops it." in cold.stderr
    assert "Attempt 1: Connecting to 127.0.0.1:" in cold.stderr
    assert "Model ready!" in cold.stderr
    answer = cold.stdout
    assert answer.strip() and "Model ready" not in answer  # stdout holds only the answer
    [worker] = keeper.registered()
    assert worker["node"] == "local" and worker["state"] == "idle"
    assert (keeper.home / "workers.db").stat().st_mode & 0o777 == 0o600

    warm = keeper.infer("Once upon a time", "--max-tokens", "12", "--temperature", "0")
    assert warm.returncode == 0, warm.stderr
    assert "Attempt 1" not in warm.stderr and "Model ready" not in warm.stderr
    assert warm.stdout == answer


def test_missing_rbee_install_is_named(tmp_path: Path, tiny_model: Path) -> None:
    keeper = make_keeper(tmp_path, tiny_model, rbee_path=tmp_path / "nowhere")
    result = keeper.infer("hello")
    assert result.returncode == 1
    assert (
        f"Error: rbee is not installed on local: there is no {tmp_path}/nowhere/rbee-hive"
        in result.stderr
    )
    assert "Suggestion: set rbee_path for node local" in result.stderr
    assert "Traceback" not in result.stderr


def test_ec1_hive_that_cannot_start_is_unreachable(tmp_path: Path, tiny_model: Path) -> None:
    broken = tmp_path / "broken-install"
    broken.mkdir()
    (broken / "rbee-hive").write_text("#!/bin/sh\necho 'rbee-hive: broken install' >&2\nexit 1\n")
    (broken / "rbee-hive").chmod(0o755)
    keeper = make_keeper(tmp_path, tiny_model, rbee_path=broken)
    result = keeper.infer("hello")
    assert result.returncode == 1
    port = keeper.port
    for attempt in (1, 2, 3):
        assert (
            f"Attempt {attempt}: Connecting to 127.0.0.1:{port}... (timeout 10s)" in result.stderr
        )
    assert f"Error: Cannot connect to 127.0.0.1:{port} after 3 attempts" in result.stderr
    assert "Suggestion: Check if rbee-hive is running on local" in result.stderr
    assert "rbee ssh-up local" in result.stderr


def test_ec3_insufficient_ram(tmp_path: Path, tiny_model: Path) -> None:
    keeper = make_keeper(tmp_path, tiny_model)
    big = tmp_path / "big.gguf"
    big.write_bytes(tiny_model.read_bytes() + b"\0" * (3 << 20))
    keeper.model = big
    hive = start_hive(keeper.state_dir, "--ram-budget-mb", "1")
    try:
        keeper.inventory.write_text(
            keeper.inventory.read_text().replace(
                f"hive_port = {keeper.port}", f"hive_port = {hive.url.rsplit(':', 1)[1]}"
            )
        )
        result = keeper.infer("hello")
    finally:
        hive.stop()
    assert result.returncode == 1
    assert "Error: Insufficient RAM on local" in result.stderr
    assert "Required: " in result.stderr and "Available: 1 MB" in result.stderr
    assert "Suggestion: Try a smaller quantized model (Q4 instead of Q8)" in result.stderr


def test_a_model_trained_on_a_short_context_runs(tmp_path: Path) -> None:
    """rbee sends no ctx_size the person did not ask for: the hive runs the model at its
    trained context (1024 here) instead of refusing a 2048 nobody typed."""
    short = write_tiny_gguf(tmp_path / "short-ctx.gguf", n_ctx_train=1024)
    keeper = make_keeper(tmp_path, short)
    try:
        result = keeper.infer("hello", "--max-tokens", "2")
    finally:
        keeper.stop_hive()
    assert result.returncode == 0, result.stderr
    assert "ctx_size" not in result.stderr


def test_a_key_from_the_environment_stays_out_of_the_hives(
    tmp_path: Path, tiny_model: Path
) -> None:
    """api_key_env: the keeper hands the hive its key in a 0600 file, never in its
    environment (readable in /proc/PID/environ for the process's whole life)."""
    key = "env-key-0123456789abcdef"
    keeper = make_keeper(tmp_path, tiny_model, node_extra='api_key_env = "RBEE_LOCAL_KEY"\n')
    try:
        result = keeper.infer("hello", "--max-tokens", "2", RBEE_LOCAL_KEY=key)
        assert result.returncode == 0, result.stderr
        hive_pid = int((keeper.state_dir / "hive.pid").read_text().split()[0])
        environ = Path(f"/proc/{hive_pid}/environ").read_bytes()
        assert key.encode() not in environ and b"RBEE_LOCAL_KEY" not in environ
        key_file = keeper.state_dir / KEY_FILE
        assert key_file.read_text() == key and key_file.stat().st_mode & 0o777 == 0o600
        assert httpx.get(f"{keeper.hive_url}/v1/workers/list").status_code == 401
    finally:
        keeper.stop_hive()


def test_ec4_worker_crash_mid_stream_keeps_the_tokens(keeper: Keeper) -> None:
    assert keeper.infer("warm up", "--max-tokens", "2").returncode == 0
    [worker] = keeper.registered()
    pid = next(
        w["pid"]
        for w in httpx.get(
            f"{keeper.hive_url}/v1/workers/list", headers=keeper.hive_headers()
        ).json()["workers"]
    )
    proc = keeper.popen("Once upon a time", "--max-tokens", "8000", "--temperature", "0")
    first = proc.stdout.read(20)  # tokens are flowing
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Error: SSE stream closed unexpectedly" in err
    [partial] = (keeper.home / "partial").iterdir()  # SPEC: ~/.rbee/partial/<id>.txt
    assert re.fullmatch(r"req-[0-9a-f]{16}\.txt", partial.name)
    assert f"Partial result saved to: {partial}" in err
    assert partial.read_text().startswith(first)
    assert partial.stat().st_mode & 0o777 == 0o600  # an answer may be as private as its prompt
    assert partial.parent.stat().st_mode & 0o777 == 0o700
    generated = int(err.split("Tokens generated: ")[1].split(" / ")[0])
    assert 0 < generated < 8000 and "/ 8000" in err
    assert keeper.registered() == []


def test_ec5_ctrl_c_cancels_on_the_worker(keeper: Keeper) -> None:
    assert keeper.infer("warm up", "--max-tokens", "2").returncode == 0
    proc = keeper.popen("Once upon a time", "--max-tokens", "8000", "--temperature", "0")
    proc.stdout.read(20)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Canceled." in err
    [worker] = keeper.registered()
    deadline = time.monotonic() + 1.0  # SPEC: canceled within 200 ms; slack for a busy CPU
    while httpx.get(f"{worker['url']}/health").json()["slots_busy"] != 0:
        assert time.monotonic() < deadline, "the worker kept generating after Canceled."
        time.sleep(0.02)


def test_ec6_busy_worker_retries_then_stops(keeper: Keeper) -> None:
    assert keeper.infer("warm up", "--max-tokens", "2").returncode == 0
    # A one-slot worker with room for a stream long enough to outlast the retries.
    spawned = httpx.post(
        f"{keeper.hive_url}/v1/workers/spawn",
        timeout=60,
        headers=keeper.hive_headers(),
        json={"model_ref": f"file:{keeper.model}", "ctx_size": 8256},
    ).json()
    auth = {"Authorization": f"Bearer {spawned['api_key']}"}
    registry = WorkerRegistry(keeper.home / "workers.db")
    [old] = registry.list()
    registry.remove(old.worker_id)
    registry.record(
        replace(
            old,
            worker_id=spawned["worker_id"],
            url=spawned["url"],
            api_key=spawned["api_key"],
            last_health_check=time.time(),
        )
    )
    registry.close()
    holding, stop = threading.Event(), threading.Event()

    def hold_the_only_slot() -> None:
        with httpx.Client(headers=auth, timeout=60) as client:
            while not stop.is_set():
                with client.stream(
                    "POST",
                    f"{spawned['url']}/v1/inference",
                    json={
                        "prompt": "Once upon a time",
                        "max_tokens": 8192,
                        "temperature": 0,
                        "request_id": "req-hold",
                    },
                ) as r:
                    for _ in r.iter_lines():
                        holding.set()
                        if stop.is_set():
                            break

    thread = threading.Thread(target=hold_the_only_slot)
    thread.start()
    assert holding.wait(30)
    result = keeper.infer("hello", "--retry", "1")
    stop.set()
    httpx.delete(f"{spawned['url']}/v1/inference/req-hold", headers=auth)
    thread.join(30)
    assert result.returncode == 1, result.stderr
    assert "Worker is busy, retrying in 1 second..." in result.stderr
    assert "Error: Worker still busy after 1 retry" in result.stderr
    assert (
        "Suggestion: Wait for current request to complete or use a different node" in result.stderr
    )


def test_ec9_wrong_api_key_names_the_node_and_where_the_key_lives(
    tmp_path: Path, tiny_model: Path
) -> None:
    keeper = make_keeper(tmp_path, tiny_model, node_extra='api_key_env = "RBEE_LOCAL_KEY"\n')
    key_file = tmp_path / "hive.key"
    key_file.write_text("the-right-key")
    key_file.chmod(0o600)
    hive = start_hive(keeper.state_dir, api_key="the-right-key")
    try:
        keeper.inventory.write_text(
            keeper.inventory.read_text().replace(
                f"hive_port = {keeper.port}", f"hive_port = {hive.url.rsplit(':', 1)[1]}"
            )
        )
        result = keeper.infer("hello", RBEE_LOCAL_KEY="a-wrong-key")
    finally:
        hive.stop()
    assert result.returncode == 1
    assert "Error: Authentication failed" in result.stderr
    assert "Invalid API key for 127.0.0.1:" in result.stderr
    assert "$RBEE_LOCAL_KEY" in result.stderr
    assert "a-wrong-key" not in result.stderr and "the-right-key" not in result.stderr


def test_ec10_after_the_idle_timeout_a_new_worker_starts(tmp_path: Path, tiny_model: Path) -> None:
    keeper = make_keeper(tmp_path, tiny_model)
    hive = start_hive(keeper.state_dir, "--idle-timeout-s", "1", "--health-interval-s", "0.5")
    try:
        keeper.inventory.write_text(
            keeper.inventory.read_text().replace(
                f"hive_port = {keeper.port}", f"hive_port = {hive.url.rsplit(':', 1)[1]}"
            )
        )
        assert keeper.infer("hello", "--max-tokens", "3").returncode == 0
        deadline = time.monotonic() + 20
        while httpx.get(f"{hive.url}/v1/workers/list").json()["workers"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        again = keeper.infer("hello", "--max-tokens", "3")
    finally:
        hive.stop()
    assert again.returncode == 0, again.stderr
    assert "No idle worker found, starting new worker..." in again.stderr
    assert "Model ready!" in again.stderr


def test_bad_input_is_refused_before_any_network_call(keeper: Keeper) -> None:
    unknown = keeper.infer("hello", "--node", "nope")
    assert unknown.returncode == 2 and 'unknown node "nope"' in unknown.stderr
    bad_model = subprocess.run(
        [str(BIN / "rbee"), "infer", "--model", "hf:../../x", "hi"],
        capture_output=True,
        text=True,
        env=keeper.env(),
    )
    assert bad_model.returncode == 2 and "hf:" in bad_model.stderr
    assert not (keeper.state_dir / "hive.pid").exists()  # no hive was started
    for result in (unknown, bad_model):
        assert "Traceback" not in result.stderr


@pytest.mark.bundled
def test_ec7_loading_timeout_names_where_it_stopped(tmp_path: Path, tiny_model: Path) -> None:
    keeper = make_keeper(tmp_path, tiny_model)
    try:
        # The bundled model takes well over 0.2 s to load (a second or more here).
        result = subprocess.run(
            [str(BIN / "rbee"), "infer", "--model", "pkg:gemma3-270m", "--timeout", "0.2", "hello"],
            capture_output=True,
            text=True,
            timeout=120,
            env=keeper.env(),
        )
    finally:
        keeper.stop_hive()
    assert result.returncode == 1, result.stderr
    assert "Error: Model loading timeout after 0.2 seconds" in result.stderr
    assert "Worker state: loading" in result.stderr
    assert "Suggestion: Check worker logs on local for errors" in result.stderr


def test_ec2_download_failure_after_6_attempts(keeper: Keeper) -> None:
    with ModelServer() as internet:
        url = internet.add("/models/gone.gguf", b"", status=503)
        result = subprocess.run(
            [str(BIN / "rbee"), "infer", "--model", url, "hello"],
            capture_output=True,
            text=True,
            timeout=120,
            env=keeper.env(),
        )
        assert internet.count("/models/gone.gguf") == 6
    assert result.returncode == 1
    assert "Retrying download (attempt 2/6)... delay 100ms" in result.stderr
    assert "Retrying download (attempt 6/6)... delay 1600ms" in result.stderr
    assert "Error: Failed to download model after 6 attempts" in result.stderr


def test_another_server_on_the_hive_port_is_named(tmp_path: Path, tiny_model: Path) -> None:
    with ModelServer() as stranger:  # any HTTP server that is not a hive
        keeper = make_keeper(tmp_path, tiny_model)
        port = stranger.url.rsplit(":", 1)[1]
        keeper.inventory.write_text(
            keeper.inventory.read_text().replace(
                f"hive_port = {keeper.port}", f"hive_port = {port}"
            )
        )
        result = keeper.infer("hello")
    assert result.returncode == 1
    assert f"Error: Something other than rbee-hive answers at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
