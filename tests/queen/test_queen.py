"""`rbee queen` as applications meet it: a real queen process in front of a real local hive
and worker, reached with the `openai` SDK, unchanged."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import ANY

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import LONG_CTX, free_port
from support.hive_process import HiveProcess, start_hive
from support.inventories import local_node, write_inventory
from support.queen_process import Queen, run_queen, sdk, start_queen

from rbee.control.keeper.events import Unheard
from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.control.queen.cluster_view import ClusterView


@dataclass
class Cluster:
    inventory: Inventory
    home: Path
    hive: HiveProcess
    model_ref: str
    worker_id: str


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, deep_tiny_model: Path
) -> Iterator[Cluster]:
    """A local hive with one warm worker of the tiny model, spawned by this keeper (its key
    is in the registry the queen reads)."""
    root = tmp_path_factory.mktemp("queen")
    hive = start_hive(root / "hive", "--idle-timeout-s", "600")
    port = int(hive.url.rsplit(":", 1)[1])
    # Models no worker holds until the queen starts one.
    fresh, timed = root / "fresh.gguf", root / "timed.gguf"
    shutil.copy(tiny_model, fresh)
    shutil.copy(tiny_model, timed)
    inventory = write_inventory(
        root / "inventory.toml",
        local_node("local", port, hive.state_dir)
        + f'[models.fresh]\nref = "file:{fresh}"\nslots = 2\n'
        + f'[models.timed]\nref = "file:{timed}"\n'
        # Its answers outlast a loaded machine's lag: for the tests that act mid-answer.
        + f'[models.deep]\nref = "file:{deep_tiny_model}"\n',
    )
    home = root / "home"
    ref = f"file:{tiny_model}"
    registry = WorkerRegistry(home / "workers.db")

    async def spawn() -> str:
        async with Keeper(inventory, registry) as keeper:
            node = inventory.get("local")
            worker_id = await keeper.spawn_worker(node, ref, Unheard())
            for _ in range(300):
                status = await keeper.probe(node)
                if any(w.state == "idle" for w in status.workers):
                    return worker_id
                await asyncio.sleep(0.1)
        raise AssertionError("the worker did not load")

    try:
        yield Cluster(inventory, home, hive, ref, asyncio.run(spawn()))
    finally:
        registry.close()
        hive.stop()


@pytest.fixture(scope="module")
def queen(cluster: Cluster) -> Iterator[Queen]:
    q = start_queen(cluster.inventory.path, cluster.home)
    deadline = time.monotonic() + 20
    while cluster.model_ref not in httpx.get(f"{q.url}/v1/models").text:
        assert time.monotonic() < deadline, "the queen never saw the worker"
        time.sleep(0.2)
    yield q
    q.stop()


def test_the_openai_sdk_streams_through_the_queen(cluster: Cluster, queen: Queen) -> None:
    client = sdk(queen)
    chunks = list(
        client.completions.create(
            model=cluster.model_ref, prompt="Once upon a time", max_tokens=8, stream=True
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason == "length"

    raw = client.completions.with_raw_response.create(
        model=cluster.model_ref, prompt="Once upon a time", max_tokens=4
    )
    assert raw.headers["x-rbee-node"] == "local"
    assert raw.headers["x-rbee-worker"] == cluster.worker_id
    assert timings(raw.headers) == {"queue": 0, "spawn": 0, "load": 0, "ttft": ANY}
    assert raw.parse().usage.completion_tokens == 4

    answer = client.chat.completions.create(
        model=cluster.model_ref, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content is not None

    seen = httpx.get(f"{queen.url}/v1/cluster").json()
    [node] = seen["nodes"]
    assert node["name"] == "local" and node["state"] == "up" and node["routed"] >= 3
    [worker] = seen["workers"]
    assert worker["worker_id"] == cluster.worker_id and worker["in_flight"] == 0

    metrics = {
        (s.name, s.labels.get("node")): s.value
        for family in text_string_to_metric_families(httpx.get(f"{queen.url}/metrics").text)
        for s in family.samples
    }
    assert metrics[("rbee_queen_requests_routed_total", "local")] == node["routed"]
    assert metrics[("rbee_queen_time_to_first_byte_seconds_count", None)] == node["routed"]
    assert metrics[("rbee_queen_queue_wait_seconds_count", None)] == node["routed"]


def timings(headers: Mapping[str, str]) -> dict[str, float]:
    """Server-Timing's metrics and their durations (ms)."""
    parts = [p.strip().split(";") for p in headers["server-timing"].split(",")]
    return {p[0]: float(p[-1].removeprefix("dur=")) for p in parts}


def test_every_answer_a_worker_gave_says_which_and_where_its_time_went(
    cluster: Cluster, queen: Queen
) -> None:
    """A whole answer: queue, spawn, load and its time to the first token; a stream, whose
    headers go before its first token: when a worker took it; a /v1/inference stream, whose
    headers go before a worker is found: its `routed` event."""
    client = sdk(queen)
    whole = client.completions.with_raw_response.create(
        model=cluster.model_ref, prompt="Once upon a time", max_tokens=4
    )
    whole_timing = timings(whole.headers)
    assert list(whole_timing) == ["queue", "spawn", "load", "ttft"]
    assert whole_timing["ttft"] > 0 and whole_timing["spawn"] == whole_timing["load"] == 0

    with client.completions.with_streaming_response.create(
        model=cluster.model_ref, prompt="Once upon a time", max_tokens=4, stream=True
    ) as streamed:
        assert streamed.headers["x-rbee-worker"] == cluster.worker_id
        assert list(timings(streamed.headers)) == ["queue", "spawn", "load", "accept"]
        assert timings(streamed.headers)["accept"] > 0
        assert 'accept;desc="a worker took it"' in streamed.headers["server-timing"]
        assert list(streamed.iter_lines())

    body = {"model": cluster.model_ref, "prompt": "Once upon a time", "max_tokens": 4}
    rbee_whole = httpx.post(f"{queen.url}/v1/inference", json=body | {"stream": False})
    assert rbee_whole.status_code == 200, rbee_whole.text
    assert rbee_whole.headers["x-rbee-node"] == "local"
    assert rbee_whole.headers["x-rbee-worker"] == cluster.worker_id
    assert list(timings(rbee_whole.headers)) == ["queue", "spawn", "load", "ttft"]

    [routed] = [e for e in inference_events(queen, body) if e["type"] == "routed"]
    assert routed == {
        "type": "routed",
        "node": "local",
        "worker_id": cluster.worker_id,
        "queue_ms": 0,
        "spawn_ms": 0,
        "load_ms": 0,
    }


def busy_answers(worker: httpx.Client) -> float:
    """How many requests the worker refused with 503 ALL_SLOTS_BUSY."""
    return sum(
        s.value
        for family in text_string_to_metric_families(worker.get("/metrics").text)
        for s in family.samples
        if s.name == "rbee_worker_requests_total" and s.labels["outcome"] == "busy"
    )


def test_a_worker_whose_slot_another_client_holds_makes_the_request_wait_not_fail(
    cluster: Cluster, queen: Queen, deep_tiny_model: Path, tmp_path: Path
) -> None:
    """A 1-slot worker (of the queen's keeper, with a context long enough for a stream of
    seconds) whose slot a client of its own holds: the worker answers the queen 503; the
    request waits at the head of its queue and is served once that slot frees (before, the
    client was answered 503)."""
    held_model = tmp_path / "held.gguf"
    shutil.copy(deep_tiny_model, held_model)
    ref = f"file:{held_model}"
    registry = WorkerRegistry(cluster.home / "workers.db")
    node = cluster.inventory.get("local")

    async def spawn_long() -> str:
        async with Keeper(cluster.inventory, registry) as keeper:
            worker_id = await keeper.spawn_worker(node, ref, Unheard(), ctx_size=LONG_CTX)
            await keeper.wait_worker_ready(node, worker_id, Unheard(), timeout_s=60)
            return worker_id

    worker = registry.get(asyncio.run(spawn_long()))
    registry.close()
    assert worker is not None
    deadline = time.monotonic() + 10
    while {"worker_id": worker.worker_id, "state": "idle"} not in [
        {"worker_id": w["worker_id"], "state": w["state"]}
        for w in httpx.get(f"{queen.url}/v1/cluster").json()["workers"]
    ]:
        assert time.monotonic() < deadline, "the queen never saw the worker ready"
        time.sleep(0.1)
    direct = httpx.Client(
        base_url=worker.url, headers={"Authorization": f"Bearer {worker.api_key}"}, timeout=60
    )
    body = {"prompt": "Once upon a time", "max_tokens": 8192, "request_id": "req-direct"}
    answers: list[openai.types.Completion] = []
    client = sdk(queen)
    with direct, direct.stream("POST", "/v1/inference", json=body) as held:
        assert held.status_code == 200
        # `lines` must keep a name: an iterator left only to the generator expression is
        # closed with it, which closes the connection, and the worker rightly cancels the
        # stream and frees the slot (the queen's request then got it at once, half the time).
        lines = held.iter_lines()
        next(line for line in lines if '"type": "token"' in line)

        def read_on() -> None:  # as a client does, until the stream is closed under it
            with contextlib.suppress(httpx.HTTPError):
                collections.deque(lines, 0)

        threading.Thread(target=read_on, daemon=True).start()
        through = threading.Thread(
            target=lambda: answers.append(
                client.completions.create(model=ref, prompt="Once upon a time", max_tokens=2)
            )
        )
        through.start()
        deadline = time.monotonic() + 10
        while busy_answers(direct) == 0:  # the worker refused the queen
            assert time.monotonic() < deadline and through.is_alive(), "it was not refused"
            time.sleep(0.02)
        # The stream ends (it is canceled here, if it has not run out): the request, back in
        # the queue, goes to the worker again after the next probe.
        assert direct.delete("/v1/inference/req-direct").status_code == 204
    through.join(15)
    assert not through.is_alive()
    [answer] = answers
    assert answer.usage is not None and answer.usage.completion_tokens == 2


def test_a_probe_under_way_when_a_worker_is_forgotten_does_not_bring_it_back(
    cluster: Cluster,
) -> None:
    """The hive is frozen (SIGSTOP) while a probe waits on it; the worker is forgotten (as
    a request that could not reach it does); the probe lands with the worker in it: it stays
    forgotten until the next probe."""
    node = cluster.inventory.get("local")

    async def scenario() -> None:
        async with Keeper(cluster.inventory, WorkerRegistry(cluster.home / "w.db")) as keeper:
            view = ClusterView(keeper, refresh_s=60)
            await view.refresh(node)
            [worker] = [w for w in view.workers() if w.worker_id == cluster.worker_id]
            os.kill(cluster.hive.proc.pid, signal.SIGSTOP)
            try:
                landing = asyncio.ensure_future(view.refresh(node))
                await asyncio.sleep(0.5)
                assert not landing.done()
                view.forget(worker)
            finally:
                os.kill(cluster.hive.proc.pid, signal.SIGCONT)
            status = await landing
            assert status.is_up and cluster.worker_id not in [w.worker_id for w in status.workers]
            assert cluster.worker_id not in [w.worker_id for w in view.workers()]
            await view.refresh(node)  # begun after: the worker is back
            assert cluster.worker_id in [w.worker_id for w in view.workers()]

    asyncio.run(scenario())


def test_what_the_queen_cannot_route_is_said_plainly(cluster: Cluster, queen: Queen) -> None:
    client = sdk(queen)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert 'unknown model "no-such-model" (known: fresh, timed, deep)' in str(unknown.value)
    absent = cluster.home / "absent.gguf"
    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model=f"file:{absent}", prompt="hi", max_tokens=2)
    assert failed.value.status_code == 503
    assert f"no worker serves file:{absent}, and starting one failed" in str(failed.value)
    assert failed.value.response.headers["retry-after"] == "1"
    for body, field in (({"prompt": "hi"}, "model"), ({"model": 7, "prompt": "hi"}, "model")):
        answer = httpx.post(f"{queen.url}/v1/completions", json=body)
        assert answer.status_code in (400, 422), answer.text
        assert field in json.dumps(answer.json()["error"])
    foreign = httpx.post(
        f"{queen.url}/v1/completions",
        json={"model": cluster.model_ref, "prompt": "hi"},
        headers={"Origin": "http://evil.example"},
    )
    assert foreign.status_code == 403


def test_a_public_bind_needs_a_key_and_a_wrong_key_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    refused = run_queen(cluster.inventory.path, home, "--listen", f"0.0.0.0:{free_port()}")
    assert refused.proc.wait(20) == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in refused.log()

    key_file = tmp_path / "queen.key"
    key_file.write_text("the-queen-key-0123456789")
    key_file.chmod(0o600)
    keyed = start_queen(cluster.inventory.path, home, "--api-key-file", str(key_file))
    try:
        with pytest.raises(openai.AuthenticationError):
            sdk(keyed, "wrong").models.list()
        answer = httpx.get(f"{keyed.url}/v1/models")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert sdk(keyed, "the-queen-key-0123456789").models.list().object == "list"
        assert "the-queen-key" not in keyed.log()
    finally:
        keyed.stop()


def test_the_first_request_for_a_model_no_worker_holds_starts_one(
    cluster: Cluster, queen: Queen
) -> None:
    """`fresh` is an inventory name: the queen starts a worker of its model with the
    inventory's slots, waits for it to load, and streams from it."""
    names = [m.id for m in sdk(queen).models.list().data]
    assert names[:2] == ["fresh", "timed"]
    raw = sdk(queen).completions.with_raw_response.create(
        model="fresh", prompt="Once upon a time", max_tokens=4
    )
    assert raw.headers["x-rbee-worker"] != cluster.worker_id
    waited = timings(raw.headers)
    assert waited["spawn"] > 0 and waited["load"] > 0  # it waited for the start
    answer = raw.parse()
    assert answer.usage.completion_tokens == 4
    # Its worker knows no inventory names: the queen sends it the model's reference, which
    # answers name (as OpenAI answers "gpt-4o" with a dated id).
    fresh_ref = cluster.inventory.models["fresh"].ref
    assert answer.model == fresh_ref
    chunks = sdk(queen).chat.completions.create(
        model="fresh", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
    )
    assert {c.model for c in chunks} == {fresh_ref}
    [fresh] = [
        w
        for w in httpx.get(f"{queen.url}/v1/cluster").json()["workers"]
        if w["worker_id"] == raw.headers["x-rbee-worker"]
    ]
    assert fresh["slots_total"] == 2 and fresh["in_flight"] == 0


def test_a_worker_killed_mid_stream_ends_it_with_an_error_and_the_next_request_is_served(
    cluster: Cluster, queen: Queen
) -> None:
    """kill -9 of the worker answering: the client's stream ends with an error chunk (the
    SDK raises), and the next request, routed to the dead worker first, goes elsewhere."""
    client = sdk(queen)
    first = client.completions.with_raw_response.create(
        model="deep", prompt="Once upon a time", max_tokens=2
    )
    victim = first.headers["x-rbee-worker"]
    [pid] = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if victim in (p.info["cmdline"] or []) and "rbee.dataplane.worker" in p.info["cmdline"]
    ]
    stream = client.completions.create(
        model="deep", prompt="Once upon a time", max_tokens=8192, stream=True
    )
    with pytest.raises(openai.APIError, match="stopped mid-answer"):
        for n, _chunk in enumerate(stream):
            if n == 2:
                os.kill(pid, signal.SIGKILL)
    after = client.completions.with_raw_response.create(
        model="deep", prompt="Once upon a time", max_tokens=2
    )
    assert after.headers["x-rbee-worker"] != victim
    assert after.parse().usage.completion_tokens == 2


def inference_events(queen: Queen, body: dict[str, object]) -> list[dict[str, object]]:
    with httpx.stream("POST", f"{queen.url}/v1/inference", json=body, timeout=120) as answer:
        assert answer.status_code == 200, answer.read()
        return [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: {")]


def test_rbee_inference_tells_the_timeline_before_the_tokens(queen: Queen) -> None:
    """`timed` has no worker: its first request hears itself queued, the start of a worker
    for it, routed, then the worker's own events."""
    events = inference_events(
        queen, {"model": "timed", "prompt": "Once upon a time", "max_tokens": 4}
    )
    kinds = [e["type"] for e in events]
    timeline = [k for k in kinds if k not in ("loading", "token")]
    assert timeline == ["queued", "spawning", "routed", "started", "done"], kinds
    assert kinds.count("token") == 4
    assert events[0] == {"type": "queued", "position": 1}
    assert events[1] == {"type": "spawning", "node": "local"}
    routed = events[kinds.index("routed")]
    assert routed["node"] == "local" and str(routed["worker_id"]).startswith("worker-")
    assert isinstance(routed["spawn_ms"], float) and routed["spawn_ms"] > 0

    again = inference_events(
        queen, {"model": "timed", "prompt": "Once upon a time", "max_tokens": 2}
    )
    assert [e["type"] for e in again][:2] == ["routed", "started"]  # warm: straight there


def test_delete_cancels_a_request_on_its_worker_and_unknown_ids_are_404(
    cluster: Cluster, queen: Queen
) -> None:
    body = {
        "model": "deep",
        "prompt": "Once upon a time",
        "max_tokens": 8192,
        "request_id": "req-to-cancel",
    }
    with httpx.stream("POST", f"{queen.url}/v1/inference", json=body, timeout=60) as answer:
        assert answer.headers["x-request-id"] == "req-to-cancel"
        events = []
        for line in answer.iter_lines():
            if not line.startswith("data: {"):
                continue
            events.append(json.loads(line[6:]))
            if events[-1]["type"] == "token" and len(events) == 3:
                assert httpx.delete(f"{queen.url}/v1/inference/req-to-cancel").status_code == 204
    assert events[-1]["type"] == "done" and events[-1]["stop_reason"] == "canceled"
    assert len([e for e in events if e["type"] == "token"]) < 8192
    gone = httpx.delete(f"{queen.url}/v1/inference/req-to-cancel")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "NOT_FOUND"
