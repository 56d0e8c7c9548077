"""A ggml CPU threadpool for the llama.cpp context, made and attached through ctypes.

Without one, ggml's CPU backend builds a throwaway threadpool for every graph it computes: each
`llama_decode` starts n_threads - 1 new OS threads and joins them at the end, and the engine
thread waits for the new worker at ggml's barriers by spinning. On 2 cores, with the event-loop
thread also runnable, the worker is often not scheduled for milliseconds: a tiny model's decode
fell from ~3000 to ~100-250 tok/s, with 83 % of CPU time in ggml_barrier (perf). A threadpool of
our own, attached with `llama_attach_threadpool`, keeps its workers for the life of the context;
with a low poll level they go to sleep on a condition variable soon after a decode (ggml's
default level, 50, spins about 190 ms first, longer than a whole token). llama-cpp-python wraps
none of this, so the few functions and the one struct are declared here.

Everything here must be called on the thread that owns the context (the engine thread).
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

# ggml.h (llama.cpp as vendored by llama-cpp-python 0.3.36): `#define GGML_MAX_N_THREADS 512`,
# the length of the cpumask array that opens the struct. Checked against the struct size below.
GGML_MAX_N_THREADS = 512

# enum ggml_sched_priority (ggml.h). NORMAL keeps the thread's inherited policy; MEDIUM and up
# switch to SCHED_FIFO, which a spinning barrier could use to starve the event loop: not used.
GGML_SCHED_PRIO_NORMAL = 0


class _ThreadpoolParams(ctypes.Structure):
    """struct ggml_threadpool_params (ggml.h); 528 bytes on x86-64 and aarch64."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),  # all false: inherited affinity
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),  # enum ggml_sched_priority
        ("poll", ctypes.c_uint32),  # 0: sleep at once when idle, 100: spin the longest
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


# 512 + 3 * 4 + 2 = 526, padded to the int alignment: 528. ggml_threadpool_params_default
# copies exactly 0x210 (528) bytes into the caller's struct (checked in its disassembly). A
# mismatch would let ggml read or write past our struct, so refuse to load rather than guess.
if ctypes.sizeof(_ThreadpoolParams) != 528:
    raise ImportError(f"unexpected ggml_threadpool_params size {ctypes.sizeof(_ThreadpoolParams)}")


def _load() -> Any:
    """libllama as llama_cpp loaded it; the ggml symbols are looked up through it.

    dlsym on libllama's handle searches libllama and the libraries it was linked against
    (libggml-cpu.so.0, libggml-base.so.0), so these are the very copies that compute our graphs.
    The wheel ships `libggml-cpu.so` and `libggml-cpu.so.0` as two separate files, not a
    symlink: opening the first by path loaded a second copy of ggml's CPU backend, whose worker
    threads ran that copy's code with its own uninitialised state (no CPU_REPACK traits), which
    is what turned repacked matmuls into garbage and NaN on 2 threads.
    """
    lib = llama_cpp.llama_cpp._lib
    params_p = ctypes.POINTER(_ThreadpoolParams)
    lib.ggml_threadpool_params_init.argtypes = [params_p, ctypes.c_int]
    lib.ggml_threadpool_params_init.restype = None
    lib.ggml_threadpool_new.argtypes = [params_p]
    lib.ggml_threadpool_new.restype = ctypes.c_void_p
    lib.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
    lib.ggml_threadpool_free.restype = None
    lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.llama_attach_threadpool.restype = None
    lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    lib.llama_detach_threadpool.restype = None
    return lib


_lib = _load()


class QuietThreadpool:
    """A ggml CPU threadpool that lives as long as the context and whose idle workers sleep.

    `poll` is ggml's polling level: an idle worker spins 131072 * poll pause instructions before
    it sleeps (measured on a 2-vCPU AMD EPYC: about 4 ms per unit, so ggml's default 50 spins
    190 ms). 1, the default here, spans the gap between two decodes of a stream, so the worker is
    still running when the next graph starts instead of being woken late while the engine thread
    spins at ggml's first barrier; an idle worker sleeps about 4 ms after the last decode. 0
    sleeps at once but was measured slower and erratic for small fast models (late wake-ups).
    """

    def __init__(self, n_threads: int, *, poll: int = 1) -> None:
        if not 1 <= n_threads <= GGML_MAX_N_THREADS:
            raise ValueError(f"n_threads must be in 1..{GGML_MAX_N_THREADS}, not {n_threads}")
        params = _ThreadpoolParams()
        _lib.ggml_threadpool_params_init(ctypes.byref(params), n_threads)  # ggml's defaults...
        params.poll = poll  # ...except the polling level
        params.prio = GGML_SCHED_PRIO_NORMAL
        self.n_threads = n_threads
        self.poll = poll
        # ggml_threadpool_new starts the n_threads - 1 workers now (or aborts the process).
        self._tp: int | None = _lib.ggml_threadpool_new(ctypes.byref(params))
        if not self._tp:
            raise RuntimeError("ggml_threadpool_new failed")

    def attach(self, ctx: Any) -> None:
        """Makes ctx compute every graph (single-token and batched) on this pool.

        The context's n_threads must not exceed the pool's: ggml clamps it, with a warning.
        """
        if not self._tp:
            raise RuntimeError("the threadpool was freed")
        _lib.llama_attach_threadpool(ctx, self._tp, self._tp)

    def free(self, ctx: Any = None) -> None:
        """Detaches from ctx (if given) and stops and joins the workers.

        Call it after the last decode on ctx, best right after llama_free(ctx) (then pass no ctx):
        llama.cpp's CPU backend keeps the pool's pointer until its next graph compute, where it
        would pause the old pool, so a decode after free() would touch freed memory even with the
        detach.
        """
        if ctx is not None:
            _lib.llama_detach_threadpool(ctx)
        if self._tp:
            _lib.ggml_threadpool_free(self._tp)
            self._tp = None
