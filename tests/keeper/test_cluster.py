"""rbee.control.keeper.cluster against real hives, workers and sshd: the data the CLI and the
dashboard show, and the actions they take."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest

from support.hive_process import HiveProcess, start_hive
from support.inventories import local_node, unreachable_node, write_inventory
from support.model_server import ModelServer

from rbee.control.keeper import cluster
from rbee.control.keeper.cluster import HiveState, InferRequest, InferStream, StreamStats
from rbee.control.keeper.console import ActionableError
from rbee.control.keeper.worker_registry import WorkerRegistry


@pytest.fixture
def hive(tmp_path: Path) -> Iterator[HiveProcess]:
    process = start_hive(tmp_path / "hive", "--idle-timeout-s", "600")
    yield process
    process.stop()


def _port(hive: HiveProcess) -> int:
    return int(hive.url.rsplit(":", 1)[1])


class Collector:
    """A StreamListener that keeps everything it hears."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.tokens: list[str] = []
        self.last_stats = StreamStats()
        self.errors: list[ActionableError] = []

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def token(self, text: str, stats: StreamStats) -> None:
        self.tokens.append(text)
        self.last_stats = stats

    def failed(self, error: ActionableError) -> None:
        self.errors.append(error)


T = TypeVar("T")


async def _until(check: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while not (result := await check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
    return result


def test_a_local_node_through_spawn_stream_cancel_and_shutdown(
    tmp_path: Path, hive: HiveProcess, tiny_model: Path, registry: WorkerRegistry
) -> None:
    inventory = write_inventory(
        tmp_path / "inventory.toml", local_node("local", _port(hive), hive.state_dir)
    )
    node = inventory.get("local")
    ref = f"file:{tiny_model}"

    async def scenario() -> None:
        empty = await cluster.probe_node(node, registry)
        assert empty.state is HiveState.UP and empty.version == "0.1.0"
        assert empty.workers == () and empty.ram_available_mb and empty.ram_available_mb > 0

        worker_id = await cluster.spawn_worker(node, ref, registry)
        assert registry.get(worker_id) is not None

        async def serving() -> cluster.NodeStatus | None:
            status = await cluster.probe_node(node, registry)
            return status if status.workers and status.workers[0].state == "idle" else None

        status = await _until(serving)
        [worker] = status.workers
        assert (worker.worker_id, worker.model_ref, worker.slots_total) == (worker_id, ref, 1)
        assert worker.idle_timeout_s == 600 and worker.last_tokens_per_s is None
        assert worker.idle_left_s is not None and 0 < worker.idle_left_s <= 600
        assert status.models == (ref,)
        assert registry.get(worker_id).last_health_check is not None  # warm for infer

        heard = Collector()
        request = InferRequest(
            prompt="Once upon a time", model_ref=ref, max_tokens=12, temperature=0
        )
        stream = InferStream(node, request, registry, heard)
        assert await stream.run() == 0, [e.in_words() for e in heard.errors]
        assert len(heard.tokens) == 12 and heard.last_stats.tokens == 12
        assert heard.last_stats.ttft_s is not None and heard.last_stats.ttft_s > 0
        assert heard.last_stats.tokens_per_s is not None and heard.last_stats.tokens_per_s > 0
        assert "Starting" not in " ".join(heard.statuses)  # the spawned worker was used
        after = await cluster.probe_node(node, registry)
        assert after.workers[0].last_tokens_per_s is not None  # worker /health's new field

        long = InferStream(
            node,
            InferRequest(prompt="Once upon a time", model_ref=ref, max_tokens=2000, temperature=0),
            registry,
            heard := Collector(),
        )
        running = asyncio.ensure_future(long.run())
        await _until(lambda: asyncio.sleep(0, result=len(heard.tokens) > 0))
        long.cancel()
        assert await asyncio.wait_for(running, 10) == 130
        assert "Canceled." in heard.statuses

        assert await cluster.shutdown_worker(node, worker_id, registry) == "stopped"
        assert registry.get(worker_id) is None
        assert (await cluster.probe_node(node, registry)).workers == ()

        lines = await cluster.recent_logs(node)
        assert any(worker_id in str(line) for line in lines)

    asyncio.run(scenario())


def test_download_reports_and_lands_in_the_catalog(
    tmp_path: Path, hive: HiveProcess, tiny_model: Path
) -> None:
    node = write_inventory(
        tmp_path / "inventory.toml", local_node("local", _port(hive), hive.state_dir)
    ).get("local")
    data = tiny_model.read_bytes()
    steps: list[cluster.DownloadProgress] = []

    async def scenario(url: str) -> None:
        path = await cluster.download_model(node, url, steps.append)
        assert Path(path).read_bytes() == data
        assert url in [m.reference for m in await cluster.list_models(node)]
        with pytest.raises(ActionableError) as missing:
            await cluster.download_model(node, f"file:{tmp_path}/absent.gguf", steps.append)
        assert "absent.gguf" in missing.value.in_words()

    with ModelServer() as internet:  # a loopback stand-in, throttled to about half a second
        asyncio.run(scenario(internet.add("/m/tiny.gguf", data, bytes_per_s=len(data) * 2)))
    fractions = [s.fraction for s in steps if s.stage == "downloading"]
    assert fractions and all(f is not None and 0 <= f <= 1 for f in fractions)
    assert steps[-1].stage == "complete"


class LoopbackAnswer:
    """A loopback server giving every GET one answer: a stand-in for another release of
    rbee-hive (only its health answer), or for a stranger on the hive's port."""

    def __init__(self, body: bytes) -> None:

        class Health(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_states_in_words_when_a_node_is_not_up(tmp_path: Path) -> None:
    keyed = start_hive(tmp_path / "keyed", api_key="the-right-key-0123456789")
    older = LoopbackAnswer(
        json.dumps({"status": "alive", "version": "0.2.0", "api_version": "v1"}).encode()
    )
    stranger = LoopbackAnswer(b"<html>a router's admin page</html>")
    try:
        inventory = write_inventory(
            tmp_path / "inventory.toml",
            local_node("down", 1, tmp_path / "down-state"),
            # Not the hive's state dir: rbee makes this node a key of its own, the wrong one.
            local_node("keyed", _port(keyed), tmp_path / "keyed-node-state"),
            unreachable_node("gone", tmp_path / "known_hosts"),
            local_node("old", older.port, tmp_path / "old-state"),
            local_node("stranger", stranger.port, tmp_path / "stranger-state"),
        )
        down, keyed_status, gone, old, other = asyncio.run(
            cluster.probe_nodes(list(inventory.nodes.values()))
        )
    finally:
        keyed.stop()
        older.stop()
        stranger.stop()
    assert other.state is HiveState.DOWN
    assert other.problem == f"something other than rbee-hive answers on port {stranger.port}"
    assert old.state is HiveState.VERSION_MISMATCH and old.version == "0.2.0"
    assert old.problem == "Version mismatch: rbee=0.1.0, rbee-hive=0.2.0"
    assert down.state is HiveState.DOWN and "rbee ssh-up down" in (down.suggestion or "")
    assert keyed_status.state is HiveState.AUTH_FAILED
    assert "Invalid API key for keyed" in (keyed_status.problem or "")
    assert gone.state is HiveState.UNREACHABLE
    assert "Connection refused by 127.0.0.1:1" in (gone.problem or "")
    assert gone.host == "127.0.0.1" and down.host == "local"


def test_ssh_up_and_down_through_a_real_sshd(tmp_path: Path) -> None:
    from support.operators import node_table
    from support.sshd import start_sshd

    sshd = start_sshd(tmp_path / "sshd", "alpha")
    try:
        inventory = write_inventory(
            tmp_path / "inventory.toml", node_table("alpha", sshd, tmp_path / "alpha-hive")
        )
        node = inventory.get("alpha")
        said: list[str] = []

        def logins() -> int:
            return sshd.log().count("Accepted publickey")

        async def scenario() -> None:
            assert (await cluster.probe_node(node)).state is HiveState.DOWN
            assert "up (pid" in await cluster.ssh_up(node, said.append)
            assert (await cluster.probe_node(node)).state is HiveState.UP
            kept = cluster.NodeConnections()
            before = logins()
            for _ in range(3):
                assert (await cluster.probe_node(node, connections=kept)).state is HiveState.UP
            assert logins() == before + 1  # one SSH connection for the three probes
            await kept.aclose()
            assert "stopped" in await cluster.ssh_down(node, said.append)

        asyncio.run(scenario())
        assert "alpha: starting rbee-hive" in said
    finally:
        sshd.stop()
