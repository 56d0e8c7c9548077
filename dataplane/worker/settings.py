"""The worker's settings and their defaults, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rbee.dataplane.protocol.hosts import is_loopback_host
from rbee.dataplane.protocol.wire import SSE_KEEPALIVE_S

DEFAULT_HOST = "127.0.0.1"
API_KEY_ENV = "RBEE_WORKER_API_KEY"


def usable_cores() -> int:
    """The cores this process may run on (taskset, a container's cpuset), not the machine's:
    llama.cpp's threads wait for each other at every step, so one more thread than cores
    stalls them all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS: no affinity, every core
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSettings:
    model_ref: str  # what it loads: pkg:NAME, file:/abs/path.gguf or a path
    # What the API names the model (/v1/models, answers' `model`, /health): the hive passes the
    # model's reference here while model_ref is the file it downloaded. None: model_ref.
    model_id: str | None = None
    host: str = DEFAULT_HOST
    port: int = 0  # 0: the OS picks a free port; the worker logs and reports its url
    worker_id: str = ""
    slots: int = 1
    ctx_size: int = 2048  # tokens of context per slot
    threads: int = field(default_factory=usable_cores)  # decode threads
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
    chat_template: str | None = None  # a built-in's name: overrides the model's own template

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def served_model(self) -> str:
        """The model's id in every answer."""
        return self.model_id or self.model_ref

    def serves(self, model: str) -> bool:
        """Whether a request's `model` names this worker's model: its id, or its file as
        --model gave it, as a path or a file: reference."""
        if model in (self.served_model, self.model_ref):
            return True
        if self.model_ref.startswith("pkg:"):
            return False
        path = os.path.abspath(Path(self.model_ref.removeprefix("file:")).expanduser())
        return model.removeprefix("file:") == path
