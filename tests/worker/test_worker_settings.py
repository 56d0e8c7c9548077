"""The worker's defaults that depend on where it runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_threads_default_to_the_cores_the_worker_may_run_on() -> None:
    """A worker started under `taskset -c 0` (or in a container's cpuset) runs one decode
    thread, not one per core of the machine: llama.cpp's threads wait for each other at
    every step, and two on one core stall each other."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from rbee.dataplane.worker.settings import WorkerSettings; "
        "print(WorkerSettings('pkg:x').threads)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
