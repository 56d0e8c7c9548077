"""The keeper against peers that stop answering, answer garbage, or belong to another
installation: every call has a deadline, every answer is checked, and the local hive is
the one of this installation. Real hives and workers; loopback stand-ins for garbage."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import BIN, LONG_CTX, free_port
from support.hive_process import HiveProcess, start_hive
from support.inventories import local_node, write_inventory
from support.registry import register_worker

from rbee.control.keeper import events
from rbee.control.keeper.events import KeeperEvent
from rbee.control.keeper.hive_control import ensure_local_hive
from rbee.control.keeper.infer import InferRequest
from rbee.control.keeper.inventory import load_inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.node_access import NodeAccess
from rbee.control.keeper.probe import NODE_PROBE_TIMEOUT_S, probe_deadline_s
from rbee.control.keeper.status import HiveState, NodeStatus
from rbee.control.keeper.words import ActionableError
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.dataplane.protocol import client, hive_client
from rbee.dataplane.protocol.states import WorkerState
from rbee.dataplane.protocol.wire import VERSION
from rbee.dataplane.protocol.worker_api import WorkerHealth

HEALTH = json.dumps({"status": "alive", "version": "0.1.0", "api_version": "v1"}).encode()
GARBAGE = b"<html>502 Bad Gateway, from a proxy</html>"


class StandIn:
    """A loopback server answering each path with a fixed 200 body (what it is not given
    gets HEALTH on /v1/health and GARBAGE elsewhere): a hive that answers nonsense. A body
    of `data:` lines goes out as an event stream; the path `hang` is never answered (until
    stop). `asked` lists the paths asked, in order."""

    def __init__(self, *, hang: str | None = None, **bodies: bytes) -> None:
        answers = {"/v1/health": HEALTH, **{k.replace("_", "/"): v for k, v in bodies.items()}}
        self.asked: list[str] = []
        self._released = threading.Event()
        asked, released = self.asked, self._released

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                path = self.path.split("?")[0]
                asked.append(path)
                if path == hang:
                    released.wait(60)
                    return
                body = answers.get(path, GARBAGE)
                self.send_response(200)
                if body.startswith(b"data:"):
                    self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 - the http.server hooks

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()


def _rbee(inventory: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    env.update(RBEE_HOME=str(home), RBEE_INVENTORY=str(inventory), COLUMNS="200")
    return subprocess.run(
        [str(BIN / "rbee"), *args], capture_output=True, text=True, timeout=60, env=env
    )


# ----------------------------------------------------------------- malformed answers

# Well-formed download answers, so what follows them is what is garbled.
DOWNLOADING = b'{"download_id": "d-1", "model_ref": "file:/models/x.gguf", "state": "downloading"}'
DOWNLOADED = (
    b'{"download_id": "d-1", "model_ref": "file:/models/x.gguf", "state": "complete", '
    b'"local_path": "/models/x.gguf"}'
)


def warm_worker(registry: WorkerRegistry, worker_id: str, ref: str, url: str) -> None:
    """A worker the registry holds as idle and just checked: `rbee infer` goes straight to it."""
    register_worker(registry, worker_id, ref, url, api_key="")
    registry.mark_healthy(worker_id, "idle")


@pytest.mark.parametrize(
    "bodies, command",
    [
        ({}, ("models", "list", "--node", "garbled")),
        ({"_v1_models": b'{"models": "all of them"}'}, ("models", "list", "--node", "garbled")),
        ({}, ("infer", "--node", "garbled", "--model", "file:/models/x.gguf", "hi")),
        (
            {"_v1_models_download": DOWNLOADED},
            ("infer", "--node", "garbled", "--model", "file:/models/x.gguf", "hi"),
        ),
        (
            {
                "_v1_models_download": DOWNLOADING,
                "_v1_models_download_progress": (
                    b'data: {"stage": "failed", "error": "disk full"}\n\n'
                ),
            },
            ("infer", "--node", "garbled", "--model", "file:/models/x.gguf", "hi"),
        ),
        (
            {
                "_v1_models_download": DOWNLOADING,
                "_v1_models_download_progress": GARBAGE,
            },
            ("models", "download", "--node", "garbled", "file:/models/x.gguf"),
        ),
    ],
    ids=[
        "models-not-json",
        "models-wrong-shape",
        "download-not-json",
        "spawn-not-json",
        "download-failed-garbled",
        "download-progress-not-sse",
    ],
)
def test_a_garbled_answer_is_named_not_a_traceback(
    tmp_path: Path, bodies: dict[str, bytes], command: tuple[str, ...]
) -> None:
    stand_in = StandIn(**bodies)
    try:
        inventory = tmp_path / "inventory.toml"
        write_inventory(inventory, local_node("garbled", stand_in.port, tmp_path / "state"))
        result = _rbee(inventory, tmp_path / "home", *command)
    finally:
        stand_in.stop()
    assert result.returncode == 1
    assert "Error: Invalid response from rbee-hive on garbled" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_probe_names_a_garbled_workers_list(tmp_path: Path) -> None:
    stand_in = StandIn(
        _v1_models=b'{"models": []}', _v1_workers_list=b'{"workers": [{"worker_id": "w"}]}'
    )
    try:
        node = write_inventory(
            tmp_path / "inventory.toml", local_node("garbled", stand_in.port, tmp_path / "s")
        ).get("garbled")
        status = asyncio.run(probe(node))
    finally:
        stand_in.stop()
    assert status.state is HiveState.DOWN
    assert status.problem == "Invalid response from rbee-hive on garbled"


# ----------------------------------------------------------------- deadlines


@pytest.fixture
def hive(tmp_path: Path) -> Iterator[HiveProcess]:
    process = start_hive(tmp_path / "hive")
    yield process
    psutil.Process(process.proc.pid).resume()  # in case the test left it stopped
    process.stop()


def _local(tmp_path: Path, hive: HiveProcess) -> Node:
    port = int(hive.url.rsplit(":", 1)[1])
    return write_inventory(
        tmp_path / "inventory.toml", local_node("local", port, hive.state_dir)
    ).get("local")


def test_a_stopped_hive_is_not_answering_within_the_probe_deadline(
    tmp_path: Path, hive: HiveProcess
) -> None:
    node = _local(tmp_path, hive)
    psutil.Process(hive.proc.pid).suspend()  # SIGSTOP: the port still accepts connections
    started = time.monotonic()
    status = asyncio.run(probe(node))
    took = time.monotonic() - started
    assert status.state is HiveState.NOT_ANSWERING
    assert status.problem == f"not answering ({NODE_PROBE_TIMEOUT_S:g} s)"
    assert "rbee ssh-down local" in (status.suggestion or "")
    assert took < probe_deadline_s(node) + 1

    async def models() -> None:
        async with keeper_of(node) as keeper:
            await keeper.models(node)

    with pytest.raises(ActionableError, match=r"rbee-hive on local is not answering \(5 s\)"):
        asyncio.run(models())


def keeper_of(node: Node, registry: WorkerRegistry | None = None) -> Keeper:
    return Keeper(load_inventory(node.inventory_path), registry)


async def probe(node: Node) -> NodeStatus:
    async with keeper_of(node) as keeper:
        return await keeper.probe(node)


async def infer(
    node: Node, request: InferRequest, registry: WorkerRegistry, listener: Collector
) -> int:
    async with keeper_of(node, registry) as keeper:
        return await keeper.infer(node, request, listener).run()


class Collector:
    def __init__(self) -> None:
        self.first_token = asyncio.Event()
        self.tokens: list[str] = []
        self.errors: list[ActionableError] = []

    def heard(self, event: KeeperEvent) -> None:
        if isinstance(event, events.Token):
            self.tokens.append(event.text)
            self.first_token.set()
        elif isinstance(event, events.Failed):
            self.errors.append(event.error)


def test_a_frozen_worker_ends_the_stream_within_the_silence_limit(
    tmp_path: Path,
    tiny_model: Path,
    spawn_worker,
    registry: WorkerRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`rbee infer`'s stream from a worker that is SIGSTOPped mid-answer: once the silence
    limit has passed (lowered to 2 s here), EC4's words, saying the worker stopped answering,
    with the tokens that arrived saved and counted; the worker is forgotten."""
    monkeypatch.setattr(client, "SILENCE_LIMIT_S", 2.0)
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    worker = spawn_worker(tiny_model, "--worker-id", "w-frozen", "--ctx-size", str(LONG_CTX))
    ref = f"file:{tiny_model}"
    node = write_inventory(
        tmp_path / "inventory.toml", local_node("local", free_port(), tmp_path / "s")
    ).get("local")
    warm_worker(registry, "w-frozen", ref, worker.url)
    listener = Collector()
    frozen = psutil.Process(worker.proc.pid)

    async def scenario() -> tuple[int, float]:
        request = InferRequest("Once upon a time", ref, max_tokens=8192, temperature=0)
        run = asyncio.create_task(infer(node, request, registry, listener))
        await asyncio.wait_for(listener.first_token.wait(), 30)
        frozen.suspend()
        stopped_at = time.monotonic()
        code = await asyncio.wait_for(run, 30)
        return code, time.monotonic() - stopped_at

    try:
        code, took = asyncio.run(scenario())
    finally:
        frozen.resume()
    assert code == 1
    [error] = listener.errors
    assert error.message == "SSE stream closed unexpectedly"
    why, saved, generated = error.details
    assert why == "The worker stopped answering for 2 s"
    [partial] = (tmp_path / "home" / "partial").iterdir()
    assert saved == f"Partial result saved to: {partial}"
    assert partial.read_text() == "".join(listener.tokens)
    assert generated == f"Tokens generated: {len(listener.tokens)} / 8192"
    assert listener.tokens and registry.get("w-frozen") is None
    assert 2 <= took < 5


@pytest.mark.parametrize(
    "garbled",
    [
        b'data: {"type": "token", "token": 7, "index": 1}\n\n',
        b'data: {"type": "error", "error": "out of memory"}\n\n',
    ],
    ids=["token", "error"],
)
def test_a_garbled_event_mid_stream_keeps_the_tokens(
    tmp_path: Path, registry: WorkerRegistry, monkeypatch: pytest.MonkeyPatch, garbled: bytes
) -> None:
    """A worker whose stream turns to nonsense after a token: EC4's words, naming the
    garbled answer, with the token that arrived saved; never a traceback."""
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    stand_in = StandIn(
        _health=WorkerHealth(
            state=WorkerState.IDLE,
            worker_id="w-garbled",
            model_ref="file:/models/x.gguf",
            slots_total=1,
            slots_busy=0,
            idle_s=1.0,
            last_tokens_per_s=None,
            version=VERSION,
        )
        .model_dump_json()
        .encode(),
        _v1_inference=b'data: {"type": "token", "token": "Hi", "index": 0}\n\n' + garbled,
    )
    ref = "file:/models/x.gguf"
    node = write_inventory(
        tmp_path / "inventory.toml", local_node("local", free_port(), tmp_path / "s")
    ).get("local")
    warm_worker(registry, "w-garbled", ref, f"http://127.0.0.1:{stand_in.port}")
    listener = Collector()
    try:
        code = asyncio.run(infer(node, InferRequest("hi", ref), registry, listener))
    finally:
        stand_in.stop()
    assert code == 1 and listener.tokens == ["Hi"]
    [error] = listener.errors
    assert error.message == "SSE stream closed unexpectedly"
    assert error.details[0] == "Invalid response from the worker"
    assert error.details[2] == "Tokens generated: 1 / 20"
    [partial] = (tmp_path / "home" / "partial").iterdir()
    assert partial.read_text() == "Hi"


@pytest.mark.parametrize("face", ["dashboard", "infer"])
def test_a_hive_frozen_at_the_spawn_is_named_within_the_spawn_deadline(
    tmp_path: Path, registry: WorkerRegistry, monkeypatch: pytest.MonkeyPatch, face: str
) -> None:
    """Both faces provision (download) before they spawn, so a spawn needs no hour: a hive
    that never answers it is named once SPAWN_TIMEOUT_S (lowered to 1 s here) has passed."""
    assert hive_client.SPAWN_TIMEOUT_S <= 120
    monkeypatch.setattr(hive_client, "SPAWN_TIMEOUT_S", 1.0)
    stand_in = StandIn(hang="/v1/workers/spawn", _v1_models_download=DOWNLOADED)
    ref = "file:/models/x.gguf"
    node = write_inventory(
        tmp_path / "inventory.toml", local_node("frozen", stand_in.port, tmp_path / "s")
    ).get("frozen")
    listener = Collector()

    async def spawn() -> None:
        if face == "dashboard":
            async with keeper_of(node, registry) as keeper:
                await keeper.spawn_worker(node, ref, listener)
        else:
            assert await infer(node, InferRequest("hi", ref), registry, listener) == 1
            raise listener.errors[0]

    started = time.monotonic()
    try:
        with pytest.raises(ActionableError) as raised:
            asyncio.run(spawn())
    finally:
        stand_in.stop()
    assert raised.value.message == "rbee-hive on frozen stopped answering for 1 s"
    assert time.monotonic() - started < 5
    assert stand_in.asked[-2:] == ["/v1/models/download", "/v1/workers/spawn"]
    assert registry.list() == []


def test_a_garbled_loading_stream_is_not_called_a_damaged_model(
    tmp_path: Path, registry: WorkerRegistry
) -> None:
    """A worker whose loading progress is nonsense: named as such, and the words "the model
    may be damaged" kept for a model that failed to load."""
    worker = StandIn(
        _v1_loading_progress=b'data: {"stage": "loading_to_vram", '
        b'"layers_loaded": "half", "layers_total": 4}\n\n'
    )
    spawned = {
        "worker_id": "w-1",
        "url": f"http://127.0.0.1:{worker.port}",
        "api_key": "k",
        "state": "loading",
    }
    hive = StandIn(
        _v1_models_download=DOWNLOADED,
        _v1_workers_spawn=json.dumps(spawned).encode(),
    )
    node = write_inventory(
        tmp_path / "inventory.toml", local_node("local", hive.port, tmp_path / "s")
    ).get("local")
    listener = Collector()
    try:
        code = asyncio.run(
            infer(node, InferRequest("hi", "file:/models/x.gguf"), registry, listener)
        )
    finally:
        hive.stop()
        worker.stop()
    assert code == 1
    [error] = listener.errors
    assert error.message == "Invalid response from the worker"
    assert "damaged" not in error.in_words()
    assert registry.get("w-1") is None


# ----------------------------------------------------------------- the local installation


def _health(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).json()


@pytest.mark.parametrize("deleted", [False, True], ids=["other", "deleted"])
def test_a_local_hive_of_another_installation_is_restarted(tmp_path: Path, deleted: bool) -> None:
    """A hive left running by another checkout (here: rbee-hive copied elsewhere and started
    from there; then that copy deleted) is stopped, by proof, and started from ours."""
    other = tmp_path / "other-checkout"
    other.mkdir()
    shutil.copy2(BIN / "rbee-hive", other / "rbee-hive")
    port, state = free_port(), tmp_path / "state"
    state.mkdir()
    with open(tmp_path / "other.log", "wb") as log:
        theirs = subprocess.Popen(
            [
                str(other / "rbee-hive"),
                "daemon",
                "--addr",
                f"127.0.0.1:{port}",
                "--state-dir",
                str(state),
            ],
            stdout=log,
            stderr=log,
        )
    node = write_inventory(tmp_path / "inventory.toml", local_node("local", port, state)).get(
        "local"
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert _health(port)["executable"] == str(other / "rbee-hive")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and theirs.poll() is None
                time.sleep(0.1)
        if deleted:
            shutil.rmtree(other)

        said: list[str] = []
        asyncio.run(ensure_local_hive(NodeAccess(node), said.append))
        gone = " (deleted)" if deleted else ""
        assert said == [
            f"Restarted the hive on local: it ran from {other}/rbee-hive{gone}.",
            "It keeps running for the next answer: `rbee ssh-down local` stops it.",
        ]
        assert theirs.wait(5) == 0  # stopped by SIGTERM, cleanly
        assert _health(port)["executable"] == str(BIN / "rbee-hive")
        asyncio.run(ensure_local_hive(NodeAccess(node), said.append))
        assert len(said) == 2  # ours: left running, nothing more said
    finally:
        if theirs.poll() is None:
            theirs.kill()
        subprocess.run(
            [str(BIN / "rbee-hive"), "stop", "--state-dir", str(state)],
            capture_output=True,
            timeout=90,
        )
