"""The benchmarks' streaming client: HTTP/1.1 POSTs over kept-alive asyncio connections.

The client runs on the cores the server decodes on, so its CPU is taken from the server
it measures. httpx spent 0.43-0.49 ms of CPU a token reading an SSE stream on this
machine, this client 0.20-0.22 ms (docs/performance.md, "The bench's client"). It speaks
what the servers under test answer: a chunked body or a Content-Length one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
CONNECT_TIMEOUT_S = 30.0  # a stream itself may be silent as long as a prefill takes


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    _reader: asyncio.StreamReader
    complete: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self._reader.readline()).split(b";")[0], 16)
                data = await self._reader.readexactly(size + 2)  # and its CRLF
                if size == 0:
                    break
                yield data[:-2]
        elif "content-length" in self.headers:
            yield await self._reader.readexactly(int(self.headers["content-length"]))
        else:
            yield await self._reader.read()
        self.complete = True

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def sse_data(self) -> AsyncIterator[bytes]:
        """Each event's `data:` payload (one-line events: what the servers send)."""
        pending = b""
        async for chunk in self.chunks():
            pending = (pending + chunk).replace(b"\r\n", b"\n")  # sse-starlette's default
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        yield line[5:].strip()


class StreamClient:
    """One server's keep-alive connections; `headers` go with every request."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        self.base_url = base_url
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._head = f"Host: {host}:{self._port}\r\n{extra}".encode()
        self._idle: list[Connection] = []

    @asynccontextmanager
    async def post(self, path: str, body: object) -> AsyncIterator[Answer]:
        payload = json.dumps(body).encode()
        request = (
            f"POST {path} HTTP/1.1\r\n".encode()
            + self._head
            + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        conn, answer = await self._send(request)
        try:
            yield answer
        finally:
            if answer.complete and answer.headers.get("connection", "").lower() != "close":
                self._idle.append(conn)
            else:
                conn[1].close()

    async def _send(self, request: bytes) -> tuple[Connection, Answer]:
        while self._idle:  # a server may have closed an idle one: then try the next
            conn = self._idle.pop()
            try:
                return conn, await _exchange(conn, request)
            except (asyncio.IncompleteReadError, ConnectionError):
                conn[1].close()
        conn = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port), CONNECT_TIMEOUT_S
        )
        try:
            return conn, await _exchange(conn, request)
        except BaseException:
            conn[1].close()
            raise

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _exchange(conn: Connection, request: bytes) -> Answer:
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, reader)
