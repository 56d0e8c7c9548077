"""What the runner tests (tests/keeper/test_runner.py, test_local_runner.py, test_ssh_runner.py)
share: running a coroutine to its end, and looking at the processes a command left behind."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _pid_state(pid: int) -> str | None:
    """ps's STAT for pid, or None when it is gone. A zombie (Z…) counts as dead: a killed
    process can stay one for a couple of seconds here before it is reaped."""
    out = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    state = out.stdout.strip()
    return state or None


def alive(pid: int) -> bool:
    state = _pid_state(pid)
    return state is not None and not state.startswith("Z")


def pids_with_arg(arg: str) -> list[int]:
    out = subprocess.run(
        ["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=False
    )
    pids = []
    for line in out.stdout.splitlines():
        pid, stat, args = line.strip().split(None, 2)
        if arg in args.split() and not stat.startswith("Z"):
            pids.append(int(pid))
    return pids
