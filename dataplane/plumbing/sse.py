"""Server-Sent Events as an ASGI response: each string from an iterator as one `data:` event,
a keep-alive comment on a quiet stream, and the iterator closed when the client goes away.

The worker sends one event per decode step on the cores that decode, so the per-event path is
kept to a lock and one `send` (sse-starlette added a cancel scope and an encoder object per
event: docs/performance.md measures the difference).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_PING = {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
_END = {"type": "http.response.body", "body": b"", "more_body": False}
_HEADERS = {
    "cache-control": "no-store",
    "x-accel-buffering": "no",  # proxies pass events on as they come
}


def encode(data: str) -> bytes:
    """One event; a line break in `data` starts another `data:` line of the same event."""
    if "\n" not in data:
        return f"data: {data}\n\n".encode()
    return "".join(f"data: {line}\n" for line in data.split("\n")).encode() + b"\n"


class EventStream(Response):
    """The response of one stream. `ping_s`: the longest silence before a keep-alive."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[str, None],
        *,
        ping_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._events = events
        self._ping_s = ping_s
        self.status_code = 200
        self.background = None
        self.init_headers(_HEADERS | dict(headers or {}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        streaming = asyncio.current_task()
        assert streaming is not None
        lock = asyncio.Lock()  # a keep-alive never lands inside an event
        last_sent = loop.time()
        gone = ended = False

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not ended:
                gone = True
                streaming.cancel()

        async def keep_alive() -> None:
            nonlocal last_sent
            while True:
                quiet = loop.time() - last_sent
                if quiet < self._ping_s:
                    await asyncio.sleep(self._ping_s - quiet)
                    continue
                async with lock:
                    await send(_PING)
                last_sent = loop.time()

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        helpers = [asyncio.create_task(watch_disconnect()), asyncio.create_task(keep_alive())]
        try:
            async for data in self._events:
                body = encode(data)
                async with lock:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                last_sent = loop.time()
            async with lock:
                await send(_END)
        except asyncio.CancelledError:
            # Our own cancel (the client left) ends the stream; any other goes on up.
            if not gone or streaming.uncancel() > 0:
                raise
        finally:
            ended = True
            for helper in helpers:
                helper.cancel()
            await self._events.aclose()  # its `finally` runs now, not when collected
            await asyncio.gather(*helpers, return_exceptions=True)
