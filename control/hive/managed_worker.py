"""ManagedWorker: the hive's one object per worker process, its states and transitions.

It owns the child process (start, health probe, graceful stop escalating to SIGTERM and
SIGKILL) and everything the hive knows of it: pid, url, key, model, slots, last activity,
last health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from rbee.dataplane.plumbing.process_proof import KILL_WAIT_S
from rbee.dataplane.plumbing.state_machine import StateMachine
from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.hive_api import WorkerRow
from rbee.dataplane.protocol.states import ManagedState
from rbee.dataplane.protocol.worker_api import ReadyCallback, WorkerHealth
from rbee.dataplane.protocol.worker_client import WorkerClient
from rbee.dataplane.worker.settings import API_KEY_ENV as WORKER_KEY_ENV

from .worker_records import WorkerRecord

log = logging.getLogger(__name__)


M = ManagedState
MANAGED_TRANSITIONS: Mapping[ManagedState, frozenset[ManagedState]] = {
    M.STARTING: frozenset({M.LOADING, M.FAILED, M.DRAINING}),
    M.LOADING: frozenset({M.IDLE, M.BUSY, M.FAILED, M.UNRESPONSIVE, M.DRAINING, M.CRASHED}),
    M.IDLE: frozenset({M.BUSY, M.UNRESPONSIVE, M.DRAINING, M.CRASHED}),
    M.BUSY: frozenset({M.IDLE, M.UNRESPONSIVE, M.DRAINING, M.CRASHED}),
    # Back to whatever it reports when it answers again.
    M.UNRESPONSIVE: frozenset({M.LOADING, M.IDLE, M.BUSY, M.FAILED, M.DRAINING, M.CRASHED}),
    M.DRAINING: frozenset({M.STOPPED, M.CRASHED}),
    M.FAILED: frozenset({M.DRAINING, M.STOPPED}),
    M.STOPPED: frozenset(),
    M.CRASHED: frozenset(),
}
LIVE_STATES = frozenset({M.STARTING, M.LOADING, M.IDLE, M.BUSY, M.UNRESPONSIVE})
LOG_TAIL_LINES = 20


@dataclass
class WorkerSpec:
    model_ref: str
    model_path: Path
    backend: str = "cpu"
    device: int = 0
    slots: int = 1
    ctx_size: int = 2048
    chat_template: str | None = None  # a built-in's name: overrides the model's template
    ram_estimate_bytes: int = 0  # the preflight's estimate, counted while the worker loads


@dataclass
class ManagedWorker:
    worker_id: str
    spec: WorkerSpec
    log_path: Path
    record_path: Path  # see worker_records.py; exists while the process may run
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    url: str = ""
    pid: int | None = None
    slots_busy: int = 0
    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)  # wall clock, for the API
    last_health_check: float | None = None
    health_failures: int = 0
    error: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    serving: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self.machine = StateMachine(MANAGED_TRANSITIONS, M.STARTING, name=self.worker_id)

    @property
    def state(self) -> ManagedState:
        return self.machine.state

    def to(self, state: ManagedState) -> None:
        """Moves to `state`; a move the table refuses is logged and raises InvalidTransition."""
        self.machine.to(state)

    # ----------------------------------------------------------------- process

    def start(self, command: Sequence[str], *, host: str, callback_url: str) -> None:
        """Starts `rbee-worker` (`command` and its options) on this, the hive's main, thread.

        The worker's PR_SET_PDEATHSIG fires when the thread that forked it exits, so a worker
        started from a passing thread would die with that thread. The key travels on stdin:
        argv shows in `ps`, and the initial environment stays readable in /proc/PID/environ.
        Raises OSError when no process could be started (the executable is missing, say).
        """
        argv = [
            *command,
            "--model",
            str(self.spec.model_path),
            # Clients name the model by its reference, never by where this hive keeps it.
            "--model-id",
            self.spec.model_ref,
            "--host",
            host,
            "--port",
            "0",
            "--worker-id",
            self.worker_id,
            "--slots",
            str(self.spec.slots),
            "--ctx-size",
            str(self.spec.ctx_size),
            "--backend",
            self.spec.backend,
            "--device",
            str(self.spec.device),
            "--callback-url",
            callback_url,
            "--hive-pid",
            str(os.getpid()),
            "--api-key-stdin",
        ]
        if self.spec.chat_template is not None:
            argv += ["--chat-template", self.spec.chat_template]
        env = {k: v for k, v in os.environ.items() if k != WORKER_KEY_ENV}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                bufsize=0,  # unbuffered stdin: a worker that died at once fails the write only
            )
        self.pid = self._proc.pid
        self._write_record()
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once; the spawn sees it exit
            self._proc.stdin.write(f"{self.api_key}\n".encode())
        self._proc.stdin.close()
        log.info("worker %s started (pid %d) for %s", self.worker_id, self.pid, self.spec.model_ref)

    def serving_at(self, url: str) -> None:
        self.url = url
        if self.exited() is None:
            self._write_record()  # its command line is final now (see _write_record)

    def _write_record(self) -> None:
        """Records the process as the system shows it, not the argv it was started with: a
        launcher may re-exec (a macOS framework Python's venv runs .../Python.app/Contents/
        MacOS/Python), and the next hive compares against what psutil reports."""
        assert self.pid is not None
        try:
            process = psutil.Process(self.pid)
            started, argv = process.create_time(), tuple(process.cmdline())
        except psutil.Error:
            return  # already gone (or a zombie): nothing can survive
        try:
            WorkerRecord(
                self.worker_id, self.pid, started, argv, self.spec.model_ref, self.url
            ).write(self.record_path)
        except OSError as exc:  # the worker still dies with the hive; only the safety net is off
            log.warning(
                "worker %s: cannot write its record %s: %s", self.worker_id, self.record_path, exc
            )

    def exited(self) -> int | None:
        """The exit code once the process has ended (reaping it: a zombie counts as dead).

        The worker's record goes with the process.
        """
        code = self._proc.poll() if self._proc else None
        if code is not None:
            self.record_path.unlink(missing_ok=True)
        return code

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def probe(self, client: httpx.AsyncClient, timeout_s: float) -> WorkerHealth | None:
        """GET /health: the worker's own report, or None when it does not answer (or not with
        a health report)."""
        if not self.url:
            return None
        try:
            return await self._client(client).health(timeout_s=timeout_s)
        except (httpx.HTTPError, RemoteError):  # InvalidResponse too: not a health report
            return None

    async def stop(
        self, client: httpx.AsyncClient, *, graceful_s: float, terminate_s: float
    ) -> None:
        """Graceful shutdown, then SIGTERM, then SIGKILL; returns once the process is gone.

        A worker that did not take the shutdown request (frozen, or not serving) is not
        draining: it gets SIGTERM at once, not after the graceful period. Stopping a worker
        that has ended already does nothing."""
        if self.state in (M.STOPPED, M.CRASHED):
            return
        self.to(M.DRAINING)
        asked = False
        if self.exited() is None and self.url:
            try:
                await self._client(client).shutdown(timeout_s=5)
                asked = True
            except (httpx.HTTPError, RemoteError) as exc:
                log.warning("worker %s: shutdown request failed (%s): SIGTERM", self.worker_id, exc)
        if not await self._wait_exit(graceful_s if asked else 0):
            self._signal(signal.SIGTERM)
            if not await self._wait_exit(terminate_s):
                log.warning("worker %s did not stop: SIGKILL", self.worker_id)
                await self.kill()
        self.to(M.STOPPED)
        log.info("worker %s stopped", self.worker_id)

    def _client(self, http: httpx.AsyncClient) -> WorkerClient:
        """This worker's client, on the hive's connection pool."""
        return WorkerClient(self.url, self.api_key, http=http, peer=f"worker {self.worker_id}")

    async def kill(self) -> None:
        """SIGKILL, then reap it, so no <defunct> worker stays behind."""
        self._signal(signal.SIGKILL)
        if not await self._wait_exit(KILL_WAIT_S):
            log.error(
                "worker %s (pid %s) still runs %.0f s after SIGKILL",
                self.worker_id,
                self.pid,
                KILL_WAIT_S,
            )

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(sig)

    async def _wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.exited() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # ----------------------------------------------------------------- reports

    def observe(self, report: WorkerHealth | ReadyCallback) -> None:
        """Takes in the worker's /health answer (or its callback)."""
        self.last_health_check = time.time()
        self.health_failures = 0
        if isinstance(report, WorkerHealth):
            self.slots_busy = report.slots_busy
            self.last_activity = time.time() - report.idle_s
        reported = report.state
        if reported not in (M.IDLE, M.BUSY, M.LOADING, M.FAILED):
            return
        # A report can be older than what the hive knows: sent before the hive began to stop
        # the worker, or a probe's "loading" landing after the ready callback. The newer stands.
        if self.machine.can(M(reported)):
            self.to(M(reported))
        elif reported != self.state:
            log.debug(
                "worker %s: %s here, its report %s ignored", self.worker_id, self.state, reported
            )

    @property
    def idle_s(self) -> float:
        return 0.0 if self.slots_busy else time.time() - self.last_activity

    def row(self) -> WorkerRow:
        """This worker as the workers list shows it."""
        return WorkerRow(
            worker_id=self.worker_id,
            state=self.state,
            model_ref=self.spec.model_ref,
            url=self.url,
            pid=self.pid,
            backend=self.spec.backend,
            device=self.spec.device,
            slots_total=self.spec.slots,
            slots_busy=self.slots_busy,
            created_at=_iso(self.created_at),
            last_activity=_iso(self.last_activity),
            last_health_check=_iso(self.last_health_check) if self.last_health_check else None,
            error=self.error,
        )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
