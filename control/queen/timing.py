"""Where a request's time went before its answer, as the queen tells it (`Server-Timing`,
docs/queen.md): waiting for a slot, for a worker's start, for that worker's load; then when
the worker took it, or (an answer sent whole) when its first token came."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# The worker's own time to the first token, in its whole answers' Server-Timing.
_WORKER_TTFT = re.compile(r"(?:^|,)\s*ttft\s*;(?:[^,]*;)?\s*dur=([0-9]+(?:\.[0-9]+)?)")


@dataclass(frozen=True)
class Waited:
    """A request's wait for a slot, in three parts that add up to the whole."""

    queue_s: float = 0.0  # for a slot to free (apart from the two below)
    spawn_s: float = 0.0  # for a worker of its model to be started by its node's hive
    load_s: float = 0.0  # for that worker to load the model

    @property
    def total_s(self) -> float:
        return self.queue_s + self.spawn_s + self.load_s

    def __add__(self, other: Waited) -> Waited:
        return Waited(
            self.queue_s + other.queue_s,
            self.spawn_s + other.spawn_s,
            self.load_s + other.load_s,
        )


def server_timing(
    waited: Waited, *, accept_s: float | None = None, ttft_s: float | None = None
) -> str:
    """The `Server-Timing` value: queue, spawn and load always; `accept` (a stream: from
    arrival until the worker took the request) and `ttft` (a whole answer: from arrival
    until its first token) when known."""
    parts = [
        f"queue;dur={_ms(waited.queue_s)}",
        f"spawn;dur={_ms(waited.spawn_s)}",
        f"load;dur={_ms(waited.load_s)}",
    ]
    if accept_s is not None:
        parts.append(f'accept;desc="a worker took it";dur={_ms(accept_s)}')
    if ttft_s is not None:
        parts.append(f"ttft;dur={_ms(ttft_s)}")
    return ", ".join(parts)


def worker_ttft_s(headers: Mapping[str, str]) -> float | None:
    """The worker's own time to the first token of a whole answer (its `Server-Timing`)."""
    found = _WORKER_TTFT.search(headers.get("server-timing", ""))
    return float(found.group(1)) / 1000 if found else None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"
