"""HTTP/1.1 from the queen to its workers: kept-alive connections, and each answer's body
as it comes.

The queen's requests are all alike (a JSON POST to a worker it knows, an answer that is
one body or an SSE stream), so this speaks just that, over asyncio streams. httpx's
transport spent 1.25-1.48 ms of CPU on each request to a worker here, and this 0.1 ms
(docs/performance.md, "The queen's request path"); four requests sent together reach
their worker that much sooner, and a relayed token costs less of the cores that decode.

Errors say whether the request can have started on the worker: `Unreachable` (it did not:
it may go elsewhere), `UpstreamTimeout`, and `BrokeOff` (it did, and its answer stopped).
Their messages name no address: they reach clients, and the callers name the worker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import select
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from rbee.dataplane.protocol.wire import HTTP_IDLE_CLIENT_S

_HEAD_LIMIT = 64 * 1024  # a worker's status line and headers are far smaller
_IDLE_PER_WORKER = 32  # connections kept for reuse; the worker's slots bound those in use
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")  # printable ASCII: no line break to inject

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class UpstreamError(Exception):
    """The worker's answer could not be had."""


class Unreachable(UpstreamError):
    """The request never reached the worker (refused, timed out, or the connection failed
    before it was sent): it did not start there."""


class UpstreamTimeout(UpstreamError):
    """The worker took the request but did not answer (or went silent) in time."""


class BrokeOff(UpstreamError):
    """The worker took the request and its answer stopped (the process died, or the
    connection broke)."""


class UpstreamAnswer:
    """A worker's status and headers; its body to be read once, whole or as it comes."""

    def __init__(
        self,
        url: str,
        status_code: int,
        headers: dict[str, str],
        conn: _Connection,
        read_timeout_s: float,
        give_back: Callable[[_Connection], None],
    ) -> None:
        self.url = url
        self.status_code = status_code
        self.headers = headers  # names in lower case
        self.content = b""
        self._conn = conn
        self._read_timeout_s = read_timeout_s
        self._give_back = give_back
        self._complete = status_code in (204, 304)
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        # A body that ends with the connection leaves nothing to reuse.
        self._reusable = headers.get("connection", "").lower() != "close" and (
            self._complete or self._chunked or "content-length" in headers
        )
        self._closed = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as the worker sends them (a stream: one chunk per event)."""
        reader = self._conn[0]
        try:
            if self._complete:
                return
            if self._chunked:
                while True:
                    async with asyncio.timeout(self._read_timeout_s):
                        line = await reader.readuntil(b"\r\n")
                        size = int(line.split(b";", 1)[0], 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":
                                pass  # trailers: none are sent, none are needed
                            break
                        data = await reader.readexactly(size + 2)
                    if data[-2:] != b"\r\n":
                        raise ValueError("a chunk did not end where its size said")
                    yield data[:-2]
            elif "content-length" in self.headers:
                async with asyncio.timeout(self._read_timeout_s):
                    data = await reader.readexactly(int(self.headers["content-length"]))
                yield data
            else:  # the body ends with the connection
                while True:
                    async with asyncio.timeout(self._read_timeout_s):
                        data = await reader.read(64 * 1024)
                    if not data:
                        break
                    yield data
            self._complete = True
        except TimeoutError:
            raise UpstreamTimeout(f"nothing came for {self._read_timeout_s:g} s") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            raise BrokeOff("the answer broke off mid-body") from None
        except OSError as exc:
            raise BrokeOff(f"the connection broke ({_what(exc)})") from None

    async def aread(self) -> bytes:
        """The whole body (kept in `content`)."""
        self.content = b"".join([chunk async for chunk in self.aiter_raw()])
        return self.content

    def json(self) -> Any:
        """The body read by `aread`, as JSON."""
        return json.loads(self.content)

    def close(self) -> None:
        """Done with the answer: a connection whose answer was read whole is kept for the
        next request; one closed mid-answer tells the worker its client has gone."""
        if self._closed:
            return
        self._closed = True
        if self._complete and self._reusable:
            self._give_back(self._conn)
        else:
            self._conn[1].close()


class WorkerLinks:
    """The queen's connections to its workers, kept alive per host and port."""

    def __init__(self, *, idle_s: float = HTTP_IDLE_CLIENT_S) -> None:
        self._idle_s = idle_s  # shorter than the worker's keep-alive: it never closes first
        self._idle: dict[tuple[str, int], list[tuple[float, _Connection]]] = {}
        self._swept = time.monotonic()

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        api_key: str | None,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> UpstreamAnswer:
        """POSTs the JSON `body` to `url`; returns once the status and headers came (a
        whole answer's: `read_timeout_s` for them, and again for its body)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise Unreachable(f"not a worker's URL ({parts.scheme or 'no'} scheme)")
        if api_key is not None and not _HEADER_VALUE.fullmatch(api_key):
            raise Unreachable("the worker's key is not a header value")
        host, port = parts.hostname, parts.port or 80
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        key = (host, port)
        self._sweep()
        while (conn := self._take(key)) is not None:
            try:
                return await self._exchange(url, key, conn, request, read_timeout_s)
            except _NotSent:
                pass  # the worker had closed it while it was idle: the next one, or a new one
        try:
            async with asyncio.timeout(connect_timeout_s):
                conn = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
        except TimeoutError:
            raise Unreachable(f"no connection in {connect_timeout_s:g} s") from None
        except OSError as exc:
            raise Unreachable(_what(exc)) from None
        try:
            return await self._exchange(url, key, conn, request, read_timeout_s)
        except _NotSent as exc:
            raise Unreachable(str(exc)) from None

    def close(self) -> None:
        for idle in self._idle.values():
            for _, (_, writer) in idle:
                writer.close()
        self._idle.clear()

    def _give_back(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < _IDLE_PER_WORKER:
            idle.append((time.monotonic(), conn))
        else:
            conn[1].close()

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            since, conn = idle.pop()
            if self._fresh(since, conn, now) and not _readable(conn):
                return conn
            conn[1].close()
        return None

    def _sweep(self) -> None:
        """Closes connections idle too long, now and then: a stopped worker's are never
        taken again (a worker that starts anew listens on a new port)."""
        now = time.monotonic()
        if now - self._swept < self._idle_s:
            return
        self._swept = now
        for key, idle in list(self._idle.items()):
            for since, conn in idle:
                if not self._fresh(since, conn, now):
                    conn[1].close()
            kept = [(since, conn) for since, conn in idle if not conn[1].is_closing()]
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    def _fresh(self, since: float, conn: _Connection, now: float) -> bool:
        """Idle for less than the reuse window, and not closed by the worker as far as the
        event loop has seen."""
        return now - since < self._idle_s and not conn[0].at_eof()

    async def _exchange(
        self,
        url: str,
        key: tuple[str, int],
        conn: _Connection,
        request: bytes,
        read_timeout_s: float,
    ) -> UpstreamAnswer:
        """Sends the request and reads the answer's head. _NotSent when the request could
        not be written (on a kept-alive connection: the worker had closed it); once it was,
        the worker may have started it, and a failure is the answer's."""
        reader, writer = conn
        try:
            try:
                writer.write(request)
                async with asyncio.timeout(read_timeout_s):
                    await writer.drain()
            except OSError as exc:
                raise _NotSent(_what(exc)) from None
            async with asyncio.timeout(read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        except BaseException as exc:
            writer.close()  # whatever ended it, a client that left included
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no answer in {read_timeout_s:g} s") from None
            if isinstance(exc, asyncio.IncompleteReadError):
                broke = "in its headers" if exc.partial else "before it began"
                raise BrokeOff(f"the worker closed the connection {broke}") from None
            if isinstance(exc, asyncio.LimitOverrunError):
                raise BrokeOff("the answer's headers were too long") from None
            if isinstance(exc, (IndexError, ValueError)):
                raise BrokeOff("not an HTTP answer") from None
            if isinstance(exc, OSError):
                raise BrokeOff(f"the connection broke ({_what(exc)})") from None
            raise
        give_back = functools.partial(self._give_back, key)
        return UpstreamAnswer(url, status, headers, conn, read_timeout_s, give_back)


def _readable(conn: _Connection) -> bool:
    """Whether an idle connection has something to read: the worker's close (or bytes no
    request asked for), which the event loop may not have taken in yet."""
    poller = select.poll()
    poller.register(conn[1].get_extra_info("socket").fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _NotSent(Exception):
    """The request could not be written: it did not reach the worker."""


def _what(exc: BaseException) -> str:
    """What went wrong, without the address asyncio's messages carry (a client reads this)."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError):
        return "the connection failed"
    return type(exc).__name__
