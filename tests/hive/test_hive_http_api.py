"""The hive's API against a real rbee-hive process that spawns real rbee-worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BIN, events_of, sse_data
from support.hive_process import HiveProcess, start_hive
from support.model_server import ModelServer
from support.tinymodel import write_tiny_gguf

KEY = "hive-test-key-42"


def wait_for(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def wait_ready(worker: dict, timeout_s: float = 30) -> None:
    headers = {"Authorization": f"Bearer {worker['api_key']}"}
    wait_for(
        lambda: httpx.get(f"{worker['url']}/v1/ready", headers=headers).json()["ready"], timeout_s
    )


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveProcess]:
    """One keyed hive for the tests that leave it as they found it."""
    process = start_hive(tmp_path_factory.mktemp("hive"), "--health-interval-s", "0.5", api_key=KEY)
    yield process
    assert process.stop() == 0


def spawn(hive: HiveProcess, model: Path | str, **body: object) -> dict:
    with hive.client() as client:
        r = client.post(
            "/v1/workers/spawn",
            json={"model_ref": f"file:{model}", **body}
            if isinstance(model, Path)
            else {"model_ref": model, **body},
        )
    assert r.status_code == 200, r.text
    return r.json()


def provision(hive: HiveProcess, ref: str) -> list[dict]:
    """POST /v1/models/download and follow its progress to the end."""
    with hive.client() as client:
        r = client.post("/v1/models/download", json={"model_ref": ref})
        assert r.status_code in (200, 202), r.text
        progress = f"/v1/models/download/progress?id={r.json()['download_id']}"
        with client.stream("GET", progress) as s:
            return events_of(sse_data(s))


def test_health_is_public(hive: HiveProcess) -> None:
    health = httpx.get(f"{hive.url}/v1/health").json()
    # A loopback hive also names the rbee-hive it runs from and its pid (the keeper tells
    # installations apart by them); SPEC's three fields are as they were.
    assert health == {
        "status": "alive",
        "version": "0.1.0",
        "api_version": "v1",
        "executable": str(BIN / "rbee-hive"),
        "pid": hive.proc.pid,
    }


def test_spawn_ready_infer_list_shutdown(hive: HiveProcess, tiny_model: Path) -> None:
    worker = spawn(hive, tiny_model, slots=2)
    assert worker["state"] == "loading" and worker["worker_id"].startswith("worker-")
    assert worker["url"].startswith("http://127.0.0.1:")
    wait_ready(worker)
    auth = {"Authorization": f"Bearer {worker['api_key']}"}
    with httpx.Client(headers=auth, timeout=30) as client:
        with client.stream(
            "POST",
            f"{worker['url']}/v1/inference",
            json={"prompt": "Once upon a time", "max_tokens": 5},
        ) as r:
            events = events_of(sse_data(r))
        assert events[-1]["total_tokens"] == 5
        # the worker's key is its own: no key, no answer
        assert httpx.get(f"{worker['url']}/v1/ready").status_code == 401
    with hive.client() as client:
        wait_for(
            lambda: (
                next(
                    w
                    for w in client.get("/v1/workers/list").json()["workers"]
                    if w["worker_id"] == worker["worker_id"]
                )["state"]
                == "idle"
            )
        )
        listed = next(
            w
            for w in client.get("/v1/workers/list").json()["workers"]
            if w["worker_id"] == worker["worker_id"]
        )
        assert listed["model_ref"] == f"file:{tiny_model}"
        assert listed["slots_total"] == 2 and listed["last_health_check"]
        pid = listed["pid"]
        r = client.post(f"/v1/workers/{worker['worker_id']}/shutdown")
        assert r.status_code == 200 and r.json()["state"] == "stopped"
        assert worker["worker_id"] not in [
            w["worker_id"] for w in client.get("/v1/workers/list").json()["workers"]
        ]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_crash_is_detected_and_not_restarted(hive: HiveProcess, tiny_model: Path) -> None:
    worker = spawn(hive, tiny_model)
    wait_ready(worker)
    with hive.client() as client:
        pid = next(
            w["pid"]
            for w in client.get("/v1/workers/list").json()["workers"]
            if w["worker_id"] == worker["worker_id"]
        )
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: (
                worker["worker_id"]
                not in [w["worker_id"] for w in client.get("/v1/workers/list").json()["workers"]]
            )
        )
    assert "WORKER_CRASHED" in hive.log() and worker["worker_id"] in hive.log()
    time.sleep(1)  # two more health intervals: nothing comes back
    with hive.client() as client:
        assert all(
            w["model_ref"] != f"file:{tiny_model}" or w["worker_id"] != worker["worker_id"]
            for w in client.get("/v1/workers/list").json()["workers"]
        )


def test_worker_that_dies_while_starting_is_reported(hive: HiveProcess, tiny_model: Path) -> None:
    """A worker killed before it serves (as the OOM killer would) is an error, not a ghost."""
    before = set(hive.worker_pids())
    killed: list[int] = []

    def kill_first_new_worker() -> None:
        deadline = time.monotonic() + 10
        while not killed and time.monotonic() < deadline:
            for pid in set(hive.worker_pids()) - before:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_first_new_worker)
    killer.start()
    with hive.client() as client:
        r = client.post("/v1/workers/spawn", json={"model_ref": f"file:{tiny_model}"})
        killer.join()
        assert killed, "no worker process appeared"
        assert r.status_code == 502, r.text
        error = r.json()["error"]
        assert error["code"] == "WORKER_CRASHED"
        assert "exited with code -9 while starting" in error["message"]
        assert "log_tail" in error["details"]
        workers = client.get("/v1/workers/list").json()["workers"]
    assert error["details"]["worker_id"] not in [w["worker_id"] for w in workers]


@pytest.mark.parametrize(
    "ref",
    [
        "file:/etc/../etc/passwd.gguf",
        "file:relative/x.gguf",
        "hf:../../etc",
        "ftp://host/x.gguf",
        "hf:org/repo;rm -rf ~",
        "pkg:gemma3-270m$(reboot)",
        "mistral",
        "",
    ],
)
def test_bad_model_refs_get_400(hive: HiveProcess, ref: str) -> None:
    with hive.client() as client:
        r = client.post("/v1/workers/spawn", json={"model_ref": ref})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_REQUEST" and error["details"]["field"] == "model_ref"


def test_spawn_validates_fields(hive: HiveProcess, tiny_model: Path) -> None:
    with hive.client() as client:
        for body, field in [
            ({"model_ref": f"file:{tiny_model}", "slots": 0}, "slots"),
            ({"model_ref": f"file:{tiny_model}", "backend": "tpu"}, "backend"),
            ({"model_ref": f"file:{tiny_model}", "extra": 1}, "extra"),
        ]:
            r = client.post("/v1/workers/spawn", json=body)
            assert r.status_code == 400 and r.json()["error"]["details"]["field"] == field


def test_spawn_passes_a_chat_template_to_its_worker(hive: HiveProcess, tiny_model: Path) -> None:
    worker = spawn(hive, tiny_model, chat_template="llama3")
    wait_ready(worker)
    health = httpx.get(f"{worker['url']}/health").json()
    assert health["chat_template"] == "llama3 (override)"
    with hive.client() as client:
        assert client.post(f"/v1/workers/{worker['worker_id']}/shutdown").status_code == 200
        r = client.post(
            "/v1/workers/spawn",
            json={"model_ref": f"file:{tiny_model}", "chat_template": "vicuna"},
        )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["details"]["field"] == "chat_template"
    assert "'chatml', 'gemma' or 'llama3'" in error["message"]


def test_unavailable_backend_is_named(hive: HiveProcess, tiny_model: Path) -> None:
    with hive.client() as client:
        r = client.post(
            "/v1/workers/spawn", json={"model_ref": f"file:{tiny_model}", "backend": "cuda"}
        )
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "BACKEND_UNAVAILABLE"
    assert error["details"]["available"] == ["cpu"]


def test_spawn_refuses_what_the_model_or_node_cannot_do(
    hive: HiveProcess, tiny_model: Path
) -> None:
    """A context past the model's training (16384 for the tiny model), a device the CPU
    backend lacks, more slots than a worker takes: a 400 naming the field and the limit."""
    before = hive.worker_pids()
    ref = f"file:{tiny_model}"
    with hive.client() as client:
        long_ctx, device, slots = (
            client.post("/v1/workers/spawn", json={"model_ref": ref, **extra})
            for extra in ({"ctx_size": 16385}, {"device": 7}, {"slots": 65})
        )
    for r, field in ((long_ctx, "ctx_size"), (device, "device"), (slots, "slots")):
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "INVALID_REQUEST" and error["details"]["field"] == field
    assert long_ctx.json()["error"]["message"] == (
        "ctx_size 16385 is more than the model's trained context (16384 tokens); ask for at "
        "most 16384 per slot"
    )
    assert device.json()["error"]["message"] == (
        "device 7 does not exist: the cpu backend has one device, 0"
    )
    assert "64" in slots.json()["error"]["message"]
    assert hive.worker_pids() == before


def test_the_default_context_is_lowered_to_the_models(hive: HiveProcess, tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "short.gguf", n_ctx_train=1024)
    worker = spawn(hive, model)  # no ctx_size: the default, 2048, is more than it knows
    with hive.client() as client:
        pid = next(
            w["pid"]
            for w in client.get("/v1/workers/list").json()["workers"]
            if w["worker_id"] == worker["worker_id"]
        )
        argv = psutil.Process(pid).cmdline()
        client.post(f"/v1/workers/{worker['worker_id']}/shutdown")
    assert argv[argv.index("--ctx-size") + 1] == "1024"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/workers/spawn"),
        ("GET", "/v1/workers/list"),
        ("POST", "/v1/workers/worker-x/shutdown"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models/download"),
        ("GET", "/v1/models/download/progress?id=x"),
        ("DELETE", "/v1/models/pkg:gemma3-270m"),
        ("GET", "/v1/logs"),
        ("GET", "/metrics"),
    ],
)
def test_every_endpoint_but_health_needs_the_key(hive: HiveProcess, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.request(method, hive.url + path, headers=headers, json={})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "INVALID_API_KEY"


def test_worker_callback_with_a_wrong_key_is_refused(hive: HiveProcess, tiny_model: Path) -> None:
    worker = spawn(hive, tiny_model)
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer wrong"}, {}):
        r = httpx.post(
            f"{hive.url}/v1/workers/ready",
            headers=headers,
            json={"worker_id": worker["worker_id"], "state": "idle", "url": "http://evil"},
        )
        assert r.status_code == 401
    with hive.client() as client:
        listed = next(
            w
            for w in client.get("/v1/workers/list").json()["workers"]
            if w["worker_id"] == worker["worker_id"]
        )
        assert listed["url"] == worker["url"]
        client.post(f"/v1/workers/{worker['worker_id']}/shutdown")


def test_logs_and_metrics(hive: HiveProcess) -> None:
    with hive.client() as client:
        lines = client.get("/v1/logs").json()["lines"]
        assert any("listening on" in line["message"] for line in lines)
        with client.stream("GET", "/v1/logs?follow=true") as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert "message" in json.loads(first[6:])
        text = client.get("/metrics").text
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert "rbee_hive_workers" in names and "rbee_hive_worker_crashes" in names


def test_unknown_worker_is_404(hive: HiveProcess) -> None:
    with hive.client() as client:
        r = client.post("/v1/workers/worker-nope/shutdown")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


# ---------------------------------------------------------------------------- own hives


def test_ram_preflight_refuses_with_numbers(tmp_path: Path, tiny_model: Path) -> None:
    hive = start_hive(tmp_path / "hive", "--ram-budget-mb", "1")
    try:
        big = tmp_path / "big.gguf"
        big.write_bytes(tiny_model.read_bytes() + b"\0" * (2 << 20))  # ~3 MB: needs > 1 MB
        r = httpx.post(
            f"{hive.url}/v1/workers/spawn", json={"model_ref": f"file:{big}"}, timeout=30
        )
        assert r.status_code == 507
        error = r.json()["error"]
        assert error["code"] == "INSUFFICIENT_RAM"
        assert error["details"]["available_mb"] == 1 and error["details"]["required_mb"] >= 2
        assert "need" in error["message"] and "have 1 MB" in error["message"]
    finally:
        assert hive.stop() == 0


def test_ram_preflight_counts_context_slots_and_running_workers(tmp_path: Path) -> None:
    # KV cache: 4 layers × 2 KV heads × (32 + 32) values × 2 bytes = 1 KiB per token of context.
    model = write_tiny_gguf(tmp_path / "deep.gguf", n_layers=4, n_embd=128, n_ctx_train=32768)
    ref = f"file:{model}"
    # About 130 MB for one slot of 2048 tokens (a worker process is most of it): one fits.
    hive = start_hive(tmp_path / "hive", "--ram-budget-mb", "150")
    try:
        with hive.client() as client:
            # 4 slots × 32768 tokens: a 128 MB KV cache on a model of about 3 MB.
            big = client.post(
                "/v1/workers/spawn", json={"model_ref": ref, "slots": 4, "ctx_size": 32768}
            )
            assert big.status_code == 507, big.text
            error = big.json()["error"]
            assert error["code"] == "INSUFFICIENT_RAM"
            details = error["details"]
            assert details["kv_cache_mb"] == 128 and details["available_mb"] == 150
            assert details["required_mb"] > 150 + 128 and details["model_mb"] < 5
            assert error["message"].startswith(
                f"Insufficient RAM: need {details['required_mb']} MB, have 150 MB (1.2 × model "
            )
            assert "KV cache 128 + compute" in error["message"]
            first = client.post("/v1/workers/spawn", json={"model_ref": ref})  # 1 × 2048
            assert first.status_code == 200, first.text
            # The first worker holds its RAM (or, still loading, is counted by its estimate):
            # the same spawn again does not fit in what is left of the budget.
            again = client.post("/v1/workers/spawn", json={"model_ref": ref})
            assert again.status_code == 507, again.text
            details = again.json()["error"]["details"]
            assert details["available_mb"] < details["required_mb"] <= 150
            assert len(hive.worker_pids()) == 1
    finally:
        assert hive.stop() == 0


def test_idle_worker_is_shut_down(tmp_path: Path, tiny_model: Path) -> None:
    hive = start_hive(tmp_path / "hive", "--idle-timeout-s", "1.5", "--health-interval-s", "0.5")
    try:
        worker = spawn(hive, tiny_model)
        wait_ready(worker)
        with hive.client() as client:
            wait_for(lambda: client.get("/v1/workers/list").json()["workers"] == [], 20)
        assert "idle for" in hive.log()
        assert hive.worker_pids() == []
    finally:
        assert hive.stop() == 0


IDLE_TIMEOUT_S = 2.0


def test_a_streaming_worker_is_never_idle(tmp_path: Path) -> None:
    """A worker streaming past the idle timeout is busy, not stopped. The model is deep
    enough that its answer outlasts the check on any CPU (a 16-layer one finished 8k tokens
    in under 3 s on a quiet machine), and the timeout long enough that a loaded machine's
    pause between ready and the request does not stop it first."""
    model = write_tiny_gguf(tmp_path / "deeper.gguf", n_layers=48, n_ctx_train=16384)
    hive = start_hive(
        tmp_path / "hive", "--idle-timeout-s", f"{IDLE_TIMEOUT_S:g}", "--health-interval-s", "0.5"
    )
    try:
        worker = spawn(hive, model, ctx_size=8256)
        wait_ready(worker)
        auth = {"Authorization": f"Bearer {worker['api_key']}"}
        with (
            httpx.Client(headers=auth, timeout=60) as client,
            client.stream(
                "POST",
                f"{worker['url']}/v1/inference",
                json={
                    "prompt": "Once upon a time",
                    "max_tokens": 8192,
                    "temperature": 0,
                    "request_id": "req-long",
                },
            ) as r,
        ):
            started = time.monotonic()
            states = None
            for _line in r.iter_lines():
                if time.monotonic() - started > 1.75 * IDLE_TIMEOUT_S:  # still streaming
                    states = [
                        w["state"]
                        for w in httpx.get(f"{hive.url}/v1/workers/list").json()["workers"]
                    ]
                    break
            assert states is not None, "the answer ended before the idle timeout had passed"
            assert states == ["busy"]
            client.delete(f"{worker['url']}/v1/inference/req-long")
    finally:
        assert hive.stop() == 0


def test_sigterm_stops_every_worker_and_leaves_no_child(tmp_path: Path, tiny_model: Path) -> None:
    hive = start_hive(tmp_path / "hive")
    workers = [spawn(hive, tiny_model) for _ in range(2)]
    for worker in workers:
        wait_ready(worker)
    pids = hive.worker_pids()
    assert len(pids) == 2
    assert hive.stop() == 0
    assert not [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    # the catalog survives the restart; the worker registry does not
    again = start_hive(tmp_path / "hive")
    try:
        models = httpx.get(f"{again.url}/v1/models").json()["models"]
        assert [m["reference"] for m in models] == [f"file:{tiny_model}"]
        assert httpx.get(f"{again.url}/v1/workers/list").json()["workers"] == []
    finally:
        assert again.stop() == 0


# ---------------------------------------------------------------------------- downloads


@pytest.fixture(scope="module")
def internet() -> Iterator[ModelServer]:
    """A loopback stand-in for the internet and the Hugging Face hub."""
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def online_hive(
    internet: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HiveProcess]:
    process = start_hive(tmp_path_factory.mktemp("online-hive"), env={"HF_ENDPOINT": internet.url})
    yield process
    assert process.stop() == 0


def test_spawn_downloads_resumes_and_serves(
    online_hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    data = tiny_model.read_bytes()
    url = internet.add("/models/resumed.gguf", data, drop_after=len(data) // 2)
    worker = spawn(online_hive, url)
    assert internet.count("/models/resumed.gguf") == 2
    assert internet.requests("/models/resumed.gguf")[1].range == f"bytes={len(data) // 2}-"
    wait_ready(worker)
    entry = next(
        m
        for m in httpx.get(f"{online_hive.url}/v1/models").json()["models"]
        if m["reference"] == url
    )
    assert Path(entry["local_path"]).read_bytes() == data
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    httpx.post(f"{online_hive.url}/v1/workers/{worker['worker_id']}/shutdown", timeout=60)


def test_a_spawned_worker_names_its_model_by_reference(
    online_hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    """Clients see the reference the worker was spawned for, never the hive's cache path;
    the path is accepted as a name too (the openai SDK, unchanged)."""
    url = internet.add("/models/named.gguf", tiny_model.read_bytes())
    worker = spawn(online_hive, url)
    wait_ready(worker)
    path = next(
        m["local_path"]
        for m in httpx.get(f"{online_hive.url}/v1/models").json()["models"]
        if m["reference"] == url
    )
    client = openai.OpenAI(base_url=f"{worker['url']}/v1", api_key=worker["api_key"])
    assert [m.id for m in client.models.list().data] == [url]
    for name in (url, path):
        assert client.completions.create(model=name, prompt="Once", max_tokens=2).model == url
    with pytest.raises(openai.NotFoundError, match=url):
        client.completions.create(model="gemma", prompt="Once", max_tokens=2)
    assert httpx.get(f"{worker['url']}/health").json()["model_ref"] == url
    httpx.post(f"{online_hive.url}/v1/workers/{worker['worker_id']}/shutdown", timeout=60)


def test_download_progress_streams_to_complete(
    online_hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    data = tiny_model.read_bytes()
    url = internet.add("/models/slow.gguf", data, bytes_per_s=len(data) * 2)  # ~0.5 s
    events = provision(online_hive, url)
    progress = [e for e in events if e["stage"] == "downloading"]
    assert progress and progress[-1]["bytes_total"] == len(data)
    assert all(e["bytes_downloaded"] <= len(data) for e in progress)
    assert events[-1]["stage"] == "complete" and events[-1]["local_path"].endswith(".gguf")
    again = httpx.post(f"{online_hive.url}/v1/models/download", json={"model_ref": url})
    assert again.status_code == 200 and again.json()["local_path"] == events[-1]["local_path"]


def test_download_fails_after_6_attempts(online_hive: HiveProcess, internet: ModelServer) -> None:
    url = internet.add("/models/broken.gguf", b"", status=503)
    events = provision(online_hive, url)
    assert [e["attempt"] for e in events if e["stage"] == "retrying"] == [2, 3, 4, 5, 6]
    failed = events[-1]
    assert failed["stage"] == "failed" and failed["error"]["code"] == "DOWNLOAD_FAILED"
    assert "after 6 attempts" in failed["error"]["message"]
    assert internet.count("/models/broken.gguf") == 6
    r = httpx.post(f"{online_hive.url}/v1/workers/spawn", json={"model_ref": url}, timeout=60)
    assert r.status_code == 502 and r.json()["error"]["code"] == "DOWNLOAD_FAILED"


def test_two_requests_for_one_model_download_once(
    online_hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    data = tiny_model.read_bytes()
    url = internet.add("/models/shared.gguf", data, bytes_per_s=len(data) * 2)
    with online_hive.client() as client:
        first = client.post("/v1/models/download", json={"model_ref": url}).json()
        second = client.post("/v1/models/download", json={"model_ref": url}).json()
    assert first["download_id"] == second["download_id"]
    assert provision(online_hive, url)[-1]["stage"] == "complete"
    assert internet.count("/models/shared.gguf") == 1


def test_hf_model_through_hf_endpoint(
    online_hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    internet.add_hub_file("rbee-test/tiny-GGUF", "tiny.q8_0.gguf", tiny_model.read_bytes())
    events = provision(online_hive, "hf:rbee-test/tiny-GGUF")  # the repo's only .gguf
    assert events[-1]["stage"] == "complete"
    worker = spawn(online_hive, "hf:rbee-test/tiny-GGUF:tiny.q8_0.gguf")
    wait_ready(worker)
    httpx.post(f"{online_hive.url}/v1/workers/{worker['worker_id']}/shutdown", timeout=60)


def test_delete_model(online_hive: HiveProcess, internet: ModelServer, tiny_model: Path) -> None:
    url = internet.add("/models/deleted.gguf", tiny_model.read_bytes())
    worker = spawn(online_hive, url)
    local = Path(
        next(
            m
            for m in httpx.get(f"{online_hive.url}/v1/models").json()["models"]
            if m["reference"] == url
        )["local_path"]
    )
    with online_hive.client() as client:
        busy = client.delete(f"/v1/models/{url}")
        assert busy.status_code == 409 and worker["worker_id"] in busy.json()["error"]["message"]
        client.post(f"/v1/workers/{worker['worker_id']}/shutdown")
        assert client.delete(f"/v1/models/{url}").status_code == 204
        assert not local.exists()
        gone = client.delete(f"/v1/models/{url}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "MODEL_NOT_FOUND"
        # a file: model is forgotten, never deleted
        assert provision(online_hive, f"file:{tiny_model}")[-1]["stage"] == "complete"
        assert client.delete(f"/v1/models/file:{tiny_model}").status_code == 204
        assert tiny_model.exists()


def test_delete_of_a_file_ref_inside_the_models_dir_only_forgets(
    online_hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    url = internet.add("/models/kept.gguf", tiny_model.read_bytes())
    local = provision(online_hive, url)[-1]["local_path"]  # inside the hive's models/
    alias = f"file:{local}"
    assert provision(online_hive, alias)[-1]["stage"] == "complete"
    with online_hive.client() as client:
        assert client.delete(f"/v1/models/{alias}").status_code == 204
        references = [m["reference"] for m in client.get("/v1/models").json()["models"]]
        assert Path(local).read_bytes() == tiny_model.read_bytes()
        assert url in references and alias not in references
        assert client.delete(f"/v1/models/{url}").status_code == 204
    assert not Path(local).exists()


def test_a_checksum_that_does_not_match_keeps_the_model_out(
    online_hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    data = tiny_model.read_bytes()
    digest, wrong = hashlib.sha256(data).hexdigest(), hashlib.sha256(b"x").hexdigest()
    url = internet.add("/models/checked.gguf", data)
    with online_hive.client() as client:
        bad = client.post("/v1/workers/spawn", json={"model_ref": f"{url}#sha256={wrong}"})
        assert bad.status_code == 502, bad.text
        error = bad.json()["error"]
        assert error["code"] == "DOWNLOAD_FAILED"
        assert digest in error["message"] and wrong in error["message"]
        assert error["details"] == {
            "expected_sha256": wrong,
            "actual_sha256": digest,
            "model_ref": url,
        }
        assert url not in [m["reference"] for m in client.get("/v1/models").json()["models"]]
    events = provision(online_hive, f"{url}#sha256={digest}")
    assert events[-1]["stage"] == "complete"
