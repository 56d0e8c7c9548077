"""The keeper's facade (rbee.control.keeper.keeper) against real hives, workers and sshd:
the data the CLI and the dashboard show, the actions they take, and the events they hear."""

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

from rbee.control.keeper import events
from rbee.control.keeper.events import KeeperEvent
from rbee.control.keeper.infer import InferRequest
from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.status import HiveState, NodeStatus
from rbee.control.keeper.words import ActionableError
from rbee.control.keeper.worker_registry import WorkerRegistry


@pytest.fixture
def hive(tmp_path: Path) -> Iterator[HiveProcess]:
    process = start_hive(tmp_path / "hive", "--idle-timeout-s", "600")
    yield process
    process.stop()


def _port(hive: HiveProcess) -> int:
    return int(hive.url.rsplit(":", 1)[1])


class Collector:
    """A listener that keeps everything it hears."""

    def __init__(self) -> None:
        self.heard_events: list[KeeperEvent] = []

    def heard(self, event: KeeperEvent) -> None:
        self.heard_events.append(event)

    @property
    def steps(self) -> list[str]:
        return [e.text for e in self.heard_events if isinstance(e, events.Step)]

    @property
    def tokens(self) -> list[str]:
        return [e.text for e in self.heard_events if isinstance(e, events.Token)]

    @property
    def errors(self) -> list[ActionableError]:
        return [e.error for e in self.heard_events if isinstance(e, events.Failed)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.heard_events]


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

    async def scenario(keeper: Keeper) -> None:
        empty = await keeper.probe(node)
        assert empty.state is HiveState.UP and empty.version == "0.1.0"
        assert empty.workers == () and empty.ram_available_mb and empty.ram_available_mb > 0

        worker_id = await keeper.spawn_worker(node, ref, Collector())
        assert registry.get(worker_id) is not None

        async def serving() -> NodeStatus | None:
            status = await keeper.probe(node)
            return status if status.workers and status.workers[0].state == "idle" else None

        status = await _until(serving)
        [worker] = status.workers
        assert (worker.worker_id, worker.model_ref, worker.slots_total) == (worker_id, ref, 1)
        assert worker.idle_timeout_s == 600 and worker.last_tokens_per_s is None
        assert worker.idle_left_s is not None and 0 < worker.idle_left_s <= 600
        assert status.models == (ref,)
        warm = registry.get(worker_id)
        assert warm is not None and warm.last_health_check is not None  # warm for infer

        heard = Collector()
        request = InferRequest(
            prompt="Once upon a time", model_ref=ref, max_tokens=12, temperature=0
        )
        assert await keeper.infer(node, request, heard).run() == 0, heard.errors
        assert len(heard.tokens) == 12
        # The one event seam, in order: the request, its tokens, the end of the answer.
        kinds = heard.kinds()
        assert kinds.index("RequestSent") < kinds.index("Token") and kinds[-1] == "AnswerEnded"
        assert "Starting" not in " ".join(heard.steps)  # the spawned worker was used
        after = await keeper.probe(node)
        assert after.workers[0].last_tokens_per_s is not None  # worker /health's new field

        long = keeper.infer(
            node,
            InferRequest(prompt="Once upon a time", model_ref=ref, max_tokens=2000, temperature=0),
            heard := Collector(),
        )
        running = asyncio.ensure_future(long.run())
        await _until(lambda: asyncio.sleep(0, result=len(heard.tokens) > 0))
        long.cancel()
        assert await asyncio.wait_for(running, 10) == 130
        assert "Canceled." in heard.steps

        assert await keeper.shutdown_worker(node, worker_id) == "stopped"
        assert registry.get(worker_id) is None
        assert (await keeper.probe(node)).workers == ()

        lines = await keeper.logs(node)
        assert any(worker_id in str(line) for line in lines)

    asyncio.run(_with_keeper(inventory, scenario, registry))


async def _with_keeper(
    inventory: Inventory,
    scenario: Callable[[Keeper], Awaitable[None]],
    registry: WorkerRegistry | None = None,
) -> None:
    async with Keeper(inventory, registry) as keeper:
        await scenario(keeper)


def test_download_reports_and_lands_in_the_catalog(
    tmp_path: Path, hive: HiveProcess, tiny_model: Path
) -> None:
    inventory = write_inventory(
        tmp_path / "inventory.toml", local_node("local", _port(hive), hive.state_dir)
    )
    node = inventory.get("local")
    data = tiny_model.read_bytes()
    heard = Collector()

    async def scenario(url: str, keeper: Keeper) -> None:
        path = await keeper.download_model(node, url, heard)
        assert Path(path).read_bytes() == data
        assert url in [m.reference for m in await keeper.models(node)]
        with pytest.raises(ActionableError) as missing:
            await keeper.download_model(node, f"file:{tmp_path}/absent.gguf", heard)
        assert "absent.gguf" in missing.value.in_words()

    with ModelServer() as internet:  # a loopback stand-in, throttled to about half a second
        url = internet.add("/m/tiny.gguf", data, bytes_per_s=len(data) * 2)
        asyncio.run(_with_keeper(inventory, lambda keeper: scenario(url, keeper)))
    steps = heard.heard_events
    fractions = [s.fraction for s in steps if isinstance(s, events.Downloading)]
    assert fractions and all(f is not None and 0 <= f <= 1 for f in fractions)
    assert steps[-1] == events.Downloaded("local", url)
    # A model registered where it lies (file:, pkg:) was not downloaded: nothing says so.
    heard = Collector()
    asyncio.run(
        _with_keeper(
            inventory, lambda keeper: keeper.download_model(node, f"file:{tiny_model}", heard)
        )
    )
    assert not [e for e in heard.heard_events if isinstance(e, events.Downloaded)]


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
        statuses: list[NodeStatus] = []

        async def probe_all(keeper: Keeper) -> None:
            statuses.extend(await keeper.probe_all())

        asyncio.run(_with_keeper(inventory, probe_all))
        down, keyed_status, gone, old, other = statuses
    finally:
        keyed.stop()
        older.stop()
        stranger.stop()
    assert other.state is HiveState.DOWN
    assert other.problem == f"Something other than rbee-hive answers at 127.0.0.1:{stranger.port}"
    assert old.state is HiveState.VERSION_MISMATCH and old.version == "0.2.0"
    assert old.problem == "Version mismatch: rbee=0.1.0, rbee-hive=0.2.0. Please upgrade."
    assert down.state is HiveState.DOWN and "rbee ssh-up down" in (down.suggestion or "")
    assert keyed_status.state is HiveState.AUTH_FAILED
    assert "Invalid API key for 127.0.0.1:" in (keyed_status.problem or "")
    assert "check the key configured for keyed" in (keyed_status.suggestion or "")
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
        said = Collector()

        def logins() -> int:
            return sshd.log().count("Accepted publickey")

        async def scenario(keeper: Keeper) -> None:
            assert (await keeper.probe(node)).state is HiveState.DOWN
            assert "up (pid" in await keeper.hive_up(node, said)
            for _ in range(3):
                assert (await keeper.probe(node)).state is HiveState.UP
            assert "stopped" in await keeper.hive_down(node, said)

        asyncio.run(_with_keeper(inventory, scenario))
        assert logins() == 1  # one SSH connection for the keeper's whole life
        assert "alpha: starting rbee-hive" in said.steps
    finally:
        sshd.stop()


def test_start_hive_says_whether_it_started_it_and_stops_only_that_process(
    tmp_path: Path,
) -> None:
    """The queen's start and --stop-hives: a hive replaced since is not stopped."""
    from conftest import free_port

    state_dir = tmp_path / "hive"
    inventory = write_inventory(
        tmp_path / "inventory.toml", local_node("local", free_port(), state_dir)
    )
    node = inventory.get("local")
    said = Collector()

    async def scenario(keeper: Keeper) -> None:
        first = await keeper.start_hive(node, said)
        assert first is not None and f"up (pid {first}," in said.steps[-1]
        assert await keeper.start_hive(node, said) is None  # already running: not ours
        await keeper.hive_down(node, said)
        second = await keeper.start_hive(node, said)
        assert second is not None and second != first
        kept = await keeper.hive_down(node, said, only_pid=first)
        assert f"(pid {first}) is gone (pid {second} runs now): nothing stopped" in kept
        assert (await keeper.probe(node)).state is HiveState.UP
        assert "stopped" in await keeper.hive_down(node, said, only_pid=second)
        assert (await keeper.probe(node)).state is HiveState.DOWN

    asyncio.run(_with_keeper(inventory, scenario))
