"""Proving a pid is the process we recorded, and waiting until it is gone.

A pid alone proves nothing: once its process ends, the number goes to whatever starts next.
A record that also holds the process's start time names one process for good. The pid files of
the hive and the queen (pidfile.py) and the hive's worker records rest on this.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psutil

# Start times are derived from the boot time, which a clock step moves; a reused pid within
# this margin of the original's start is not a practical worry.
START_TIME_TOLERANCE_S = 1.0
KILL_WAIT_S = 5.0  # after SIGKILL, how long a process may take to be gone
_POLL_S = 0.05


def alive(process: psutil.Process) -> bool:
    """Still running: a zombie has exited, only its parent's wait is missing."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_at(pid: int, started: float) -> psutil.Process | None:
    """The live process `pid` if it started at `started` (epoch s); None when it is gone, its
    pid was reused, or it is not ours to read."""
    try:
        process = psutil.Process(pid)
        same = abs(process.create_time() - started) <= START_TIME_TOLERANCE_S
    except psutil.Error:
        return None
    return process if same and alive(process) else None


def wait_gone(processes: Iterable[psutil.Process], timeout_s: float) -> bool:
    """Waits up to `timeout_s` until none of `processes` is alive; True when none is."""
    waiting = list(processes)
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in waiting):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True
