"""What the keeper says when things go wrong, and what its registry shows afterwards: EC1
over SSH, a worker that crashes while loading, --backend, the inventory's idle timeout, and
`rbee workers list` / `health` telling what is true now. Real hives, workers and sshd."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.hive_process import start_hive
from support.inventories import CLOSED_PORT, unreachable_node
from support.operators import Keeper, Operator, make_keeper, node_table
from support.registry import register_worker
from support.sshd import start_sshd
from support.tinymodel import write_tiny_gguf
from test_fleet import rbee

from rbee.control.keeper.worker_registry import WorkerRegistry


def write_crashing_gguf(path: Path) -> Path:
    """A tiny model whose vocab holds one token twice: llama.cpp's loader aborts on it
    (GGML_ASSERT id_to_token.size() == token_to_id.size()), a real crash while loading."""
    write_tiny_gguf(path)
    data = path.read_bytes()
    assert data.count(b"<0x0B>") == 1
    path.write_bytes(data.replace(b"<0x0B>", b"<0x0A>"))
    return path


def attempt_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Attempt " in line]


def assert_fits_80_columns(stderr: str) -> None:
    assert max(map(len, stderr.splitlines())) <= 80, stderr


def hive_pid(keeper: Keeper) -> int:
    return int((keeper.state_dir / "hive.pid").read_text().split()[0])


@pytest.fixture
def keeper(tmp_path: Path, tiny_model: Path) -> Iterator[Keeper]:
    k = make_keeper(tmp_path, tiny_model)
    yield k
    k.stop_hive()


# ----------------------------------------------------------------- EC1 over SSH


def test_ec1_over_ssh_refused_three_attempts_then_the_words(tmp_path: Path) -> None:
    operator = Operator(tmp_path, unreachable_node("gone", tmp_path / "known_hosts"))
    infer = operator.rbee("infer", "--node", "gone", "hello")
    assert infer.returncode == 1
    assert attempt_lines(infer.stderr) == [
        f"Attempt {n}: Connecting to 127.0.0.1:{CLOSED_PORT}... (timeout 10s)" for n in (1, 2, 3)
    ]
    assert f"Error: Cannot connect to 127.0.0.1:{CLOSED_PORT} after 3 attempts" in infer.stderr
    assert f"Suggestion: Check if sshd is running on gone (port {CLOSED_PORT})" in infer.stderr

    up = operator.rbee("ssh-up", "--no-install", "gone")  # several nodes: lines say which
    assert up.returncode == 1
    assert not attempt_lines(up.stderr)  # a log of many nodes: the outcome, not every step
    assert f"gone: Error: Cannot connect to 127.0.0.1:{CLOSED_PORT} after 3 attempts" in up.stderr
    assert up.stderr.splitlines()[-1] == "0 up, 1 failed: gone (refused)"
    for result in (infer, up):
        assert "Traceback" not in result.stderr
        assert_fits_80_columns(result.stderr)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a wedged sshd)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_ec1_over_ssh_silent_node(tmp_path: Path, silent_port: int) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    operator = Operator(
        tmp_path,
        f'[nodes.mute]\nhost = "127.0.0.1"\nport = {silent_port}\n'
        f'known_hosts = "{known_hosts}"\nuse_ssh_config = false\n'
        "connect_timeout_s = 0.5\n",
    )
    started = time.monotonic()
    result = operator.rbee("infer", "--node", "mute", "hello")
    assert time.monotonic() - started >= 3 * 0.5 + 0.2 + 0.4
    assert result.returncode == 1
    assert len(attempt_lines(result.stderr)) == 3
    assert "(timeout 0.5s)" in attempt_lines(result.stderr)[0]
    assert f"Error: Cannot connect to 127.0.0.1:{silent_port} after 3 attempts" in result.stderr
    assert "SSH: no answer within 0.5 s" in result.stderr
    assert "Suggestion: Check if mute is up and reachable from here" in result.stderr
    assert_fits_80_columns(result.stderr)


def test_ssh_up_passes_the_idle_timeout_and_a_changed_host_key_is_not_retried(
    tmp_path: Path,
) -> None:
    node = start_sshd(tmp_path / "sshd", "alpha")
    operator = Operator(
        tmp_path,
        "[defaults]\nidle_timeout_s = 7\n\n" + node_table("alpha", node, tmp_path / "alpha-hive"),
    )
    try:
        up = operator.rbee("ssh-up", "--no-install", "alpha")
        assert up.returncode == 0, up.stderr
        [port] = re.findall(r"hive_port = (\d+)", operator.inventory.read_text())
        report = httpx.get(f"http://127.0.0.1:{port}/v1/workers/list", timeout=10).json()
        assert report["idle_timeout_s"] == 7
        assert operator.rbee("ssh-down", "alpha").returncode == 0

        node.rotate_host_key()  # not a connection failure: retrying cannot fix it
        result = operator.rbee("infer", "--node", "alpha", "hello")
        assert result.returncode == 1
        assert "Host key verification failed" in result.stderr
        assert [line.split(":")[0] for line in attempt_lines(result.stderr)] == ["Attempt 1"]
    finally:
        node.stop()


# ----------------------------------------------------------------- loading, backends


def test_a_worker_that_crashes_while_loading_is_named_and_forgotten(tmp_path: Path) -> None:
    keeper = make_keeper(tmp_path, write_crashing_gguf(tmp_path / "crash.gguf"))
    try:
        result = keeper.infer("hello")
        report = httpx.get(
            f"{keeper.hive_url}/v1/workers/list", headers=keeper.hive_headers()
        ).json()
    finally:
        keeper.stop_hive()
    assert result.returncode == 1, result.stderr
    assert "Error: The worker crashed while loading the model on local" in result.stderr
    assert re.search(r"worker-\w+: its process exited with code -6", result.stderr)
    assert "Last lines of its log:" in result.stderr
    unwrapped = " ".join(result.stderr.split())  # the log's lines come wrapped to 80 columns
    assert "GGML_ASSERT(id_to_token.size() == token_to_id.size()) failed" in unwrapped
    assert (
        "Suggestion: the model may be damaged or unsupported; `rbee logs --node local`"
        in result.stderr
    )
    assert "lost contact" not in result.stderr and "Traceback" not in result.stderr
    assert_fits_80_columns(result.stderr)
    assert keeper.registered() == [] and report["workers"] == []


def test_backend_flag_and_the_suggestion_that_names_it(keeper: Keeper) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build has a GPU backend: cuda would be available")
    result = keeper.infer("hello", "--backend", "cuda")
    assert result.returncode == 1
    assert "Error: Cuda backend not available on this node (available: cpu)" in result.stderr
    assert (
        'Suggestion: use --backend cpu, or backend = "cpu" for local in the inventory'
        in result.stderr
    )
    assert_fits_80_columns(result.stderr)
    unknown = keeper.infer("hello", "--backend", "vulkan")
    assert unknown.returncode == 2 and "'--backend'" in unknown.stderr


# ----------------------------------------------------------------- the registry, now


def test_idle_timeout_from_the_inventory_and_the_list_after_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    keeper = make_keeper(tmp_path, tiny_model, node_extra="idle_timeout_s = 1.5\n")
    hive = f"http://127.0.0.1:{keeper.port}"
    try:
        assert keeper.infer("hello", "--max-tokens", "2").returncode == 0
        assert (
            httpx.get(f"{hive}/v1/workers/list", headers=keeper.hive_headers()).json()[
                "idle_timeout_s"
            ]
            == 1.5
        )
        deadline = time.monotonic() + 30
        while httpx.get(f"{hive}/v1/workers/list", headers=keeper.hive_headers()).json()["workers"]:
            assert time.monotonic() < deadline, "the worker did not idle out"
            time.sleep(0.2)
        assert len(keeper.registered()) == 1  # the keeper has not looked yet
        listed = rbee(keeper, "workers", "list")
    finally:
        keeper.stop_hive()
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "No workers registered"
    assert keeper.registered() == []


def test_workers_list_and_health_tell_what_is_true_now(tmp_path: Path, tiny_model: Path) -> None:
    keeper = make_keeper(tmp_path, tiny_model)
    try:
        assert keeper.infer("hello", "--max-tokens", "2").returncode == 0
        [registered] = keeper.registered()
        worker_id = registered["worker_id"]
        [listed] = httpx.get(
            f"{keeper.hive_url}/v1/workers/list", headers=keeper.hive_headers()
        ).json()["workers"]

        as_json = rbee(keeper, "workers", "list", "-o", "json")
        assert as_json.returncode == 0, as_json.stderr
        [row] = json.loads(as_json.stdout)
        assert (row["worker_id"], row["node"], row["state"]) == (worker_id, "local", "idle")
        assert "api_key" not in row and registered["api_key"] not in as_json.stdout

        # A frozen worker: its hive still lists it idle; asked itself, it does not answer.
        os.kill(listed["pid"], signal.SIGSTOP)
        try:
            health = rbee(keeper, "workers", "health", "--node", "local")
        finally:
            os.kill(listed["pid"], signal.SIGCONT)
        assert health.returncode == 0, health.stderr
        assert f"✗ {worker_id} - not answering (its hive last saw it idle)" in health.stdout
        assert f"✓ {worker_id} - idle (ready: true)" in rbee(keeper, "workers", "health").stdout

        # A frozen hive: the list still ends, the state unknown rather than the last one seen.
        pid = hive_pid(keeper)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = rbee(keeper, "workers", "list")
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert frozen.returncode == 0, frozen.stderr
        assert worker_id in frozen.stdout and "unknown (node not answering)" in frozen.stdout
        assert took < 15
        assert len(keeper.registered()) == 1  # kept: the node may come back

        down = rbee(keeper, "ssh-down", "local")
        assert down.returncode == 0, down.stderr
        assert keeper.registered() == []  # its workers stopped with the hive
        assert rbee(keeper, "workers", "list").stdout.strip() == "No workers registered"
    finally:
        keeper.stop_hive()


def test_workers_list_names_a_refused_key_and_forgets_the_workers_of_a_hive_that_is_down(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A hive that refuses our key: the worker's row stays, saying so (not "not answering").
    A hive that refuses connections is down: its workers died with it and leave the registry."""
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_text("a-wrong-key")
    wrong_key.chmod(0o600)
    keeper = make_keeper(tmp_path, tiny_model, node_extra=f'api_key_file = "{wrong_key}"\n')
    registry = WorkerRegistry(keeper.home / "workers.db")
    register_worker(registry, "w-1", f"file:{tiny_model}", "http://127.0.0.1:9")
    registry.close()
    hive = start_hive(keeper.state_dir, api_key="the-right-key")
    try:
        keeper.inventory.write_text(
            keeper.inventory.read_text().replace(
                f"hive_port = {keeper.port}", f"hive_port = {hive.url.rsplit(':', 1)[1]}"
            )
        )
        refused = rbee(keeper, "workers", "list")
    finally:
        hive.stop()
    assert refused.returncode == 0, refused.stderr
    assert "w-1" in refused.stdout and "unknown (auth failed)" in refused.stdout
    assert [w["worker_id"] for w in keeper.registered()] == ["w-1"]

    down = rbee(keeper, "workers", "list")  # the hive stopped: its port refuses connections
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "No workers registered"
    assert keeper.registered() == []
