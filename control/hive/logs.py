"""The hive's own log lines, kept in memory for GET /v1/logs (and followed live)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

from rbee.dataplane.protocol.hive_api import LogLine


class LogBuffer(logging.Handler):
    """A logging handler that remembers the last lines and wakes followers on each new one.

    Records may come from any thread; followers live on the event loop.
    """

    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._lines: deque[LogLine] = deque(maxlen=capacity)
        self._loop = loop
        self._followers: set[asyncio.Queue[LogLine]] = set()
        self._seq = 0
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self._seq += 1
        line = LogLine(
            seq=self._seq,
            ts=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            level=record.levelname,
            logger=record.name,
            message=self.format(record),
        )
        self._lines.append(line)
        if self._followers:
            self._loop.call_soon_threadsafe(self._fan_out, line)

    def _fan_out(self, line: LogLine) -> None:
        for queue in self._followers:
            queue.put_nowait(line)

    def recent(self) -> list[LogLine]:
        return list(self._lines)

    async def follow(self) -> AsyncIterator[LogLine]:
        """The buffered lines, then every new one until the caller stops."""
        queue: asyncio.Queue[LogLine] = asyncio.Queue()
        self._followers.add(queue)
        try:
            seen = 0
            for line in self.recent():
                seen = line.seq
                yield line
            while True:
                line = await queue.get()
                if line.seq > seen:  # a line may be both in the snapshot and queued
                    yield line
        finally:
            self._followers.discard(queue)
