"""WorkerClient (dataplane/protocol/worker_client.py) against a real worker."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

import httpx
import pytest

from conftest import WorkerProcess

from rbee.dataplane.protocol.client import InvalidResponse, RemoteError
from rbee.dataplane.protocol.events import Done, InferenceEvent, Started, StopReason, Token
from rbee.dataplane.protocol.worker_api import LoadingEvent, LoadingReady
from rbee.dataplane.protocol.worker_client import WorkerClient


def client_for(worker: WorkerProcess, key: str | None = "use-worker-key") -> WorkerClient:
    return WorkerClient(worker.url, worker.api_key if key == "use-worker-key" else key)


def test_health_ready_and_wait_ready(shared_worker: WorkerProcess) -> None:
    async def main() -> None:
        async with client_for(shared_worker) as client:
            assert (await client.health()).state in ("idle", "busy")
            assert (await client.ready()).ready is True
            seen: list[LoadingEvent] = []
            await client.wait_ready(timeout_s=5, on_progress=seen.append)
            assert seen[-1] == LoadingReady()

    asyncio.run(main())


def test_stream_yields_the_events_in_order(shared_worker: WorkerProcess) -> None:
    async def main() -> list[InferenceEvent]:
        async with client_for(shared_worker) as client:
            return [e async for e in client.stream("Once upon a time", max_tokens=5, temperature=0)]

    events = asyncio.run(main())
    assert [type(e) for e in events] == [Started] + [Token] * 5 + [Done]


def test_errors_become_worker_errors(shared_worker: WorkerProcess) -> None:
    async def main() -> None:
        async with client_for(shared_worker, key="wrong") as client:
            with pytest.raises(RemoteError) as info:
                await client.ready()
            assert (info.value.code, info.value.status) == ("INVALID_API_KEY", 401)
        async with client_for(shared_worker) as client:
            with pytest.raises(RemoteError) as info:
                async for _ in client.stream("x", max_tokens=0):
                    pass
            assert info.value.code == "INVALID_REQUEST"
            assert info.value.details["field"] == "max_tokens"

    asyncio.run(main())


def test_cancel_ends_the_stream_as_canceled(shared_worker: WorkerProcess) -> None:
    async def main() -> Done:
        async with client_for(shared_worker) as client:
            events = client.stream(
                "Once upon a time", max_tokens=8192, temperature=0, request_id="req-client-1"
            )
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Token) and event.index == 3:
                        await client.cancel("req-client-1")
                    if isinstance(event, Done):
                        return event
        raise AssertionError("no done event")

    assert asyncio.run(main()).stop_reason is StopReason.CANCELED


def _stand_in(*events: dict) -> httpx.MockTransport:
    """A worker whose inference stream sends `events`, then `[DONE]`."""
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    headers = {"content-type": "text/event-stream"}
    return httpx.MockTransport(lambda _request: httpx.Response(200, headers=headers, text=body))


def _stream_from(transport: httpx.MockTransport) -> list[InferenceEvent]:
    async def main() -> list[InferenceEvent]:
        async with httpx.AsyncClient(transport=transport) as http:
            client = WorkerClient("http://worker.test", "k", http=http)
            return [e async for e in client.stream("hi")]

    return asyncio.run(main())


def test_stream_skips_a_type_it_does_not_know_and_refuses_a_known_one_garbled() -> None:
    """A newer peer's event (the queen's timeline, say) is skipped, as an unknown field is."""
    started = {"type": "started", "request_id": "r", "model": "m", "added_in_v2": 1}
    token = {"type": "token", "token": "Hi", "index": 0}
    done = {"type": "done", "done": True, "total_tokens": 1, "duration_ms": 5, "stop_reason": "eos"}
    events = _stream_from(_stand_in({"type": "queued", "position": 1}, started, token, done))
    assert [type(e) for e in events] == [Started, Token, Done]
    with pytest.raises(InvalidResponse):
        _stream_from(_stand_in(started, {"type": "done", "total_tokens": "many"}))
