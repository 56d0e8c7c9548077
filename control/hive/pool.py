"""WorkerPool: the hive's workers, how they are spawned, watched and stopped."""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid

import httpx

from rbee.dataplane.protocol.states import SERVING_STATES, ManagedState, WorkerState
from rbee.dataplane.protocol.wire import ApiError, ErrorCode
from rbee.dataplane.protocol.worker_api import ReadyCallback

from .managed_worker import LIVE_STATES, ManagedWorker, WorkerSpec
from .settings import HiveSettings

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, settings: HiveSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self._http = http
        self._workers: dict[str, ManagedWorker] = {}
        self.crashes = 0

    def list(self) -> list[ManagedWorker]:
        """The workers; one whose process has ended is removed as crashed first (with its log's
        last lines logged), so no answer lists a dead worker as live until the health loop's
        next pass. Starting workers are the spawn's to judge."""
        for worker in [
            w
            for w in self._workers.values()
            if w.state in LIVE_STATES and w.state is not ManagedState.STARTING
        ]:
            if (code := worker.exited()) is not None:
                self._crashed(worker, f"its process exited with code {code}")
        return list(self._workers.values())

    def get(self, worker_id: str) -> ManagedWorker:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise ApiError(
                ErrorCode.NOT_FOUND,
                f"no worker {worker_id} on this hive",
                details={"worker_id": worker_id},
            )
        return worker

    # ----------------------------------------------------------------- spawn

    async def spawn(self, spec: WorkerSpec) -> ManagedWorker:
        """Starts a worker and returns once it serves HTTP (its model still loading).

        A worker that dies or stays silent while starting is removed and reported with the
        last lines of its log, never left behind as a ghost.
        """
        self.check_capacity()
        worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        worker = ManagedWorker(
            worker_id,
            spec,
            self.settings.logs_dir / f"{worker_id}.log",
            self.settings.workers_dir / f"{worker_id}.json",
        )
        try:
            worker.start(
                self.settings.worker_command,
                host=self.settings.host,
                callback_url=f"{self.settings.local_url}/v1/workers/ready",
            )
        except OSError as exc:
            log.error("cannot start worker %s: %s", worker_id, exc)
            raise ApiError(
                ErrorCode.WORKER_CRASHED,
                f"cannot start a worker process ({exc.strerror}: {exc.filename}); this hive's "
                "installation may have moved or been removed: restart the hive",
                details={"command": list(self.settings.worker_command)},
            ) from None
        self._workers[worker_id] = worker
        serving = asyncio.ensure_future(worker.serving.wait())
        try:
            timeout_s = self.settings.worker_start_timeout_s
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not serving.done():
                if worker.exited() is not None:
                    raise self._start_failure(worker, f"exited with code {worker.exited()}")
                if asyncio.get_running_loop().time() > deadline:
                    await worker.kill()
                    raise self._start_failure(worker, f"did not answer within {timeout_s:.0f} s")
                await asyncio.wait({serving}, timeout=0.05)
        finally:
            serving.cancel()
        return worker

    def check_capacity(self) -> None:
        """Refuses a spawn past --max-workers (every worker the hive holds counts)."""
        cap = self.settings.max_workers
        if len(self._workers) >= cap:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"this hive already runs {len(self._workers)} workers, its cap "
                f"(--max-workers {cap}): shut one down first, or restart the hive with a "
                "higher --max-workers",
                status=409,
                details={"max_workers": cap, "workers": len(self._workers)},
            )

    def _start_failure(self, worker: ManagedWorker, why: str) -> ApiError:
        # Not when a stop began meanwhile (a DELETE, the hive shutting down): its states stand.
        if worker.machine.can(ManagedState.FAILED):
            worker.to(ManagedState.FAILED)
        self._workers.pop(worker.worker_id, None)
        tail = worker.log_tail()
        log.error("worker %s failed to start: %s\n%s", worker.worker_id, why, tail)
        return ApiError(
            ErrorCode.WORKER_CRASHED,
            f"the worker {why} while starting",
            details={"worker_id": worker.worker_id, "log_tail": tail},
        )

    # ----------------------------------------------------------------- callbacks

    def accept_callback(self, presented_key: str, report: ReadyCallback) -> ManagedWorker:
        """A worker's POST /v1/workers/ready, checked against that worker's own key."""
        worker = self._workers.get(report.worker_id)
        # Compare even when the id is unknown, so timing says nothing about which ids exist.
        expected = worker.api_key if worker else "x" * 43
        if not hmac.compare_digest(presented_key.encode(), expected.encode()) or worker is None:
            raise ApiError(ErrorCode.INVALID_API_KEY, "not a worker of this hive, or a wrong key")
        if report.url:
            worker.serving_at(report.url)
        state = report.state
        if (
            state in (WorkerState.LOADING, *SERVING_STATES)
            and worker.state is ManagedState.STARTING
        ):
            # Its first report: the table's way towards serving. Later reports find it loading
            # or further on (a probe saw it serve, or a stop began), and the newer view stands.
            worker.to(ManagedState.LOADING)
        if state in SERVING_STATES:
            worker.observe(report)
            log.info("worker %s ready at %s", worker.worker_id, worker.url)
        elif state == WorkerState.FAILED:
            worker.error = report.error.message if report.error else "load failed"
            if worker.machine.can(ManagedState.FAILED):  # not once a stop began
                worker.to(ManagedState.FAILED)
            log.error("worker %s failed to load its model: %s", worker.worker_id, worker.error)
        worker.serving.set()
        return worker

    # ----------------------------------------------------------------- stop

    async def stop(self, worker_id: str) -> ManagedWorker:
        worker = self.get(worker_id)
        await worker.stop(
            self._http,
            graceful_s=self.settings.graceful_stop_s,
            terminate_s=self.settings.terminate_stop_s,
        )
        self._workers.pop(worker_id, None)
        return worker

    async def stop_all(self) -> None:
        """Every worker at once (graceful, then signals after the bounds)."""
        await asyncio.gather(*(self.stop(w.worker_id) for w in self.list()), return_exceptions=True)

    # ----------------------------------------------------------------- loops

    async def check_health(self) -> None:
        """One pass of the health loop: dead or silent workers are removed as crashed."""
        await asyncio.gather(
            *(
                self._check(w)
                for w in self.list()
                if w.state in LIVE_STATES and w.state is not ManagedState.STARTING
            )
        )

    async def _check(self, worker: ManagedWorker) -> None:
        code = worker.exited()
        if code is not None:
            self._crashed(worker, f"its process exited with code {code}")
            return
        health = await worker.probe(self._http, self.settings.health_timeout_s)
        if health is not None:
            worker.observe(health)
            return
        if worker.state not in LIVE_STATES:
            return  # stopped or removed while the probe waited
        worker.health_failures += 1
        worker.to(ManagedState.UNRESPONSIVE)
        log.warning(
            "worker %s missed a health check (%d/%d): unresponsive",
            worker.worker_id,
            worker.health_failures,
            self.settings.health_failures_allowed,
        )
        if worker.health_failures >= self.settings.health_failures_allowed:
            # Removed first, so nothing that runs while it is reaped counts it again.
            self._crashed(worker, f"it missed {worker.health_failures} health checks")
            await worker.kill()

    def _crashed(self, worker: ManagedWorker, why: str) -> None:
        if self._workers.get(worker.worker_id) is not worker:
            return  # removed meanwhile (a check awaiting its probe, say)
        worker.to(ManagedState.CRASHED)
        worker.error = why
        self._workers.pop(worker.worker_id, None)
        self.crashes += 1
        log.error(
            "%s: worker %s (%s) crashed: %s; not restarting. Last log lines:\n%s",
            ErrorCode.WORKER_CRASHED,
            worker.worker_id,
            worker.spec.model_ref,
            why,
            worker.log_tail(),
        )

    async def stop_idle(self) -> None:
        """One pass of the idle loop: workers idle past the timeout are shut down."""
        timeout = self.settings.idle_timeout_s
        for worker in self.list():
            if worker.state is ManagedState.FAILED and worker.idle_s >= timeout:
                # Kept until now so clients could read why it failed.
                await self.stop(worker.worker_id)
                continue
            if worker.state is not ManagedState.IDLE:
                continue
            health = await worker.probe(self._http, self.settings.health_timeout_s)
            if health is None:
                continue  # the health loop deals with silent workers
            worker.observe(health)
            if worker.state is ManagedState.IDLE and worker.idle_s >= timeout:
                log.info(
                    "worker %s idle for %.0f s (timeout %.0f s): shutting down",
                    worker.worker_id,
                    worker.idle_s,
                    timeout,
                )
                await self.stop(worker.worker_id)
