"""The worker service (dataplane/worker/service.py): callbacks to the hive, responsiveness under
load."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import WorkerProcess


class CallbackRecorder(ThreadingHTTPServer):
    """A loopback stand-in for the hive's POST /v1/workers/ready."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], dict]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.calls.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/workers/ready"


@pytest.fixture
def recorder() -> Iterator[CallbackRecorder]:
    server = CallbackRecorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_callback_when_serving_and_when_ready(
    spawn_worker, tiny_model: Path, recorder: CallbackRecorder
) -> None:
    worker = spawn_worker(
        tiny_model,
        "--callback-url",
        recorder.url,
        "--worker-id",
        "worker-cb1",
        "--slots",
        "3",
        api_key="cb-key-1234",
    )
    deadline = time.monotonic() + 10
    while len(recorder.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [body["state"] for _h, body in recorder.calls] == ["loading", "idle"]
    for headers, body in recorder.calls:
        assert headers["Authorization"] == "Bearer cb-key-1234"
        assert body["worker_id"] == "worker-cb1"
        assert body["url"] == worker.url
        assert body["model_ref"] == str(tiny_model)
        assert (body["backend"], body["device"], body["slots_total"]) == ("cpu", 0, 3)


def test_callback_reports_a_failed_load(
    spawn_worker, corrupt_model: Path, recorder: CallbackRecorder
) -> None:
    spawn_worker(corrupt_model, "--callback-url", recorder.url, wait_ready=False)
    deadline = time.monotonic() + 10
    while len(recorder.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    final = recorder.calls[-1][1]
    assert final["state"] == "failed"
    assert "corrupt.gguf" in final["error"]["message"]


def test_health_answers_during_a_long_generation(shared_worker: WorkerProcess) -> None:
    started = threading.Event()

    def long_stream() -> None:
        with (
            shared_worker.client() as client,
            client.stream(
                "POST",
                "/v1/inference",
                json={
                    "prompt": "Once upon a time",
                    "max_tokens": 4000,
                    "temperature": 0,
                    "request_id": "req-health-1",
                },
            ) as r,
        ):
            for _line in r.iter_lines():
                started.set()

    thread = threading.Thread(target=long_stream)
    thread.start()
    assert started.wait(10)
    latencies = []
    with httpx.Client(base_url=shared_worker.url) as client:
        for _ in range(20):
            t0 = time.monotonic()
            assert client.get("/health").json()["slots_busy"] >= 1
            latencies.append(time.monotonic() - t0)
        client.delete("/v1/inference/req-health-1", headers=shared_worker.headers)
    thread.join(10)
    logging.getLogger(__name__).info(
        "/health during generation: max %.1f ms", max(latencies) * 1000
    )
    assert max(latencies) < 0.5
