"""The dashboard's settings and their defaults. The refresh interval's default belongs to the
keeper's probes, so that `rbee tui --help` can name it without importing the dashboard."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rbee.control.keeper.settings import DEFAULT_REFRESH_S

SPARKLINE_REQUESTS = 30  # tokens/s of this many recent requests in the sparkline
LOG_LINES = 500  # the log panel keeps this many lines
STREAM_MAX_TOKENS = 200  # per prompt from the stream panel
# The answer is repainted at most this often, not per token: re-wrapping the whole answer for
# every token took enough CPU to halve a local worker's speed on 2 cores (27 against ~50 tok/s).
ANSWER_REPAINT_S = 0.1
WORKER_LOAD_TIMEOUT_S = 300.0  # a worker spawned from the dashboard loads its model within


@dataclass(frozen=True)
class TuiConfig:
    refresh_s: float = DEFAULT_REFRESH_S
    max_tokens: int = STREAM_MAX_TOKENS
    # What "last checked" reads; a fixed clock makes screenshots repeatable.
    clock: Callable[[], float] = field(default=time.time)
