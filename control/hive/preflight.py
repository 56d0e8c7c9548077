"""Checks before a worker is spawned: its context fits the model, its RAM fits the node, and
the backend and device exist."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from rbee.dataplane.plumbing.gguf_file import ModelInfo
from rbee.dataplane.protocol.states import ManagedState
from rbee.dataplane.protocol.wire import ApiError, ErrorCode
from rbee.dataplane.worker.settings import WorkerSettings

from .managed_worker import ManagedWorker

RAM_FACTOR = 1.2  # DESIGN §4: available RAM ≥ 1.2 × what the worker will hold
KV_BYTES_PER_VALUE = 2  # llama.cpp's default KV cache type, f16
LOGIT_BYTES = 4  # f32
MASK_BYTES_PER_CELL = 2  # f16 attention mask, one row per token of a batch
# A worker process before its model: Python, the HTTP server and llama.cpp's libraries
# (measured: 85 MB RSS with the tiny test model loaded; rounded up).
WORKER_BASE_BYTES = 100 << 20
# Devices a backend has, where the hive can know it without asking a driver: the CPU backend
# is one device, and Metal drives the Mac's one GPU.
_SINGLE_DEVICE_BACKENDS = ("cpu", "metal")


@dataclass(frozen=True)
class RamEstimate:
    """What a worker will hold, by part (bytes)."""

    model_bytes: int  # the GGUF, memory-mapped
    kv_cache_bytes: int  # K and V of every layer for every slot's context
    compute_bytes: int  # llama.cpp's compute and output buffers
    process_bytes: int = WORKER_BASE_BYTES

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.kv_cache_bytes + self.compute_bytes + self.process_bytes

    @property
    def required_mb(self) -> int:
        return int(self.total_bytes * RAM_FACTOR) >> 20

    def parts_mb(self) -> dict[str, int]:
        return {
            "model_mb": _mb(self.model_bytes),
            "kv_cache_mb": _mb(self.kv_cache_bytes),
            "compute_mb": _mb(self.compute_bytes),
            "process_mb": _mb(self.process_bytes),
        }


def estimate_ram(info: ModelInfo, *, slots: int, ctx_size: int) -> RamEstimate:
    """The worker's RAM from the GGUF's metadata, as llama.cpp's CPU backend allocates it.

    KV cache: every layer's K and V heads for every cell of every slot (llama.cpp keeps a
    full-size cache even for sliding-window layers by default). Compute: the logits of one
    batch over the whole vocabulary dominate (512 MB for a 262k vocabulary), plus the
    attention mask over one slot's context; the output buffer keeps one row of logits per
    slot. Checked against llama.cpp's own buffer sizes: exact for the KV cache, within 6 %
    for the compute buffer.
    """
    batch = max(WorkerSettings.batch_size, slots)  # the worker's batch (see LlamaEngine)
    kv = info.kv_values_per_token * ctx_size * slots * KV_BYTES_PER_VALUE
    compute = (
        batch * (info.vocab_size * LOGIT_BYTES + ctx_size * MASK_BYTES_PER_CELL)
        + slots * info.vocab_size * LOGIT_BYTES
    )
    return RamEstimate(info.size_bytes, kv, compute)


def context_size(info: ModelInfo, ctx_size: int, *, asked: bool) -> int:
    """The context per slot to run with: at most what the model was trained with.

    A size the client asked for beyond that is refused; the default is lowered to it.
    """
    trained = info.context_length
    if trained is None or ctx_size <= trained:
        return ctx_size
    if asked:
        raise ApiError(
            ErrorCode.INVALID_REQUEST,
            f"ctx_size {ctx_size} is more than the model's trained context ({trained} tokens); "
            f"ask for at most {trained} per slot",
            details={"field": "ctx_size", "ctx_size": ctx_size, "n_ctx_train": trained},
        )
    return trained


def available_ram_mb(budget_mb: int | None, workers: Iterable[ManagedWorker] = ()) -> int:
    """RAM a new worker may use: free RAM (capped by the budget, less what this hive's workers
    hold), less what workers still loading are about to take (their estimate, less what they
    hold already)."""
    held = pending = 0
    for worker in workers:
        if worker.state in (ManagedState.STOPPED, ManagedState.CRASHED):
            continue  # gone (and its pid may be another process's by now)
        rss = _rss(worker.pid)
        held += rss
        if worker.state in (ManagedState.STARTING, ManagedState.LOADING):
            pending += max(0, worker.spec.ram_estimate_bytes - rss)
    available = psutil.virtual_memory().available
    if budget_mb is not None:
        available = min(available, (budget_mb << 20) - held)
    return max(0, available - pending) >> 20


def check_ram(
    estimate: RamEstimate, budget_mb: int | None, workers: Iterable[ManagedWorker] = ()
) -> None:
    required = estimate.required_mb
    available = available_ram_mb(budget_mb, workers)
    if available < required:
        parts = estimate.parts_mb()
        raise ApiError(
            ErrorCode.INSUFFICIENT_RAM,
            f"Insufficient RAM: need {required} MB, have {available} MB "
            f"({RAM_FACTOR} × model {parts['model_mb']} + KV cache {parts['kv_cache_mb']} "
            f"+ compute {parts['compute_mb']} + process {parts['process_mb']} MB)",
            details={"required_mb": required, "available_mb": available, **parts},
        )


@functools.cache
def available_backends() -> tuple[str, ...]:
    """`cpu` always; the GPU backend only when this llama.cpp build can offload to it."""
    import llama_cpp  # loaded only when a GPU backend is asked for

    if not llama_cpp.llama_supports_gpu_offload():
        return ("cpu",)
    return ("cpu", "metal") if platform.system() == "Darwin" else ("cpu", "cuda")


def check_backend(backend: str) -> None:
    if backend == "cpu":
        return
    available = available_backends()
    if backend not in available:
        raise ApiError(
            ErrorCode.BACKEND_UNAVAILABLE,
            f"{backend.capitalize()} backend not available on this node "
            f"(available: {', '.join(available)})",
            details={"backend": backend, "available": list(available)},
        )


def check_device(backend: str, device: int) -> None:
    """`device` must exist; for CUDA the driver decides (llama.cpp reports a bad index)."""
    if backend in _SINGLE_DEVICE_BACKENDS and device != 0:
        raise ApiError(
            ErrorCode.INVALID_REQUEST,
            f"device {device} does not exist: the {backend} backend has one device, 0",
            details={"field": "device", "device": device, "backend": backend},
        )


def _rss(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _mb(n: int) -> int:
    return n >> 20
