"""`rbee infer --queen` as a person runs it: the console script in a subprocess, a real queen
(`rbee queen`) in front of a real local hive, the workers the queen starts on tiny models;
and the facade's queen run and probe, in process, where no queen listens."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import BIN
from support.inventories import CLOSED_PORT
from support.queen_cluster import QueenCluster, queen_cluster
from support.queen_process import Queen, start_queen

from rbee.control.keeper.events import Failed, KeeperEvent
from rbee.control.keeper.queen_address import QueenAddress
from rbee.control.keeper.queen_infer import QueenInfer, QueenRequest
from rbee.control.keeper.queen_status import QueenStatus, probe_queen
from rbee.control.queen.settings import QueenSettings


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, deep_tiny_model: Path
) -> Iterator[QueenCluster]:
    root = tmp_path_factory.mktemp("infer-queen")
    busy = root / "busy.gguf"  # a model of its own for the test that fills its queue
    shutil.copy(deep_tiny_model, busy)
    with queen_cluster(root, {"tiny": tiny_model, "deep": deep_tiny_model, "busy": busy}) as c:
        yield c


@pytest.fixture(scope="module")
def queen(cluster: QueenCluster) -> Iterator[Queen]:
    q = start_queen(cluster.inventory.path, cluster.home)
    yield q
    q.stop()


def argv(*args: str) -> list[str]:
    return [str(BIN / "rbee"), "infer", "--queen", *args]


def env(home: Path, inventory: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    return {**clean, "RBEE_HOME": str(home), "RBEE_INVENTORY": str(inventory)}


def infer(home: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv(*args), capture_output=True, text=True, timeout=120, env=env(home, inventory)
    )


def said(stderr: str) -> list[str]:
    """The keeper's lines on stderr, without Python's warnings of a dependency (a warning's
    line, then its source line, indented)."""
    lines = stderr.splitlines()
    warned = {i for i, line in enumerate(lines) if re.match(r"\S+\.py:\d+: \w*Warning: ", line)}
    return [line for i, line in enumerate(lines) if i not in warned and i - 1 not in warned]


def test_a_prompt_goes_through_the_queen(cluster: QueenCluster, queen: Queen) -> None:
    result = infer(
        cluster.home, cluster.inventory.path, "--model", "tiny", "--max-tokens", "6",
        "Once", "upon", "a", "time",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # stdout holds only the answer
    assert "Routed to worker-" in result.stderr and "on local." in result.stderr
    assert "Routed" not in result.stdout
    # A model no worker holds: the queen starts one and says so, in order.
    cold = infer(cluster.home, cluster.inventory.path, "--model", "deep", "--max-tokens", "2", "hi")
    assert cold.returncode == 0, cold.stderr
    lines = said(cold.stderr)
    starting = lines.index("Starting a worker on local...")
    assert lines[0] == "Queued: 1 in line."
    assert [line for line in lines[starting:] if line.startswith("Routed to worker-")]
    routed = httpx.get(f"{queen.url}/v1/cluster").json()["nodes"][0]["routed"]
    assert routed == 2


def test_what_the_queen_refuses_is_said_in_the_keepers_words(
    cluster: QueenCluster, queen: Queen
) -> None:
    unknown = infer(cluster.home, cluster.inventory.path, "--model", "nope", "hi")
    assert unknown.returncode == 1
    assert 'Error: unknown model "nope" (known: tiny, deep, busy)' in unknown.stderr
    assert "Suggestion: give --model a name of [models.*] in the inventory" in unknown.stderr
    assert "Traceback" not in unknown.stderr and unknown.stdout == ""

    mixed = infer(cluster.home, cluster.inventory.path, "--node", "local", "hi")
    assert mixed.returncode == 2
    assert "--node does not go with --queen" in mixed.stderr


def test_without_a_queen_it_says_how_to_start_one(cluster: QueenCluster, tmp_path: Path) -> None:
    result = infer(tmp_path / "home", cluster.inventory.path, "hi")
    assert result.returncode == 1
    assert said(result.stderr) == [
        "Error: No queen is running",
        "Suggestion: start one with `rbee queen start` (or `rbee queen`)",
    ]


async def _stream(http: httpx.AsyncClient, url: str, request_id: str, token: asyncio.Event) -> None:
    body = {"model": "busy", "prompt": "Once", "max_tokens": 8192, "request_id": request_id}
    async with http.stream("POST", f"{url}/v1/inference", json=body) as answer:
        async for line in answer.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["type"] == "token":
                token.set()


def test_a_full_queue_is_said_busy_with_when_to_retry(cluster: QueenCluster, queen: Queen) -> None:
    """One request holds the model's one slot and the queue holds its most; the next is
    refused at once (503, Retry-After)."""
    queue_max = QueenSettings().queue_max

    async def scenario() -> subprocess.CompletedProcess[str]:
        limits = httpx.Limits(max_connections=queue_max + 8)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            holding = asyncio.Event()
            streams = [asyncio.create_task(_stream(http, queen.url, "busy-0", holding))]
            await asyncio.wait_for(holding.wait(), 120)
            streams += [
                asyncio.create_task(_stream(http, queen.url, f"busy-{i}", asyncio.Event()))
                for i in range(1, queue_max + 1)
            ]
            while (
                sum((await http.get(f"{queen.url}/v1/cluster")).json()["queued"].values())
                < queue_max
            ):
                await asyncio.sleep(0.1)
            try:
                return await asyncio.to_thread(
                    infer, cluster.home, cluster.inventory.path, "--model", "busy", "hi"
                )
            finally:
                for i in reversed(range(queue_max + 1)):  # the waiting ones first
                    await http.delete(f"{queen.url}/v1/inference/busy-{i}")
                await asyncio.wait_for(asyncio.gather(*streams), 60)

    refused = asyncio.run(scenario())
    assert refused.returncode == 1
    assert said(refused.stderr) == [
        f"Error: The queen is busy: {queue_max} requests already wait for busy; retry in 1 s",
        "Suggestion: retry in 1 s, or give it more slots or workers ([models.*])",
    ]


def test_a_queen_that_went_away_unseen_is_said_so() -> None:
    """queen.json naming a queen that no longer listens (killed before it could remove it):
    the dashboard's probe and a prompt say so, in words."""
    gone = QueenAddress(url=f"http://127.0.0.1:{CLOSED_PORT}")
    heard: list[KeeperEvent] = []

    class Listener:
        def heard(self, event: KeeperEvent) -> None:
            heard.append(event)

    async def scenario() -> tuple[QueenStatus, int]:
        return (
            await probe_queen(gone),
            await QueenInfer(gone, QueenRequest("hi", "tiny"), Listener()).run(),
        )

    status, code = asyncio.run(scenario())
    assert status.problem == f"Cannot connect to the queen at {gone.url}"
    assert code == 1
    [failed] = [e for e in heard if isinstance(e, Failed)]
    assert failed.error.message == status.problem
    assert failed.error.suggestion == "start one with `rbee queen start` (or `rbee queen`)"


def test_ctrl_c_cancels_the_request_at_the_queen(cluster: QueenCluster, queen: Queen) -> None:
    proc = subprocess.Popen(
        argv("--model", "deep", "--max-tokens", "8192", "--temperature", "0", "Once"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(cluster.home, cluster.inventory.path),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.read(1)  # a token has come through the queen
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert said(stderr)[-1] == "Canceled.", stderr
    deadline = time.monotonic() + 10
    while any(w["in_flight"] for w in httpx.get(f"{queen.url}/v1/cluster").json()["workers"]):
        assert time.monotonic() < deadline, "the queen still holds the request"
        time.sleep(0.1)


def test_a_queen_with_a_key_is_reached_with_it(
    cluster: QueenCluster, tmp_path: Path, tiny_model: Path
) -> None:
    """The queen names its key's file in queen.json; the keeper reads the key from there.
    (A model of its own: the other queen's workers are not this one's to use.)"""
    model = tmp_path / "keyed.gguf"
    shutil.copy(tiny_model, model)
    key_file = tmp_path / "queen.key"
    key_file.write_text("the-queen-key-0123456789")
    key_file.chmod(0o600)
    home = tmp_path / "home"
    keyed = start_queen(cluster.inventory.path, home, "--api-key-file", str(key_file))
    try:
        result = infer(
            home, cluster.inventory.path, "--model", f"file:{model}", "--max-tokens", "2", "hi"
        )
        assert result.returncode == 0, result.stderr
        key_file.chmod(0o644)
        loose = infer(home, cluster.inventory.path, "--model", f"file:{model}", "hi")
        assert loose.returncode == 1
        assert "Error: Cannot read the queen's key:" in loose.stderr
        assert "readable by others" in loose.stderr
        assert "the-queen-key" not in result.stderr + loose.stderr
    finally:
        keyed.stop()
