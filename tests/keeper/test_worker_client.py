"""WorkerClient (control/keeper/worker_client.py) against a real worker."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from conftest import WorkerProcess

from rbee.control.keeper.api_client import RemoteError
from rbee.control.keeper.worker_client import WorkerClient
from rbee.dataplane.protocol.worker_api import LoadingEvent, LoadingReady


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
    async def main() -> list[dict]:
        async with client_for(shared_worker) as client:
            return [e async for e in client.stream("Once upon a time", max_tokens=5, temperature=0)]

    events = asyncio.run(main())
    assert [e["type"] for e in events] == ["started"] + ["token"] * 5 + ["done"]


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
    async def main() -> dict:
        async with client_for(shared_worker) as client:
            events = client.stream(
                "Once upon a time", max_tokens=8192, temperature=0, request_id="req-client-1"
            )
            async with aclosing(events):
                async for event in events:
                    if event["type"] == "token" and event["index"] == 3:
                        await client.cancel("req-client-1")
                    if event["type"] == "done":
                        return event
        raise AssertionError("no done event")

    assert asyncio.run(main())["stop_reason"] == "canceled"
