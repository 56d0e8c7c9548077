"""A real `rbee-hive daemon` child process for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from conftest import BIN, free_port

from rbee.control.hive.settings import KEY_FILE


@dataclass
class HiveProcess:
    proc: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    log_path: Path
    api_key: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                for pid in self.worker_pids():
                    os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_hive(
    state_dir: Path,
    *args: str,
    api_key: str | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> HiveProcess:
    """`port`: the one a stopped hive had (its restart); by default a free one."""
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(BIN / "rbee-hive"),
        "daemon",
        "--addr",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state_dir),
        *args,
    ]
    if api_key:
        key_file = state_dir / KEY_FILE
        key_file.write_text(api_key)
        key_file.chmod(0o600)
        argv += ["--api-key-file", str(key_file)]
    return _launch(argv, state_dir, port, api_key, env)


# What `rbee-hive daemon` does, with HiveSettings fields that no flag sets.
_RUN_WITH_SETTINGS = """
import asyncio, json, logging, sys
from pathlib import Path
from rbee.control.hive.settings import HiveSettings
from rbee.control.hive.daemon import run_hive
from rbee.dataplane.plumbing.http import bind
fields = json.loads(sys.argv[1])
fields["state_dir"] = Path(fields["state_dir"])
fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
settings = HiveSettings(**fields)
with settings.pid_file.hold():
    asyncio.run(run_hive(settings, bind(settings.host, settings.port)))
"""


def start_hive_with_settings(state_dir: Path, **fields: object) -> HiveProcess:
    """A real hive process whose HiveSettings get `fields` (a worker command, health bounds)."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    fields = {"port": port, "state_dir": str(state_dir), **fields}
    argv = [str(BIN / "python"), "-c", _RUN_WITH_SETTINGS, json.dumps(fields)]
    return _launch(argv, state_dir, port, None, None)


def _launch(
    argv: list[str], state_dir: Path, port: int, api_key: str | None, env: dict[str, str] | None
) -> HiveProcess:
    log_path = state_dir / "hive-test.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    hive = HiveProcess(proc, f"http://127.0.0.1:{port}", state_dir, log_path, api_key)
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{hive.url}/v1/health", timeout=1)
            return hive
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"hive did not start\n{hive.log()}") from None
            time.sleep(0.05)
