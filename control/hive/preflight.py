"""Checks before a worker is spawned: enough RAM for the model, and the backend exists."""

from __future__ import annotations

import functools
import platform

import psutil

from rbee.dataplane.protocol import ApiError, ErrorCode

RAM_FACTOR = 1.2  # DESIGN §4: available RAM ≥ 1.2 × the model file


def available_ram_mb(budget_mb: int | None) -> int:
    available = psutil.virtual_memory().available >> 20
    return min(available, budget_mb) if budget_mb is not None else available


def check_ram(model_bytes: int, budget_mb: int | None) -> None:
    required = int(model_bytes * RAM_FACTOR) >> 20
    available = available_ram_mb(budget_mb)
    if available < required:
        raise ApiError(
            ErrorCode.INSUFFICIENT_RAM,
            f"Insufficient RAM: need {required} MB, have {available} MB",
            details={"required_mb": required, "available_mb": available},
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
