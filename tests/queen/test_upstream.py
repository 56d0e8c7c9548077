"""The queen's HTTP/1.1 to its workers, against a loopback server that answers as told:
bodies whole and streamed, kept-alive connections reused and renewed, and each way an
answer can fail named for what it means to the request (not started, timed out, broke)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from rbee.control.queen.upstream import (
    BrokeOff,
    Unreachable,
    UpstreamAnswer,
    UpstreamTimeout,
    WorkerLinks,
)

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@dataclass
class Worker:
    """Each request's head and body as the server read it, and on which connection."""

    reply: Reply
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/completions"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                self.requests.append((connection, head, body))
                await self.reply(reader, writer, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serving(reply: Reply) -> Worker:
    worker = Worker(reply)
    worker.server = await asyncio.start_server(worker.handle, "127.0.0.1", 0)
    return worker


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def whole(_r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nX-Request-Id: r1\r\n\r\n" % len(body))
    w.write(body)


async def streamed(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _body: bytes) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for event in (b"data: 1\n\n", b"data: 2\n\n"):
        w.write(chunk(event))
        await w.drain()
        await asyncio.sleep(0.02)
    w.write(b"0\r\n\r\n")


async def post(
    links: WorkerLinks, url: str, body: bytes = b"{}", read_s: float = 5.0
) -> UpstreamAnswer:
    return await links.post(url, body, api_key=None, connect_timeout_s=2, read_timeout_s=read_s)


def test_a_whole_body_and_the_connection_kept_for_the_next_request() -> None:
    async def main() -> None:
        worker = await serving(whole)
        links = WorkerLinks()
        for body in (b'{"a": 1}', b'{"a": 2}'):
            answer = await links.post(
                worker.url, body, api_key="k", connect_timeout_s=2, read_timeout_s=5
            )
            assert answer.status_code == 200
            assert answer.headers["x-request-id"] == "r1"
            assert await answer.aread() == body
            assert answer.json() == {"a": int(body[-2:-1])}
            answer.close()
        assert [conn for conn, _, _ in worker.requests] == [1, 1]
        head = worker.requests[0][1]
        assert b"Authorization: Bearer k\r\n" in head
        assert head.startswith(b"POST /v1/completions HTTP/1.1\r\n")
        links.close()

    asyncio.run(main())


def test_a_stream_comes_chunk_by_chunk_as_sent() -> None:
    async def main() -> None:
        worker = await serving(streamed)
        links = WorkerLinks()
        answer = await post(links, worker.url)
        loop = asyncio.get_running_loop()
        got = [(chunk, loop.time()) async for chunk in answer.aiter_raw()]
        assert [c for c, _ in got] == [b"data: 1\n\n", b"data: 2\n\n"]
        assert got[1][1] - got[0][1] >= 0.015  # not buffered until the end
        answer.close()
        again = await post(links, worker.url)
        await again.aread()
        assert worker.connections == 1
        links.close()

    asyncio.run(main())


def test_a_connection_the_worker_closed_while_idle_is_replaced_unnoticed() -> None:
    async def close_after(_r: asyncio.StreamReader, w: asyncio.StreamWriter, b: bytes) -> None:
        await whole(_r, w, b)
        await w.drain()
        w.close()  # as a worker's idle timeout does, later

    async def main() -> None:
        worker = await serving(close_after)
        links = WorkerLinks()
        for _ in range(3):
            answer = await post(links, worker.url)
            await answer.aread()
            answer.close()
        assert worker.connections == 3
        links.close()

    asyncio.run(main())


def test_no_worker_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused

    async def main() -> None:
        with pytest.raises(Unreachable) as refused:
            await post(WorkerLinks(), f"http://127.0.0.1:{port}/v1/completions")
        assert str(refused.value) == "Connection refused"  # no address: clients read it

    asyncio.run(main())


def test_a_worker_that_closes_without_an_answer_broke_off() -> None:
    async def vanish(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _b: bytes) -> None:
        w.close()

    async def main() -> None:
        worker = await serving(vanish)
        with pytest.raises(BrokeOff, match="closed the connection before it began"):
            await post(WorkerLinks(), worker.url)

    asyncio.run(main())


def test_a_stream_cut_mid_chunk_broke_off() -> None:
    async def cut(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _b: bytes) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        w.write(chunk(b"data: 1\n\n") + b"20\r\ndata: the rest never co")
        await w.drain()
        w.close()

    async def main() -> None:
        worker = await serving(cut)
        answer = await post(WorkerLinks(), worker.url)
        got = []
        with pytest.raises(BrokeOff):
            async for data in answer.aiter_raw():
                got.append(data)
        assert got == [b"data: 1\n\n"]
        answer.close()

    asyncio.run(main())


def test_a_worker_silent_mid_stream_times_out_and_its_connection_is_dropped() -> None:
    replies = 0

    async def silent_once(r: asyncio.StreamReader, w: asyncio.StreamWriter, b: bytes) -> None:
        nonlocal replies
        replies += 1
        if replies > 1:
            return await whole(r, w, b)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await r.read()  # silent until the client gives up

    async def main() -> None:
        worker = await serving(silent_once)
        links = WorkerLinks()
        answer = await post(links, worker.url, read_s=0.1)
        with pytest.raises(UpstreamTimeout):
            await answer.aread()
        answer.close()
        again = await post(links, worker.url)
        assert await again.aread() == b"{}"
        assert worker.connections == 2  # the silent one was not reused

    asyncio.run(main())


def test_a_worker_that_never_answers_times_out() -> None:
    async def mute(r: asyncio.StreamReader, _w: asyncio.StreamWriter, _b: bytes) -> None:
        await r.read()

    async def main() -> None:
        worker = await serving(mute)
        with pytest.raises(UpstreamTimeout):
            await post(WorkerLinks(), worker.url, read_s=0.1)

    asyncio.run(main())


def test_closing_an_answer_mid_stream_closes_the_connection() -> None:
    seen_close = asyncio.Event()

    async def endless(r: asyncio.StreamReader, w: asyncio.StreamWriter, _b: bytes) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
        await w.drain()
        await r.read()  # EOF: the client went away, as a worker sees a client leave
        seen_close.set()

    async def main() -> None:
        worker = await serving(endless)
        links = WorkerLinks()
        answer = await post(links, worker.url)
        async for _ in answer.aiter_raw():
            break
        answer.close()
        await asyncio.wait_for(seen_close.wait(), 2)

    asyncio.run(main())


def test_a_request_on_a_kept_connection_that_then_breaks_is_not_sent_again() -> None:
    """The worker took it (it may be running there): the answer broke, the request is not
    repeated on another connection."""
    replies = 0

    async def crash_second(r: asyncio.StreamReader, w: asyncio.StreamWriter, b: bytes) -> None:
        nonlocal replies
        replies += 1
        if replies == 1:
            return await whole(r, w, b)
        w.transport.abort()  # the worker died with the request in hand

    async def main() -> None:
        worker = await serving(crash_second)
        links = WorkerLinks()
        first = await post(links, worker.url)
        await first.aread()
        first.close()
        with pytest.raises(BrokeOff):
            await post(links, worker.url)
        assert len(worker.requests) == 2  # the first, and the second once

    asyncio.run(main())


def test_answers_that_end_the_connection_are_not_reused() -> None:
    async def closing(_r: asyncio.StreamReader, w: asyncio.StreamWriter, b: bytes) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(b))
        w.write(b)
        await w.drain()

    async def until_eof(_r: asyncio.StreamReader, w: asyncio.StreamWriter, b: bytes) -> None:
        w.write(b"HTTP/1.1 200 OK\r\n\r\n" + b)
        await w.drain()
        w.close()

    async def main() -> None:
        for reply in (closing, until_eof):
            worker = await serving(reply)
            links = WorkerLinks()
            for _ in range(2):
                answer = await post(links, worker.url, b'{"n": 1}')
                assert await answer.aread() == b'{"n": 1}'
                answer.close()
            assert worker.connections == 2, reply.__name__

    asyncio.run(main())


def test_a_client_that_leaves_while_the_worker_works_closes_the_connection() -> None:
    seen_close = asyncio.Event()

    async def slow(r: asyncio.StreamReader, _w: asyncio.StreamWriter, _b: bytes) -> None:
        await r.read()  # a whole answer still generating, until the queen hangs up
        seen_close.set()

    async def main() -> None:
        worker = await serving(slow)
        waiting = asyncio.create_task(post(WorkerLinks(), worker.url))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(seen_close.wait(), 2)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://127.0.0.1:1/v1/completions", None),
        ("http://127.0.0.1:1/v1/completions", "k\r\nX-Injected: 1"),
    ],
)
def test_what_cannot_be_sent_as_asked_is_refused_before_connecting(
    url: str, key: str | None
) -> None:
    async def main() -> None:
        with pytest.raises(Unreachable):
            await WorkerLinks().post(url, b"{}", api_key=key, connect_timeout_s=1, read_timeout_s=1)

    asyncio.run(main())
