"""The worker's native HTTP API (dataplane/worker/http_api.py), against real rbee-worker
processes."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import LONG_CTX, WorkerProcess, events_of, sse_data, start_long_stream

from rbee.dataplane.protocol.requests import DEFAULT_REPEAT_LAST_N, DEFAULT_REPEAT_PENALTY

KEY = "test-key-0123456789"
log = logging.getLogger(__name__)


def stream(client: httpx.Client, **body: object) -> list[dict]:
    with client.stream("POST", "/v1/inference", json={"prompt": "Once upon a time", **body}) as r:
        assert r.status_code == 200, r.read()
        return events_of(sse_data(r))


def wait_for(predicate, timeout_s: float = 5.0, interval_s: float = 0.01) -> float:
    """Polls until predicate() is true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError("condition not met in time")
        time.sleep(interval_s)
    return time.monotonic() - start


def slots_busy(worker: WorkerProcess) -> int:
    return httpx.get(f"{worker.url}/health").json()["slots_busy"]


# ---------------------------------------------------------------------------- streaming


def test_sse_event_sequence(shared_worker: WorkerProcess) -> None:
    with (
        shared_worker.client() as client,
        client.stream(
            "POST",
            "/v1/inference",
            json={
                "prompt": "Once upon a time",
                "max_tokens": 12,
                "temperature": 0,
                "request_id": "req-seq-1",
            },
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "req-seq-1"
        events = events_of(sse_data(r))
    assert events[0] == {"type": "started", "request_id": "req-seq-1", "model": events[0]["model"]}
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert all(isinstance(t["token"], str) for t in tokens)
    done = events[-1]
    assert done["type"] == "done" and done["done"] is True
    assert done["stop_reason"] == "max_tokens"
    assert done["total_tokens"] == 12
    assert done["duration_ms"] >= 0
    assert len(events) == 1 + len(tokens) + 1


def test_stream_false_answers_one_json(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "stream": False}
        first = client.post("/v1/inference", json=body)
        second = client.post("/v1/inference", json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["stop_reason"] == "max_tokens" and answer["total_tokens"] == 8
    assert answer["text"] and answer["request_id"] == first.headers["x-request-id"]
    ttft = first.headers["server-timing"]  # its first token's time, for the queen
    assert ttft.startswith("ttft;dur=") and float(ttft.removeprefix("ttft;dur=")) > 0
    # greedy decoding is deterministic for the same request shape
    assert second.json()["text"] == answer["text"]


def test_streamed_text_equals_collected_text(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        events = stream(client, max_tokens=10, temperature=0)
        collected = client.post(
            "/v1/inference",
            json={
                "prompt": "Once upon a time",
                "max_tokens": 10,
                "temperature": 0,
                "stream": False,
            },
        ).json()
    assert "".join(e["token"] for e in events if e["type"] == "token") == collected["text"]


def test_seed_reproduces_a_sampled_answer(shared_worker: WorkerProcess) -> None:
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 16,
        "temperature": 1.2,
        "top_k": 40,
        "top_p": 0.95,
        "seed": 1234,
        "stream": False,
    }
    with shared_worker.client() as client:
        a = client.post("/v1/inference", json=body).json()["text"]
        b = client.post("/v1/inference", json=body).json()["text"]
        c = client.post("/v1/inference", json={**body, "seed": 99}).json()["text"]
    assert a == b
    assert a != c


def test_repetition_penalty_is_on_by_default_and_a_request_overrides_it(
    shared_worker: WorkerProcess,
) -> None:
    def text(**body: object) -> str:
        with shared_worker.client() as client:
            r = client.post(
                "/v1/inference",
                json={"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}
                | {"stream": False, **body},
            )
        assert r.status_code == 200, r.text
        return str(r.json()["text"])

    default = text()
    assert default == text(
        repeat_penalty=DEFAULT_REPEAT_PENALTY, repeat_last_n=DEFAULT_REPEAT_LAST_N
    )
    assert default != text(repeat_penalty=1.0)


def test_stop_string_ends_the_stream(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        free = client.post(
            "/v1/inference",
            json={
                "prompt": "Once upon a time",
                "max_tokens": 24,
                "temperature": 0,
                "stream": False,
            },
        ).json()
        text = free["text"]
        stop = text[len(text) // 2 :][:3]  # a string the model is known to produce
        assert stop.strip(), text
        cut = client.post(
            "/v1/inference",
            json={
                "prompt": "Once upon a time",
                "max_tokens": 24,
                "temperature": 0,
                "stream": False,
                "stop": [stop],
            },
        ).json()
    assert cut["stop_reason"] == "stop"
    assert cut["text"] == text[: text.index(stop)]


# ---------------------------------------------------------------------------- loading


def test_loading_progress_reaches_ready(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        ready = client.get("/v1/ready").json()
        assert ready == {"ready": True, "state": "idle", "model_loaded": True}
        with client.stream("GET", "/v1/loading/progress") as r:
            events = events_of(sse_data(r))
    assert events == [{"stage": "ready"}]


def test_loading_progress_streams_layers_from_start(spawn_worker, tiny_model: Path) -> None:
    worker = spawn_worker(tiny_model, wait_ready=False)
    with worker.client() as client, client.stream("GET", "/v1/loading/progress") as r:
        events = events_of(sse_data(r))
    assert events[-1] == {"stage": "ready"}
    layers = [e for e in events if e["stage"] == "loading_to_vram"]
    # A 2-layer model may load before the stream opens; when it does not, layers count up.
    for e in layers:
        assert e["layers_total"] == 2 and 0 <= e["layers_loaded"] <= 2
    assert [e["layers_loaded"] for e in layers] == sorted(e["layers_loaded"] for e in layers)


def test_corrupt_model_fails_with_reason(spawn_worker, corrupt_model: Path) -> None:
    worker = spawn_worker(corrupt_model, wait_ready=False)
    with worker.client() as client:
        wait_for(lambda: client.get("/v1/ready").json()["state"] == "failed")
        ready = client.get("/v1/ready").json()
        assert ready["ready"] is False
        assert "corrupt.gguf" in ready["error"]["message"]
        r = client.post("/v1/inference", json={"prompt": "hi"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "BACKEND_UNAVAILABLE"
        with client.stream("GET", "/v1/loading/progress") as s:
            events = events_of(sse_data(s))
        assert events[-1]["stage"] == "failed"
    assert worker.proc.poll() is None  # failed, not crashed
    assert worker.stop() == 0


# ---------------------------------------------------------------------------- cancel, slots


def test_cancel_by_delete_frees_the_slot(shared_worker: WorkerProcess) -> None:
    got, result = threading.Event(), {}
    thread = start_long_stream(shared_worker, "req-cancel-1", got, result)
    assert got.wait(10)
    with shared_worker.client() as client:
        sent = time.monotonic()
        assert client.delete("/v1/inference/req-cancel-1").status_code == 204
        freed_s = wait_for(lambda: slots_busy(shared_worker) == 0)
        log.info("slot free %.0f ms after DELETE", 1000 * (time.monotonic() - sent))
        assert client.delete("/v1/inference/req-cancel-1").status_code == 204  # idempotent
    thread.join(10)
    done = result["events"][-1]
    assert done["type"] == "done" and done["stop_reason"] == "canceled"
    assert done["total_tokens"] < 8192
    assert freed_s < 1.0  # the contract is < 200 ms; loose here for a loaded CI machine


def test_client_disconnect_cancels_generation(shared_worker: WorkerProcess) -> None:
    def canceled_count() -> float:
        text = httpx.get(f"{shared_worker.url}/metrics", headers=shared_worker.headers).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "rbee_worker_requests_total"
                    and sample.labels.get("outcome") == "canceled"
                ):
                    return sample.value
        return 0.0

    before = canceled_count()
    client = shared_worker.client()
    with client.stream(
        "POST",
        "/v1/inference",
        json={"prompt": "Once upon a time", "max_tokens": 8192, "temperature": 0},
    ) as r:
        lines = r.iter_lines()  # held: dropping the iterator would close the stream early
        for line in lines:
            if '"type": "token"' in line:
                break
        assert slots_busy(shared_worker) == 1
        client.close()  # the client goes away mid-stream
    freed_s = wait_for(lambda: slots_busy(shared_worker) == 0)
    assert freed_s < 1.0  # "disconnect noticed < 1 s"
    wait_for(lambda: canceled_count() == before + 1)


def test_503_when_all_slots_busy(spawn_worker, tiny_model: Path) -> None:
    worker = spawn_worker(tiny_model, "--slots", "1", "--ctx-size", str(LONG_CTX))
    got, result = threading.Event(), {}
    thread = start_long_stream(worker, "req-busy-1", got, result)
    assert got.wait(10)
    with worker.client() as client:
        r = client.post("/v1/inference", json={"prompt": "hello", "max_tokens": 4})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "ALL_SLOTS_BUSY"
        assert error["details"] == {"slots_total": 1, "slots_busy": 1}
        assert r.headers["retry-after"] == "1"
        client.delete("/v1/inference/req-busy-1")
    thread.join(10)
    assert result["status"] == 200


def test_two_streams_at_once_with_two_slots(shared_worker: WorkerProcess) -> None:
    results: list[list[dict]] = [[], []]
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        with shared_worker.client() as client:
            barrier.wait()
            results[i] = stream(client, max_tokens=64, temperature=0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for events in results:
        assert events[-1]["stop_reason"] == "max_tokens"
        assert events[-1]["total_tokens"] == 64
    # both ran concurrently: the same greedy prompt gives the same first token
    first = [next(e["token"] for e in ev if e["type"] == "token") for ev in results]
    assert first[0] == first[1]


# ---------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}]
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/inference"),
        ("GET", "/v1/ready"),
        ("GET", "/v1/loading/progress"),
        ("DELETE", "/v1/inference/x"),
        ("POST", "/v1/admin/shutdown"),
        ("GET", "/metrics"),
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
    ],
)
def test_401_without_the_right_key(
    shared_worker: WorkerProcess, headers: dict, method: str, path: str
) -> None:
    r = httpx.request(method, shared_worker.url + path, headers=headers, json={"prompt": "x"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "INVALID_API_KEY"
    assert KEY not in r.text


def test_health_needs_no_key(shared_worker: WorkerProcess) -> None:
    health = httpx.get(f"{shared_worker.url}/health").json()
    assert health["state"] == "idle" and health["slots_total"] == 2
    assert health["version"] == "0.1.0" and health["worker_id"].startswith("worker-")


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 8193}, "max_tokens"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "seed": -3}, "seed"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"prompt": "x", "request_id": "has space"}, "request_id"),
    ],
)
def test_bad_fields_get_400_naming_the_field(
    shared_worker: WorkerProcess, body: dict, field: str
) -> None:
    with shared_worker.client() as client:
        r = client.post("/v1/inference", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["details"]["field"] == field
    assert field in error["message"]


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_bodies_get_400(shared_worker: WorkerProcess, content: bytes) -> None:
    with shared_worker.client() as client:
        r = client.post(
            "/v1/inference", content=content, headers={"content-type": "application/json"}
        )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "INVALID_REQUEST"


def test_body_over_1_mb_gets_413(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        r = client.post("/v1/inference", json={"prompt": "x" * (1024 * 1024 + 10)})
    assert r.status_code == 413
    assert r.json()["error"]["details"]["max_bytes"] == 1024 * 1024


def test_prompt_longer_than_the_context_gets_400(spawn_worker, tiny_model: Path) -> None:
    worker = spawn_worker(tiny_model, "--ctx-size", "64")
    with worker.client() as client:
        r = client.post("/v1/inference", json={"prompt": "the story " * 400})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["details"]["field"] == "prompt"
    # llama.cpp rounds the context up to a multiple of 256
    assert error["details"]["n_ctx"] == 256
    assert error["details"]["prompt_tokens"] > 256


def test_a_prompt_longer_than_a_small_batch_is_served(spawn_worker, tiny_model: Path) -> None:
    """--ctx-size 64: llama.cpp pads the context to 256 cells but lowers its batch to 64, so a
    150-token prompt fits the context yet not one batch (found by fuzzing: the worker died on
    GGML_ASSERT(n_tokens_all <= cparams.n_batch))."""
    worker = spawn_worker(tiny_model, "--ctx-size", "64")
    with worker.client() as client:
        r = client.post(
            "/v1/inference", json={"prompt": "the story " * 75, "max_tokens": 4, "stream": False}
        )
        assert r.status_code == 200, r.text
        assert r.json()["total_tokens"] == 4
        assert client.get("/health").status_code == 200


def test_unknown_path_and_method_get_the_envelope(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        missing = client.get("/v1/nope")
        wrong = client.get("/v1/inference")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "INVALID_REQUEST"


# ---------------------------------------------------------------------------- metrics


def test_metrics_parse_with_prometheus_parser(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        stream(client, max_tokens=5, temperature=0)
        text = client.get("/metrics").text
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {
        "rbee_worker_tokens_generated_total",
        "rbee_worker_slots_busy",
        "rbee_worker_slots_total",
        "rbee_worker_time_to_first_token_seconds_count",
        "rbee_worker_tokens_per_second_count",
        "rbee_worker_requests_total",
    } <= names
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if not s.labels
    }
    assert samples["rbee_worker_tokens_generated_total"] >= 5
    assert samples["rbee_worker_slots_total"] == 2


# ---------------------------------------------------------------------------- shutdown


def test_shutdown_while_streaming_ends_the_stream_and_exits_0(
    spawn_worker, tiny_model: Path
) -> None:
    worker = spawn_worker(tiny_model, "--ctx-size", str(LONG_CTX), "--drain-timeout-s", "0.5")
    got, result = threading.Event(), {}
    thread = start_long_stream(worker, "req-shut-1", got, result)
    assert got.wait(10)
    with worker.client() as client:
        r = client.post("/v1/admin/shutdown")
        assert r.status_code == 202
        # no new work while draining
        busy = client.post("/v1/inference", json={"prompt": "x"})
        assert busy.status_code == 503
    thread.join(15)
    assert result["events"][-1]["stop_reason"] == "canceled"
    assert worker.proc.wait(15) == 0


def test_sigterm_lets_a_short_stream_finish(spawn_worker, tiny_model: Path) -> None:
    worker = spawn_worker(tiny_model, "--ctx-size", str(LONG_CTX), "--drain-timeout-s", "120")
    result: dict = {}

    def run() -> None:
        with worker.client() as client:
            result["events"] = stream(client, max_tokens=1000, temperature=0)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: slots_busy(worker) == 1)
    worker.proc.terminate()
    thread.join(120)
    assert result["events"][-1]["stop_reason"] == "max_tokens"  # drained, not cut
    assert worker.proc.wait(15) == 0
