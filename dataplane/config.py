"""The worker's settings and their defaults, in one place."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from .protocol import SSE_KEEPALIVE_S

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MODEL_REF = "pkg:gemma3-270m"
API_KEY_ENV = "RBEE_WORKER_API_KEY"

MAX_BODY_BYTES = 1024 * 1024  # a larger request body gets 413
MAX_TOKENS_LIMIT = 8192  # DESIGN §4: max_tokens 1–8192
DEFAULT_MAX_TOKENS = 256  # native API default when the client gives none
OPENAI_DEFAULT_MAX_TOKENS = 16  # /v1/completions default, as OpenAI's API


@dataclass(frozen=True)
class WorkerSettings:
    model_ref: str
    host: str = DEFAULT_HOST
    port: int = 0  # 0: the OS picks a free port; the worker logs and reports its url
    worker_id: str = ""
    slots: int = 1
    ctx_size: int = 2048  # tokens of context per slot
    threads: int = os.cpu_count() or 1
    batch_size: int = 512  # tokens per llama_decode call (prompt chunks + one per running stream)
    callback_url: str | None = None
    api_key: str | None = None
    backend: str = "cpu"
    device: int = 0
    # Weight repacking buffers (llama.cpp "extra bufts") crash quantised decodes on CPUs that
    # report AMX (llama.cpp #20824) and cost nothing measurable when off.
    extra_bufts: bool = False
    drain_timeout_s: float = 30.0  # graceful shutdown waits this long for in-flight streams
    sse_ping_s: float = SSE_KEEPALIVE_S  # keep-alive comments on quiet streams (long prefill)
    callback_attempts: int = 5

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
