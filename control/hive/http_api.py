"""The hive's HTTP API (DESIGN §4 "Hive")."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncGenerator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.dataplane.plumbing.http import EXCEPTION_HANDLERS, BearerAuth, BrowserGuard, read_body
from rbee.dataplane.plumbing.openapi import OPENAPI_PATH, openapi_route
from rbee.dataplane.plumbing.sse import EventStream
from rbee.dataplane.protocol.hive_api import (
    DownloadAnswer,
    DownloadRequest,
    HiveHealth,
    LogLines,
    ModelsList,
    SpawnAnswer,
    SpawnRequest,
    WorkersList,
    WorkerStateAnswer,
)
from rbee.dataplane.protocol.model_refs import InvalidModelRef, parse_model_ref
from rbee.dataplane.protocol.states import ManagedState
from rbee.dataplane.protocol.wire import (
    API_VERSION,
    SSE_DONE,
    SSE_KEEPALIVE_S,
    VERSION,
    ApiError,
    ErrorCode,
)
from rbee.dataplane.protocol.worker_api import ReadyCallback

from .download_progress import DownloadError
from .downloads import DownloadManager
from .logs import LogBuffer
from .managed_worker import LIVE_STATES, WorkerSpec
from .pool import WorkerPool
from .preflight import (
    available_ram_mb,
    check_backend,
    check_device,
    check_ram,
    context_size,
    estimate_ram,
)

# The rbee-hive program this hive runs from, as started (the keeper starts it by its full
# path): the keeper tells by it that a local hive is another installation's, or a deleted one's.
# None when not started from a program file (`python -c`: tests).
EXECUTABLE = os.path.abspath(sys.argv[0]) if os.path.isfile(sys.argv[0]) else None
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/workers/ready", OPENAPI_PATH})


def create_app(
    pool: WorkerPool, downloads: DownloadManager, logs: LogBuffer, api_key: str | None
) -> Starlette:
    metrics = CollectorRegistry()
    workers_gauge = Gauge("rbee_hive_workers", "Workers by state", ["state"], registry=metrics)
    spawns = Counter("rbee_hive_spawns", "Worker spawns by outcome", ["outcome"], registry=metrics)
    crashes = Gauge("rbee_hive_worker_crashes", "Workers removed as crashed", registry=metrics)

    def model_ref_of(raw: str) -> str:
        try:
            return parse_model_ref(raw).ref
        except InvalidModelRef as exc:
            raise ApiError(
                ErrorCode.INVALID_REQUEST, str(exc), details={"field": "model_ref"}
            ) from None

    async def health(_request: Request) -> JSONResponse:
        body = HiveHealth(status="alive", version=VERSION, api_version=API_VERSION)
        if EXECUTABLE and pool.settings.is_loopback:  # a public page: paths only to this host
            body.executable = EXECUTABLE
            body.pid = os.getpid()  # which hive answers on this port (the keeper matches it)
        return JSONResponse(body.wire())

    async def spawn(request: Request) -> JSONResponse:
        body = await read_body(request, SpawnRequest)
        ref = model_ref_of(body.model_ref)
        check_backend(body.backend)
        check_device(body.backend, body.device)
        pool.check_capacity()  # before a download that could take minutes (again at the spawn)
        try:
            # As given: a #sha256 it carries is checked, though the canonical ref drops it.
            entry = await downloads.ensure(body.model_ref)
            info = await downloads.model_info(entry)
        except DownloadError as exc:
            spawns.labels("download_failed").inc()
            raise ApiError(
                exc.code, exc.message, details={**exc.details, "model_ref": ref}
            ) from None
        ctx_size = context_size(info, body.ctx_size, asked="ctx_size" in body.model_fields_set)
        estimate = estimate_ram(info, slots=body.slots, ctx_size=ctx_size)
        # Workers still loading count by their estimate: their RAM is not in use yet.
        check_ram(estimate, pool.settings.ram_budget_mb, pool.list())
        spec = WorkerSpec(
            model_ref=ref,
            model_path=entry.local_path,
            backend=body.backend,
            device=body.device,
            slots=body.slots,
            ctx_size=ctx_size,
            chat_template=body.chat_template,
            ram_estimate_bytes=estimate.total_bytes,
        )
        try:
            worker = await pool.spawn(spec)
        except ApiError:
            spawns.labels("failed").inc()
            raise
        spawns.labels("ok").inc()
        return JSONResponse(
            SpawnAnswer(
                worker_id=worker.worker_id,
                url=worker.url,
                api_key=worker.api_key,
                state=worker.state,
            ).wire()
        )

    async def worker_ready(request: Request) -> JSONResponse:
        body = await read_body(request, ReadyCallback)
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        worker = pool.accept_callback(presented, body)
        return JSONResponse(
            WorkerStateAnswer(worker_id=worker.worker_id, state=worker.state).wire()
        )

    async def workers_list(_request: Request) -> JSONResponse:
        # The node's capacity and idle policy ride along, so a dashboard needs one call per node.
        answer = WorkersList(
            workers=[w.row() for w in pool.list()],
            idle_timeout_s=pool.settings.idle_timeout_s,
            ram_available_mb=available_ram_mb(pool.settings.ram_budget_mb, pool.list()),
        )
        return JSONResponse(answer.wire())

    async def worker_shutdown(request: Request) -> JSONResponse:
        worker = await pool.stop(request.path_params["worker_id"])
        return JSONResponse(
            WorkerStateAnswer(worker_id=worker.worker_id, state=worker.state).wire()
        )

    async def models_list(_request: Request) -> JSONResponse:
        models = ModelsList(models=[m.model_entry() for m in downloads.catalog.list()])
        return JSONResponse(models.wire())

    async def models_download(request: Request) -> JSONResponse:
        body = await read_body(request, DownloadRequest)
        model_ref_of(body.model_ref)  # a 400 naming the field
        download = downloads.start(body.model_ref)  # as given: its #sha256 is checked
        answer = DownloadAnswer(
            download_id=download.id,
            model_ref=download.ref,
            state=download.state.value,
            local_path=str(download.local_path) if download.local_path is not None else None,
        )
        return JSONResponse(answer.wire(), status_code=202 if download.local_path is None else 200)

    async def download_progress(request: Request) -> EventStream:
        download_id = request.query_params.get("id", "")
        download = downloads.get(download_id)
        if download is None:
            raise ApiError(
                ErrorCode.NOT_FOUND, f"no download {download_id!r}", details={"field": "id"}
            )

        async def lines() -> AsyncGenerator[str, None]:
            async for event in download.events():
                yield json.dumps(event.wire())
            yield SSE_DONE

        return EventStream(lines(), ping_s=SSE_KEEPALIVE_S)

    async def model_delete(request: Request) -> Response:
        ref = model_ref_of(request.path_params["ref"])
        users = [
            w.worker_id for w in pool.list() if w.spec.model_ref == ref and w.state in LIVE_STATES
        ]
        if users:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"{ref} is in use by {', '.join(users)}; shut them down first",
                status=409,
                details={"workers": users},
            )
        if await downloads.remove(ref) is None:
            raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"{ref} is not in this hive's catalog")
        return Response(status_code=204)

    async def logs_endpoint(request: Request) -> Response:
        if request.query_params.get("follow", "false").lower() not in ("1", "true", "yes"):
            return JSONResponse(LogLines(lines=logs.recent()).wire())

        async def lines() -> AsyncGenerator[str, None]:
            async for line in logs.follow():
                yield json.dumps(line.wire())

        return EventStream(lines(), ping_s=SSE_KEEPALIVE_S)

    async def metrics_endpoint(_request: Request) -> Response:
        counts = {state: 0 for state in ManagedState}
        for worker in pool.list():
            counts[worker.state] += 1
        for state, count in counts.items():
            workers_gauge.labels(str(state)).set(count)
        crashes.set(pool.crashes)
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v1/health", health),
        Route("/v1/workers/spawn", spawn, methods=["POST"]),
        Route("/v1/workers/ready", worker_ready, methods=["POST"]),
        Route("/v1/workers/list", workers_list),
        Route("/v1/workers/{worker_id}/shutdown", worker_shutdown, methods=["POST"]),
        Route("/v1/models", models_list),
        Route("/v1/models/download", models_download, methods=["POST"]),
        Route("/v1/models/download/progress", download_progress),
        Route("/v1/models/{ref:path}", model_delete, methods=["DELETE"]),
        Route("/v1/logs", logs_endpoint),
        Route("/metrics", metrics_endpoint),
    ]
    routes.append(
        openapi_route(
            "rbee-hive",
            routes,
            public_paths=PUBLIC_PATHS,
            bodies={
                "/v1/workers/spawn": SpawnRequest,
                "/v1/workers/ready": ReadyCallback,
                "/v1/models/download": DownloadRequest,
            },
            queries={"/v1/models/download/progress": ("id",), "/v1/logs": ("follow",)},
            answers={
                "/v1/health": HiveHealth,
                "/v1/workers/spawn": SpawnAnswer,
                "/v1/workers/ready": WorkerStateAnswer,
                "/v1/workers/list": WorkersList,
                "/v1/workers/{worker_id}/shutdown": WorkerStateAnswer,
                "/v1/models": ModelsList,
                "/v1/models/download": DownloadAnswer,
            },
        )
    )
    middleware = [
        Middleware(BrowserGuard, loopback=pool.settings.is_loopback),
        Middleware(BearerAuth, api_key=api_key, public_paths=PUBLIC_PATHS),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS)
