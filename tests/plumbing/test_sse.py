"""EventStream at its ASGI boundary: events whole and in order, keep-alives on a quiet
stream, the client's disconnect ends it quietly, and a server's cancel still cancels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from rbee.dataplane.plumbing.sse import EventStream, encode


def test_an_event_is_data_lines_and_a_blank_line() -> None:
    assert encode('{"a": 1}') == b'data: {"a": 1}\n\n'
    assert encode("one\ntwo") == b"data: one\ndata: two\n\n"


class Client:
    """The ASGI server's side: what the stream sent, and a disconnect on demand."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def run(stream: EventStream, client: Client) -> asyncio.Task[None]:
    return asyncio.create_task(stream({"type": "http"}, client.receive, client.send))  # type: ignore[arg-type]


def test_events_then_the_end_of_the_body() -> None:
    async def events() -> AsyncGenerator[str, None]:
        for text in ("a", "b", "[DONE]"):
            yield text

    async def main() -> Client:
        client = Client()
        await run(EventStream(events(), ping_s=5, headers={"X-Request-Id": "r1"}), client)
        return client

    client = asyncio.run(main())
    start = client.sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"x-request-id", b"r1") in start["headers"]
    assert client.bodies() == [b"data: a\n\n", b"data: b\n\n", b"data: [DONE]\n\n", b""]
    assert client.sent[-1]["more_body"] is False


def test_a_quiet_stream_gets_keep_alives_between_events() -> None:
    async def events() -> AsyncGenerator[str, None]:
        yield "first"
        await asyncio.sleep(0.35)  # a long prefill
        yield "second"

    async def main() -> Client:
        client = Client()
        await run(EventStream(events(), ping_s=0.1, headers=None), client)
        return client

    bodies = asyncio.run(main()).bodies()
    assert bodies[0] == b"data: first\n\n"
    assert 2 <= bodies.count(b": ping\n\n") <= 4
    assert bodies[-2:] == [b"data: second\n\n", b""]


def test_a_client_that_leaves_closes_the_events_and_ends_the_response() -> None:
    closed = asyncio.Event()

    async def events() -> AsyncGenerator[str, None]:
        try:
            yield "first"
            await asyncio.sleep(60)  # the engine is still working
            yield "never"
        finally:
            closed.set()

    async def main() -> Client:
        client = Client()
        task = run(EventStream(events(), ping_s=5, headers=None), client)
        await asyncio.sleep(0.05)
        client.leave.set()
        await asyncio.wait_for(task, 2)  # returns: no CancelledError out of the response
        assert closed.is_set()
        return client

    assert asyncio.run(main()).bodies() == [b"data: first\n\n"]


def test_a_server_shutting_the_stream_down_still_cancels_it() -> None:
    closed = asyncio.Event()

    async def events() -> AsyncGenerator[str, None]:
        try:
            yield "first"
            await asyncio.sleep(60)
        finally:
            closed.set()

    async def main() -> None:
        task = run(EventStream(events(), ping_s=5, headers=None), Client())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed.is_set()

    asyncio.run(main())


def test_a_server_cancel_that_comes_with_the_clients_leaving_is_not_lost() -> None:
    async def events() -> AsyncGenerator[str, None]:
        yield "first"
        await asyncio.sleep(60)
        yield "never"

    async def main() -> None:
        client = Client()
        task = run(EventStream(events(), ping_s=5, headers=None), client)
        await asyncio.sleep(0.05)
        client.leave.set()
        await asyncio.sleep(0)  # the stream's watcher sees the disconnect and cancels...
        task.cancel()  # ...and the server shuts down before the stream has run again
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
