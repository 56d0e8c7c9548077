"""The wire models (dataplane/protocol): each round-trips through JSON, answers and events
tolerate fields a newer peer adds, requests keep their strictness, and what a real hive and a
real worker send validates against them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from conftest import events_of, sse_data, start_worker
from support.hive_process import HiveProcess, start_hive
from support.model_server import ModelServer

from rbee.dataplane.protocol.events import (
    INFERENCE_EVENT,
    Done,
    ErrorEvent,
    Loading,
    Queued,
    Routed,
    Spawning,
    Started,
    StopReason,
    Token,
)
from rbee.dataplane.protocol.hive_api import (
    DOWNLOAD_EVENT,
    DownloadAnswer,
    DownloadComplete,
    DownloadFailed,
    DownloadProgress,
    DownloadRequest,
    DownloadRetrying,
    HiveHealth,
    LogLine,
    LogLines,
    ModelEntry,
    ModelsList,
    SpawnAnswer,
    SpawnRequest,
    WorkerRow,
    WorkersList,
    WorkerStateAnswer,
)
from rbee.dataplane.protocol.states import ManagedState, WorkerState
from rbee.dataplane.protocol.wire import ErrorInfo, Message
from rbee.dataplane.protocol.worker_api import (
    LOADING_EVENT,
    InferenceAnswer,
    LoadingFailed,
    LoadingProgress,
    LoadingReady,
    ReadyCallback,
    ShutdownAnswer,
    WorkerHealth,
    WorkerReadiness,
)

KEY = "wire-models-key-7"
ERROR = ErrorInfo(code="BACKEND_UNAVAILABLE", message="model failed to load: bad file")
ROW = WorkerRow(
    worker_id="worker-ab12",
    state=ManagedState.UNRESPONSIVE,
    model_ref="file:/models/tiny.gguf",
    url="http://127.0.0.1:9301",
    pid=4242,
    backend="cpu",
    device=0,
    slots_total=2,
    slots_busy=1,
    created_at="2026-12-01T07:00:00Z",
    last_activity="2026-12-01T07:01:00Z",
    last_health_check=None,
    error=None,
)
ENTRY = ModelEntry(
    reference="file:/m/c.gguf",
    provider="file",
    local_path="/m/c.gguf",
    size_bytes=70_000,
    sha256="0" * 64,
    downloaded_at="2026-12-01T07:00:00+00:00",
)
LINE = LogLine(seq=3, ts="2026-12-01T07:00:00.123Z", level="INFO", logger="rbee", message="hi")

# One sample of every answer and event, with optional fields both set and left out.
ANSWERS: list[Message] = [
    WorkerHealth(
        state=WorkerState.BUSY,
        worker_id="worker-ab12",
        model_ref="file:/models/tiny.gguf",
        slots_total=2,
        slots_busy=1,
        idle_s=0.0,
        last_tokens_per_s=None,
        version="0.1.0",
    ),
    InferenceAnswer(
        request_id="req-1",
        model="pkg:gemma3-270m",
        text="Once upon a time",
        total_tokens=4,
        duration_ms=80,
        stop_reason=StopReason.MAX_TOKENS,
    ),
    ShutdownAnswer(state=WorkerState.DRAINING),
    WorkerReadiness(ready=True, state=WorkerState.IDLE, model_loaded=True),
    WorkerReadiness(
        ready=False,
        state=WorkerState.LOADING,
        progress_url="http://127.0.0.1:9301/v1/loading/progress",
        layers_loaded=3,
        layers_total=8,
    ),
    WorkerReadiness(ready=False, state=WorkerState.FAILED, error=ERROR),
    LoadingProgress(layers_loaded=3, layers_total=8, vram_mb=12),
    LoadingReady(),
    LoadingFailed(error=ERROR),
    HiveHealth(status="alive", version="0.1.0", api_version="v1"),
    HiveHealth(
        status="alive", version="0.1.0", api_version="v1", executable="/bin/rbee-hive", pid=7
    ),
    SpawnAnswer(
        worker_id="worker-ab12",
        url="http://127.0.0.1:9301",
        api_key="k" * 43,
        state=ManagedState.LOADING,
    ),
    WorkerStateAnswer(worker_id="worker-ab12", state=ManagedState.DRAINING),
    ROW,
    WorkersList(workers=[ROW], idle_timeout_s=300.0, ram_available_mb=2048),
    WorkersList(workers=[]),
    DownloadAnswer(download_id="dl-1", model_ref="hf:a/b:c.gguf", state="downloading"),
    DownloadAnswer(download_id="dl-1", model_ref="a", state="complete", local_path="/m/c.gguf"),
    DownloadProgress(bytes_downloaded=10, bytes_total=None, speed_mbps=1.5),
    DownloadRetrying(attempt=2, attempts=6, delay_ms=400, error="HTTP 503"),
    DownloadComplete(local_path="/m/c.gguf"),
    DownloadFailed(error=ErrorInfo(code="DOWNLOAD_FAILED", message="after 6 attempts")),
    ENTRY,
    ModelsList(models=[ENTRY]),
    LINE,
    LogLines(lines=[LINE]),
    Started(request_id="req-1", model="file:/models/tiny.gguf"),
    Token(token="Once", index=0),
    Done(total_tokens=20, duration_ms=1234, stop_reason=StopReason.MAX_TOKENS),
    ErrorEvent(error=ErrorInfo(code="WORKER_CRASHED", message="the worker died")),
    Queued(position=2),
    Spawning(node="gpu-1"),
    Loading(layers_loaded=12, layers_total=32),
    Routed(node="gpu-1", worker_id="worker-ab12"),
]
REQUESTS: list[BaseModel] = [
    SpawnRequest(model_ref="file:/m/c.gguf", slots=2, ctx_size=512),
    DownloadRequest(model_ref="hf:a/b"),
    ReadyCallback(worker_id="worker-ab12", state="idle", url="http://127.0.0.1:9301"),
    ReadyCallback(worker_id="worker-ab12", state="failed", error=ERROR, slots_total=1),
]
# How a stream's reader tells its events apart.
STREAMS: dict[type[Message], TypeAdapter[Any]] = {
    LoadingProgress: LOADING_EVENT,
    LoadingReady: LOADING_EVENT,
    LoadingFailed: LOADING_EVENT,
    DownloadProgress: DOWNLOAD_EVENT,
    DownloadRetrying: DOWNLOAD_EVENT,
    DownloadComplete: DOWNLOAD_EVENT,
    DownloadFailed: DOWNLOAD_EVENT,
    Started: INFERENCE_EVENT,
    Token: INFERENCE_EVENT,
    Done: INFERENCE_EVENT,
    ErrorEvent: INFERENCE_EVENT,
}


def _id(model: BaseModel) -> str:
    return type(model).__name__


@pytest.mark.parametrize("model", ANSWERS + REQUESTS, ids=_id)
def test_round_trips_through_json(model: BaseModel) -> None:
    kind = type(model)
    assert kind.model_validate_json(model.model_dump_json()) == model
    sent = model.wire() if isinstance(model, Message) else model.model_dump(mode="json")
    assert kind.model_validate(json.loads(json.dumps(sent))) == model
    if kind in STREAMS:
        assert STREAMS[kind].validate_json(json.dumps(sent)) == model


def test_every_message_has_a_sample() -> None:
    from rbee.dataplane.protocol import events, hive_api, worker_api

    defined = {
        obj
        for module in (events, hive_api, worker_api)
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == module.__name__
    }
    assert defined == {type(m) for m in ANSWERS + REQUESTS}


@pytest.mark.parametrize("model", ANSWERS, ids=_id)
def test_answers_and_events_tolerate_unknown_fields(model: Message) -> None:
    newer = {**model.wire(), "added_in_v2": {"any": ["thing"]}}
    assert type(model).model_validate(newer) == model
    if type(model) in STREAMS:
        assert STREAMS[type(model)].validate_python(newer) == model


def test_optional_fields_are_absent_or_null_as_sent_today() -> None:
    # Left out: the readiness, health and download answers' optional fields.
    assert WorkerReadiness(ready=True, state=WorkerState.IDLE, model_loaded=True).wire() == {
        "ready": True,
        "state": "idle",
        "model_loaded": True,
    }
    assert "pid" not in HiveHealth(status="alive", version="0.1.0", api_version="v1").wire()
    # Sent as null: a worker row's unknowns, and a download's unknown size.
    assert ROW.wire()["last_health_check"] is None and ROW.wire()["error"] is None
    assert DownloadProgress(bytes_downloaded=0, bytes_total=None, speed_mbps=0.0).wire() == {
        "stage": "downloading",
        "bytes_downloaded": 0,
        "bytes_total": None,
        "speed_mbps": 0.0,
    }


@pytest.mark.parametrize("kind", [SpawnRequest, DownloadRequest], ids=lambda k: k.__name__)
def test_requests_refuse_unknown_fields(kind: type[BaseModel]) -> None:
    with pytest.raises(ValidationError, match="extra_fields|Extra inputs"):
        kind.model_validate({"model_ref": "hf:a/b", "modle": "typo"})


def test_ready_callback_keeps_the_fields_it_does_not_know() -> None:
    sent = {"worker_id": "w", "state": "idle", "added_in_v2": 1}
    assert ReadyCallback.model_validate(sent).wire() == {"url": "", **sent}


def test_inference_events_are_sent_as_design_4_spells_them() -> None:
    assert Done(total_tokens=20, duration_ms=1234, stop_reason=StopReason.EOS).wire() == {
        "type": "done",
        "done": True,
        "total_tokens": 20,
        "duration_ms": 1234,
        "stop_reason": "eos",
        "cached_tokens": 0,  # rbee's addition: prompt tokens a slot's cache held
    }
    assert ErrorEvent(error=ErrorInfo(code="WORKER_CRASHED", message="gone")).wire() == {
        "type": "error",
        "error": {"code": "WORKER_CRASHED", "message": "gone"},
    }
    assert json.dumps(Token(token="Once", index=0).wire()) == (
        '{"type": "token", "token": "Once", "index": 0}'
    )


def test_a_stage_is_told_apart_and_a_wrong_one_refused() -> None:
    assert isinstance(LOADING_EVENT.validate_python({"stage": "ready"}), LoadingReady)
    with pytest.raises(ValidationError):
        LOADING_EVENT.validate_python({"stage": "loading_to_vram", "layers_loaded": "x"})
    with pytest.raises(ValidationError):
        DOWNLOAD_EVENT.validate_python({"stage": "complete"})  # no local_path


# ----------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def internet() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def hive(internet: ModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveProcess]:
    process = start_hive(
        tmp_path_factory.mktemp("wire-hive"), api_key=KEY, env={"HF_ENDPOINT": internet.url}
    )
    yield process
    assert process.stop() == 0


def _stream(client: httpx.Client, path: str, **params: str) -> list[dict[str, Any]]:
    with client.stream("GET", path, params=params) as response:
        assert response.status_code == 200, response.read()
        return events_of(sse_data(response))


def test_a_real_hive_and_its_worker_answer_as_the_models_say(
    hive: HiveProcess, internet: ModelServer, tiny_model: Path
) -> None:
    HiveHealth.model_validate(httpx.get(f"{hive.url}/v1/health").json())
    data = tiny_model.read_bytes()
    url = internet.add("/models/wire.gguf", data, bytes_per_s=len(data) * 2)
    with hive.client() as client:
        started = client.post("/v1/models/download", json={"model_ref": url})
        assert started.status_code == 202
        download = DownloadAnswer.model_validate(started.json())
        events = _stream(client, "/v1/models/download/progress", id=download.download_id)
        parsed = [DOWNLOAD_EVENT.validate_python(e) for e in events]
        assert isinstance(parsed[-1], DownloadComplete)
        # The answer as sent is the model's JSON: nothing added, dropped or renamed.
        assert [e.wire() for e in parsed] == events
        again = client.post("/v1/models/download", json={"model_ref": url}).json()
        assert DownloadAnswer.model_validate(again).wire() == again
        models = client.get("/v1/models").json()
        assert ModelsList.model_validate(models).wire() == models

        spawned = client.post("/v1/workers/spawn", json={"model_ref": url, "slots": 2})
        assert spawned.status_code == 200, spawned.text
        worker = SpawnAnswer.model_validate(spawned.json())
        listed = client.get("/v1/workers/list").json()
        assert WorkersList.model_validate(listed).wire() == listed

        headers = {"Authorization": f"Bearer {worker.api_key}"}
        with httpx.Client(base_url=worker.url, headers=headers, timeout=30) as to_worker:
            loading = [
                LOADING_EVENT.validate_python(e) for e in _stream(to_worker, "/v1/loading/progress")
            ]
            assert isinstance(loading[-1], LoadingReady)
            ready = to_worker.get("/v1/ready").json()
            assert WorkerReadiness.model_validate(ready).wire() == ready
            health = to_worker.get("/health").json()
            assert WorkerHealth.model_validate(health).wire() == health
            body = {"prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}
            with to_worker.stream("POST", "/v1/inference", json=body) as response:
                inference = events_of(sse_data(response))
            answer = [INFERENCE_EVENT.validate_python(e) for e in inference]
            assert isinstance(answer[0], Started) and isinstance(answer[-1], Done)
            assert [e.wire() for e in answer] == inference

        stopped = client.post(f"/v1/workers/{worker.worker_id}/shutdown").json()
        assert WorkerStateAnswer.model_validate(stopped).wire() == stopped
        logs = client.get("/v1/logs").json()
        assert LogLines.model_validate(logs).wire() == logs


def test_a_failed_download_streams_as_the_models_say(
    hive: HiveProcess, internet: ModelServer
) -> None:
    url = internet.add("/models/wire-broken.gguf", b"", status=503)
    with hive.client() as client:
        download = DownloadAnswer.model_validate(
            client.post("/v1/models/download", json={"model_ref": url}).json()
        )
        events = _stream(client, "/v1/models/download/progress", id=download.download_id)
    parsed = [DOWNLOAD_EVENT.validate_python(e) for e in events]
    assert {type(e) for e in parsed} == {DownloadRetrying, DownloadFailed}
    assert [e.wire() for e in parsed] == events


class _Callbacks(BaseHTTPRequestHandler):
    """Records the bodies POSTed to it: a stand-in for the hive's ready endpoint."""

    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("model", ["tiny_model", "corrupt_model"])
def test_a_real_workers_ready_callback_and_readiness_validate(
    model: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _Callbacks.bodies = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Callbacks)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    callback_url = f"http://127.0.0.1:{receiver.server_port}/v1/workers/ready"
    worker = start_worker(
        request.getfixturevalue(model),
        tmp_path,
        args=("--callback-url", callback_url),
        wait_ready=model == "tiny_model",
    )
    try:
        with worker.client() as client:
            events = _stream(client, "/v1/loading/progress")
            ready = client.get("/v1/ready").json()
        assert [LOADING_EVENT.validate_python(e).wire() for e in events] == events
        assert WorkerReadiness.model_validate(ready).wire() == ready
        # It calls back when it starts loading and again once it serves (or failed).
        wait = threading.Event()
        for _ in range(100):
            if len(_Callbacks.bodies) == 2:
                break
            wait.wait(0.05)
        callbacks = [ReadyCallback.model_validate(sent) for sent in _Callbacks.bodies]
        assert [c.wire() for c in callbacks] == _Callbacks.bodies
        expected = "idle" if model == "tiny_model" else "failed"
        assert [c.state for c in callbacks] == ["loading", expected]
    finally:
        worker.stop()
        receiver.shutdown()
        receiver.server_close()
