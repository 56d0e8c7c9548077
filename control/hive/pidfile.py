"""The hive's pid file, `STATE_DIR/hive.pid`: which process is the hive, proven.

The hive holds an exclusive flock on the file for its whole life (the kernel drops it when
the process dies, however it dies) and writes its pid and start time into it. A process is
taken for the hive only when both hold: the lock is held, so a hive runs; and the recorded
pid is alive with the recorded start time, so the number was not reused. A pid alone proves
nothing: after a crash or a reboot the file names whatever process got that number next.
Pure Python (fcntl, psutil), so it runs on every node, macOS included (it has no flock(1)).
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path

import psutil

from .process_proof import KILL_WAIT_S, alive, started_at, wait_gone

NOT_RUNNING_EXIT = 3  # `rbee-hive pid`: no hive runs with that state dir (1 is an error)


class NotProven(RuntimeError):
    """A hive holds the pid file, but the file does not name it (it may be starting)."""


@dataclass(frozen=True)
class PidRecord:
    pid: int
    started: float | None  # the process's start time (epoch s); None in an older hive's file

    @classmethod
    def of(cls, process: psutil.Process) -> PidRecord:
        return cls(process.pid, process.create_time())

    def render(self) -> str:
        return f"{self.pid}\n{self.started:.3f}\n"

    @classmethod
    def parse(cls, text: str) -> PidRecord | None:
        fields = text.split()
        try:
            return cls(int(fields[0]), float(fields[1]) if len(fields) > 1 else None)
        except (IndexError, ValueError):
            return None

    def process(self) -> psutil.Process | None:
        """The live process this record names; None when it is gone or its pid was reused."""
        if self.started is not None:
            return started_at(self.pid, self.started)
        try:  # an older hive wrote only its pid: its command line must be a hive's
            process = psutil.Process(self.pid)
            argv = process.cmdline()
        except psutil.Error:
            return None
        is_hive = "daemon" in argv and any(arg.endswith("rbee-hive") for arg in argv)
        return process if is_hive and alive(process) else None


@dataclass(frozen=True)
class HiveCheck:
    """The running hive, proven; or none, with the record a dead hive left (if any)."""

    hive: psutil.Process | None
    stale: PidRecord | None = None

    def not_running(self) -> str:
        left = f" (stale hive.pid names pid {self.stale.pid}: left alone)" if self.stale else ""
        return f"rbee-hive is not running{left}"


def check(path: Path) -> HiveCheck:
    """Who holds the pid file. Changes nothing; NotProven when a hive holds it but the
    record does not name that hive."""
    try:
        handle = open(path)  # noqa: SIM115 - closed below, after the lock test
    except FileNotFoundError:
        return HiveCheck(None)
    with handle:
        try:
            # Shared and released at once: a hive starting in this instant fails to lock and
            # says another hive runs; it is started again, while a wrong kill is not undone.
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            locked = True
        else:
            fcntl.flock(handle, fcntl.LOCK_UN)
            locked = False
        record = PidRecord.parse(handle.read())
    if not locked:
        return HiveCheck(None, record)
    process = record.process() if record else None
    if process is None:
        named = f"pid {record.pid}" if record else "no pid"
        raise NotProven(
            f"a hive holds {path}, but it names {named}, which is not that hive; "
            "retry in a moment (it may be starting)"
        )
    return HiveCheck(process)


def stop(process: psutil.Process, grace_s: float) -> bool:
    """SIGTERM (the hive then stops its workers), SIGKILL past `grace_s`; True when it
    ended by itself. SIGCONT too: a stopped (SIGSTOP) process handles no SIGTERM.

    Returns once the process is gone (or KILL_WAIT_S after SIGKILL), so that a hive started
    right after does not find the old one still holding the pid file."""
    try:
        process.terminate()
        process.resume()
        if wait_gone([process], grace_s):
            return True
        process.kill()
    except psutil.NoSuchProcess:  # it ended between two looks
        return True
    if not wait_gone([process], KILL_WAIT_S):
        raise psutil.TimeoutExpired(KILL_WAIT_S, process.pid)
    return False
