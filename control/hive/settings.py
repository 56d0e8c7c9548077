"""The hive's settings and their defaults, in one place."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from rbee.dataplane.plumbing.pidfile import PidFile
from rbee.dataplane.protocol.hive_api import WORKER_START_TIMEOUT_S
from rbee.dataplane.protocol.hosts import is_loopback_host

DEFAULT_ADDR = "127.0.0.1:8080"
DEFAULT_STATE_DIR = "~/.rbee/hive"
API_KEY_ENV = "RBEE_HIVE_API_KEY"
KEY_FILE = "hive.key"  # the hive's key in its state dir (mode 0600), as rbee writes it
PID_FILE = "hive.pid"  # which process is the hive, proven (pidfile.py)


@dataclass(frozen=True)
class HiveSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = Path(DEFAULT_STATE_DIR).expanduser()
    api_key: str | None = None
    idle_timeout_s: float = 300.0  # SPEC: a worker idle 5 minutes is shut down
    health_interval_s: float = 30.0  # SPEC: health every 30 s
    health_failures_allowed: int = 3  # SPEC: removed after 3 failed checks in a row
    health_timeout_s: float = 5.0
    worker_start_timeout_s: float = WORKER_START_TIMEOUT_S  # spawn → the worker's first callback
    graceful_stop_s: float = 30.0  # SPEC: graceful shutdown 30 s, then SIGTERM
    terminate_stop_s: float = 10.0  # SPEC: SIGTERM, 10 s, then SIGKILL
    ram_budget_mb: int | None = None  # caps the RAM preflight sees (a shared machine, tests)
    log_buffer_lines: int = 1000  # lines GET /v1/logs replays before following
    max_workers: int = 8  # a spawn past this many workers is refused
    # How a worker is started (its options follow); tests point it at a missing executable.
    worker_command: tuple[str, ...] = (sys.executable, "-m", "rbee.dataplane.worker")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def idle_check_interval_s(self) -> float:
        """SPEC checks idleness every 60 s; shorter timeouts are checked proportionally more."""
        return max(0.2, min(60.0, self.idle_timeout_s / 5))

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def workers_dir(self) -> Path:
        """One record per running worker, read by the next hive (worker_records.py)."""
        return self.state_dir / "workers"

    @property
    def catalog_path(self) -> Path:
        return self.state_dir / "catalog.db"

    @property
    def pid_file(self) -> PidFile:
        """`hive.pid`: which process is the hive, proven (dataplane/plumbing/pidfile.py)."""
        return PidFile(self.state_dir / PID_FILE, "rbee-hive", "state dir", _is_hive_argv)

    @property
    def key_path(self) -> Path:
        return self.state_dir / KEY_FILE

    @property
    def local_url(self) -> str:
        """How processes on this node (workers' callbacks) reach the hive."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


def _is_hive_argv(argv: list[str]) -> bool:
    """An older hive wrote only its pid to its file: its command line must be a hive's."""
    return "daemon" in argv and any(arg.endswith("rbee-hive") for arg in argv)
