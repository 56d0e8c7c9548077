"""What a web page in the user's browser can do to a loopback hive or worker: nothing.

Real hive and worker processes; requests shaped as a browser sends them (a DNS-rebinding
page's Host, a cross-site Origin, a CORS "simple" text/plain body), and bodies no server
should choke on (JSON nested thousands deep).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import WorkerProcess
from support.hive_process import HiveProcess, start_hive

ATTACKER = "http://attacker.example"
NESTED = b"[" * 5000 + b"]" * 5000


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveProcess]:
    hive = start_hive(tmp_path_factory.mktemp("guard-hive"))
    yield hive
    hive.stop()


def spawn_body(model: Path) -> dict[str, str]:
    return {"model_ref": f"file:{model}"}


def test_a_cross_site_spawn_is_refused(hive: HiveProcess, tiny_model: Path) -> None:
    """The attack that worked: Host and Origin of another site, a text/plain body."""
    port = hive.url.rsplit(":", 1)[1]
    r = httpx.post(
        f"{hive.url}/v1/workers/spawn",
        content=b'{"model_ref": "pkg:x"}',
        headers={
            "Host": f"attacker.example:{port}",
            "Origin": ATTACKER,
            "Content-Type": "text/plain",
        },
    )
    assert r.status_code == 403, r.text
    assert "api_key" not in r.text
    assert httpx.get(f"{hive.url}/v1/workers/list").json()["workers"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example"},  # DNS rebinding: the page's own name, resolved to 127.0.0.1
        {"Origin": ATTACKER},  # a page posting across sites
        {"Origin": "null"},  # a sandboxed frame or a file: page
    ],
)
def test_a_browser_request_from_another_site_is_refused(
    hive: HiveProcess, tiny_model: Path, headers: dict[str, str]
) -> None:
    r = httpx.post(f"{hive.url}/v1/workers/spawn", json=spawn_body(tiny_model), headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    # Reads too: a rebinding page must not read the workers (and their URLs).
    assert httpx.get(f"{hive.url}/v1/workers/list", headers=headers).status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.1:1234", "localhost:80"])
def test_loopback_names_are_served(hive: HiveProcess, host: str) -> None:
    """A forwarded port (the keeper's SSH forwards) arrives with another port in Host."""
    r = httpx.get(f"{hive.url}/v1/health", headers={"Host": host})
    assert r.status_code == 200, r.text


def test_a_same_origin_request_is_served(hive: HiveProcess) -> None:
    host = hive.url.removeprefix("http://")
    r = httpx.get(f"{hive.url}/v1/workers/list", headers={"Origin": f"http://{host}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_json_body_must_say_so(
    hive: HiveProcess, tiny_model: Path, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(
        f"{hive.url}/v1/models/download",
        content=b'{"model_ref": "file:/nowhere.gguf"}',
        headers=headers,
    )
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert "application/json" in error["message"]


def test_json_with_a_charset_is_json(hive: HiveProcess) -> None:
    r = httpx.post(
        f"{hive.url}/v1/models/download",
        content=b'{"model_ref": 3}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 400  # read as JSON: the field is wrong, not the type
    assert r.json()["error"]["details"]["field"] == "model_ref"


@pytest.mark.parametrize("path", ["/v1/workers/spawn", "/v1/workers/ready", "/v1/models/download"])
def test_deeply_nested_json_gets_400_from_the_hive(hive: HiveProcess, path: str) -> None:
    r = httpx.post(
        f"{hive.url}{path}", content=NESTED, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    assert "Traceback" not in hive.log()


@pytest.mark.parametrize("path", ["/v1/inference", "/v1/completions", "/v1/chat/completions"])
def test_deeply_nested_json_gets_400_from_the_worker(
    shared_worker: WorkerProcess, path: str
) -> None:
    with shared_worker.client() as client:
        r = client.post(path, content=NESTED, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    assert "Traceback" not in shared_worker.log()


def test_the_worker_refuses_other_sites_too(shared_worker: WorkerProcess) -> None:
    with shared_worker.client() as client:
        for headers in ({"Host": "attacker.example"}, {"Origin": ATTACKER}):
            r = client.post(
                "/v1/inference", json={"prompt": "hi", "max_tokens": 1}, headers=headers
            )
            assert r.status_code == 403, r.text


def test_the_ready_callback_names_its_scheme_on_401(hive: HiveProcess) -> None:
    r = httpx.post(
        f"{hive.url}/v1/workers/ready",
        json={"worker_id": "worker-x", "state": "idle"},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("server", ["hive", "worker"])
def test_openapi_documents_every_route(
    server: str, hive: HiveProcess, shared_worker: WorkerProcess
) -> None:
    url = hive.url if server == "hive" else shared_worker.url
    doc = httpx.get(f"{url}/openapi.json").json()  # public, like /health
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    if server == "hive":
        spawn = paths["/v1/workers/spawn"]["post"]
        schema = spawn["requestBody"]["content"]["application/json"]["schema"]
        assert (
            "model_ref"
            in doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]["properties"]
        )
        assert "/v1/models/{ref}" in paths
        assert "security" not in paths["/v1/health"]["get"]
        assert answer_of(paths["/v1/workers/list"]["get"]) == "WorkersList"
        assert "workers" in doc["components"]["schemas"]["WorkersList"]["properties"]
    else:
        assert {
            "/v1/inference",
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/inference/{request_id}",
            "/health",
        } <= set(paths)
        assert paths["/v1/inference"]["post"]["security"] == [{"bearer": []}]
        assert answer_of(paths["/health"]["get"]) == "WorkerHealth"
        assert answer_of(paths["/v1/ready"]["get"]) == "WorkerReadiness"


def answer_of(operation: dict) -> str:
    """The name of the model an operation's 2xx JSON answer is documented by."""
    schema = operation["responses"]["2XX"]["content"]["application/json"]["schema"]
    return schema["$ref"].rsplit("/", 1)[1]
