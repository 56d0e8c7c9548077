"""One file per running worker, so a hive that starts after a crash finds the survivors.

`state_dir/workers/<worker_id>.json` holds what proves a process is that worker: its pid,
its start time and its exact command line as psutil reports it (never its key). A worker
normally dies with its hive (dataplane/worker/parent_watch.py); these records catch the rest (say, a
worker stuck in the kernel when its hive was killed). A starting hive stops every survivor it
can prove is its worker and leaves every other process alone, whatever pid a stale record
names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from rbee.dataplane.plumbing.process_proof import KILL_WAIT_S, alive, started_at, wait_gone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRecord:
    worker_id: str
    pid: int
    create_time: float  # psutil's process start time
    argv: tuple[str, ...]  # psutil's cmdline(), which a re-exec may make differ from the spawn's
    model_ref: str
    url: str = ""

    @classmethod
    def load(cls, path: Path) -> WorkerRecord:
        raw = json.loads(path.read_text())
        return cls(
            worker_id=str(raw["worker_id"]),
            pid=int(raw["pid"]),
            create_time=float(raw["create_time"]),
            argv=tuple(map(str, raw["argv"])),
            model_ref=str(raw["model_ref"]),
            url=str(raw.get("url", "")),
        )

    def write(self, path: Path) -> None:
        """Atomically, so a hive killed mid-write leaves the old record or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def process(self) -> psutil.Process | None:
        """The recorded process if it still runs and provably is this worker, else None."""
        proc = started_at(self.pid, self.create_time)
        try:
            same = proc is not None and tuple(proc.cmdline()) == self.argv
        except psutil.Error:  # gone since, or not ours to read
            return None
        return proc if same else None


def stop_survivors(directory: Path) -> None:
    """Stops (SIGKILL, as parent_watch would have) each recorded worker still running.

    Survivors are stopped, not adopted: their keys died with the old hive, so no client could
    be handed one, and the hive's bookkeeping (slots, idle time) would start from nothing.
    """
    survivors: list[tuple[psutil.Process, Path]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = WorkerRecord.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable worker record %s (%s): removed", path.name, exc)
            path.unlink(missing_ok=True)
            continue
        proc = record.process()
        if proc is None:
            log.info(
                "worker record %s is stale (pid %d is gone or is another process, "
                "left untouched): removed",
                path.name,
                record.pid,
            )
            path.unlink(missing_ok=True)
            continue
        log.warning(
            "worker %s (pid %d, %s) outlived a previous hive: stopping it, not adopting it",
            record.worker_id,
            record.pid,
            record.model_ref,
        )
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()  # psutil checks the start time again before it signals
        survivors.append((proc, path))
    wait_gone((proc for proc, _ in survivors), KILL_WAIT_S)
    for proc, path in survivors:
        if alive(proc):
            # Kept, so the next start tries again; the process is proven to be ours.
            log.error("worker pid %d still runs %.0f s after SIGKILL", proc.pid, KILL_WAIT_S)
            continue
        path.unlink(missing_ok=True)
        log.info("worker pid %d stopped", proc.pid)
