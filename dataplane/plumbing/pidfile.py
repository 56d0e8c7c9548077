"""A daemon's pid file (the hive's `STATE_DIR/hive.pid`, the queen's `$RBEE_HOME/queen.pid`):
which process is the daemon, proven.

The daemon holds an exclusive flock on the file for its whole life (the kernel drops it when
the process dies, however it dies) and writes its pid and start time into it. A process is
taken for the daemon only when both hold: the lock is held, so a daemon runs; and the
recorded pid is alive with the recorded start time, so the number was not reused. A pid alone
proves nothing: after a crash or a reboot the file names whatever process got that number
next. Pure Python (fcntl, psutil), so it runs on every node, macOS included (no flock(1)).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from .process_proof import KILL_WAIT_S, alive, started_at, wait_gone

NOT_RUNNING_EXIT = 3  # `rbee-hive pid`, `rbee queen status`: none runs (1 is an error)
_LOCK_TRIES = 3


class NotProven(RuntimeError):
    """A daemon holds the pid file, but the file does not name it (it may be starting)."""


class AlreadyRunning(RuntimeError):
    """Another daemon holds the pid file."""


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

    def process(self, legacy: Callable[[list[str]], bool] | None = None) -> psutil.Process | None:
        """The live process this record names; None when it is gone or its pid was reused.
        A record without a start time names a process only if `legacy` accepts its argv."""
        if self.started is not None:
            return started_at(self.pid, self.started)
        if legacy is None:
            return None
        try:
            process = psutil.Process(self.pid)
            argv = process.cmdline()
        except psutil.Error:
            return None
        return process if legacy(argv) and alive(process) else None


@dataclass(frozen=True)
class Holder:
    """The running daemon, proven; or none, with the record a dead one left (if any)."""

    process: psutil.Process | None
    stale: PidRecord | None = None


@dataclass(frozen=True)
class PidFile:
    path: Path
    daemon: str  # its name in messages: "rbee-hive", "rbee queen"
    where: str  # what the file belongs to, in messages: "state dir", "RBEE_HOME"
    # An older daemon's file held its pid only: its argv must then be the daemon's.
    legacy: Callable[[list[str]], bool] | None = None

    def check(self) -> Holder:
        """Who holds the pid file. Changes nothing; NotProven when a daemon holds it but the
        record does not name that daemon."""
        try:
            handle = open(self.path)  # noqa: SIM115 - closed below, after the lock test
        except FileNotFoundError:
            return Holder(None)
        with handle:
            try:
                # Shared and released at once: a daemon starting in this instant fails to lock
                # and says another runs; it is started again, while a wrong kill is not undone.
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                locked = True
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
                locked = False
            record = PidRecord.parse(handle.read())
        if not locked:
            return Holder(None, record)
        process = record.process(self.legacy) if record else None
        if process is None:
            named = f"pid {record.pid}" if record else "no pid"
            raise NotProven(
                f"a process holds {self.path}, but it names {named}, which is not "
                f"{self.daemon}; retry in a moment (it may be starting)"
            )
        return Holder(process)

    def not_running(self, holder: Holder) -> str:
        stale = holder.stale
        left = f" (stale {self.path.name} names pid {stale.pid}: left alone)" if stale else ""
        return f"{self.daemon} is not running{left}"

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Holds the exclusive lock for the life of the daemon; AlreadyRunning when another
        holds it. A lock, not just a file: the kernel releases it if the daemon dies, so a
        stale file never blocks a restart."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle: IO[str] = open(self.path, "a+")  # noqa: SIM115 - held open on purpose
        try:
            _lock_exclusive(handle)
        except BlockingIOError:
            handle.seek(0)
            other = PidRecord.parse(handle.read())
            handle.close()
            raise AlreadyRunning(
                f"another {self.daemon} (pid {other.pid if other else '?'}) is running\n"
                f"with {self.where} {self.path.parent}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(PidRecord.of(psutil.Process()).render())
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.close()


def stop(process: psutil.Process, grace_s: float) -> bool:
    """SIGTERM (the daemon then stops what it runs), SIGKILL past `grace_s`; True when it
    ended by itself. SIGCONT too: a stopped (SIGSTOP) process handles no SIGTERM.

    Returns once the process is gone (or KILL_WAIT_S after SIGKILL), so that a daemon started
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


def _lock_exclusive(handle: IO[str]) -> None:
    """The exclusive lock, or BlockingIOError when a daemon holds it. A `check()` holds the
    shared lock for an instant (`rbee queen start` checks every 100 ms while its queen
    starts): a few short retries tell that from a daemon, which holds it for its life."""
    for _ in range(_LOCK_TRIES - 1):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
