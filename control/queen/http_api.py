"""The queen's HTTP API (DESIGN §4 "Queen"): the OpenAI endpoints, rbee's /v1/inference
and its cancel, the models the cluster serves, the cluster itself, health and metrics. Every
answer from a worker names the node and worker that gave it, and where its time went
(Server-Timing); a `/v1/inference` stream, whose headers go before a worker is found, tells
both in its `routed` event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee.control.keeper.inventory_errors import UnknownModel
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.served_models import ModelSpec
from rbee.dataplane.plumbing.http import (
    EXCEPTION_HANDLERS,
    BearerAuth,
    BrowserGuard,
    parse_body,
    read_body,
    read_raw_body,
)
from rbee.dataplane.plumbing.openapi import openapi_route
from rbee.dataplane.protocol.queen_api import ClusterNode, ClusterReport, ClusterWorker
from rbee.dataplane.protocol.requests import QueenInferenceRequest, RoutedRequest
from rbee.dataplane.protocol.wire import VERSION, ApiError, ErrorCode

from .cluster_view import ClusterView
from .dispatch import Dispatcher, Lease
from .forwarding import Forwarder, with_model
from .metrics import QueenMetrics
from .relay import answer
from .settings import QueenSettings
from .timing import server_timing, worker_ttft_s
from .upstream import UpstreamAnswer, WorkerLinks

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/health"})
T = TypeVar("T")


def create_app(
    keeper: Keeper,
    view: ClusterView,
    dispatcher: Dispatcher,
    links: WorkerLinks,
    settings: QueenSettings,
) -> Starlette:
    metrics = QueenMetrics(dispatcher.queued)
    forwarder = Forwarder(keeper, view, dispatcher, links, metrics, settings)

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive", "version": VERSION})

    async def models(_request: Request) -> JSONResponse:
        """The inventory's model names, then every model a worker serves or a node's catalog
        holds, once each."""
        names = list(keeper.inventory.models)
        refs = {w.model_ref for w in view.workers()}
        refs |= {ref for s in view.statuses.values() if s.is_up for ref in s.models}
        ids = names + sorted(refs - set(names))
        data = [{"id": name, "object": "model", "owned_by": "rbee"} for name in ids]
        return JSONResponse({"object": "list", "data": data})

    async def cluster(_request: Request) -> JSONResponse:
        routed = metrics.routed_per_node()
        report = ClusterReport(
            nodes=[
                ClusterNode(
                    name=s.name,
                    state=str(s.state),
                    version=s.version,
                    problem=s.problem,
                    checked_at=view.checked_at.get(s.name),
                    routed=routed.get(s.name, 0),
                )
                for s in view.statuses.values()
            ],
            workers=[
                ClusterWorker(
                    node=w.node,
                    worker_id=w.worker_id,
                    model_ref=w.model_ref,
                    state=w.state,
                    slots_total=w.slots_total,
                    in_flight=view.in_flight[w.worker_id],
                    last_tokens_per_s=w.last_tokens_per_s,
                )
                for w in view.workers()
            ],
            queued=dispatcher.queued(),
        )
        return JSONResponse(report.wire())

    async def openai(request: Request) -> Response:
        arrived = time.monotonic()
        raw = await read_raw_body(request)
        routed = parse_body(raw, RoutedRequest)
        spec = _spec(routed.model)
        if routed.model != spec.ref:  # a name ("gemma"): workers answer to their reference
            raw = with_model(raw, spec.ref)
        lease, upstream = await _until_disconnected(
            request, forwarder.route(spec, request.scope["path"], raw, stream=routed.stream)
        )
        return await answer(
            upstream,
            stream=routed.stream,
            broken=forwarder.broken(lease),
            headers=_answered_by(lease, upstream, arrived, stream=routed.stream),
            first_byte=lambda: metrics.first_byte.observe(time.monotonic() - arrived),
            done=lease.release,
        )

    async def inference(request: Request) -> Response:
        """rbee's own SSE (DESIGN §4 "Queen"): the request's timeline, then the worker's
        events; `stream: false` answers the worker's whole answer."""
        arrived = time.monotonic()
        body = await read_body(request, QueenInferenceRequest)
        spec = _spec(body.model)
        request_id = forwarder.request_id(body)
        payload = json.dumps(body.for_worker(request_id)).encode()
        if body.stream:
            dispatcher.admit(spec)  # a full queue is a 503 with Retry-After, not an event
            events = forwarder.inference_stream(spec, request_id, payload, arrived)
            headers = {"X-Request-Id": request_id, "Cache-Control": "no-cache"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        lease, upstream = await _until_disconnected(
            request, forwarder.route(spec, "/v1/inference", payload, stream=False)
        )
        return await answer(
            upstream,
            stream=False,
            broken=forwarder.broken(lease),
            headers=_answered_by(lease, upstream, arrived, stream=False),
            first_byte=lambda: metrics.first_byte.observe(time.monotonic() - arrived),
            done=lease.release,
        )

    async def cancel(request: Request) -> Response:
        await forwarder.cancel(request.path_params["request_id"])
        return Response(status_code=204)

    def _spec(model: str) -> ModelSpec:
        try:
            return keeper.inventory.model(model.strip())
        except UnknownModel as exc:
            raise ApiError(
                ErrorCode.MODEL_NOT_FOUND, str(exc), details={"field": "model"}
            ) from None

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/cluster", cluster),
        Route("/v1/completions", openai, methods=["POST"]),
        Route("/v1/chat/completions", openai, methods=["POST"]),
        Route("/v1/inference", inference, methods=["POST"]),
        Route("/v1/inference/{request_id}", cancel, methods=["DELETE"]),
        Route("/metrics", metrics.endpoint),
    ]
    routes.append(
        openapi_route(
            "rbee queen",
            routes,
            public_paths=PUBLIC_PATHS,
            bodies={
                "/v1/completions": RoutedRequest,
                "/v1/chat/completions": RoutedRequest,
                "/v1/inference": QueenInferenceRequest,
            },
        )
    )
    middleware = [
        Middleware(BrowserGuard, loopback=settings.is_loopback),
        Middleware(BearerAuth, api_key=settings.api_key, public_paths=PUBLIC_PATHS),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS)


def _answered_by(
    lease: Lease, upstream: UpstreamAnswer, arrived: float, *, stream: bool
) -> dict[str, str]:
    """The headers of an answer a worker gave (its headers just came): who gave it, and
    where its time went. A stream's first token is still to come: its timing says when the
    worker took it; a whole answer's says when its first token came."""
    if stream:
        timing = server_timing(lease.waited, accept_s=time.monotonic() - arrived)
    else:
        worker_ttft = worker_ttft_s(upstream.headers)
        ttft = None if worker_ttft is None else lease.sent_at - arrived + worker_ttft
        timing = server_timing(lease.waited, ttft_s=ttft)
    worker = lease.worker
    return {"X-Rbee-Node": worker.node, "X-Rbee-Worker": worker.worker_id, "Server-Timing": timing}


async def _until_disconnected(request: Request, waiting: Awaitable[T]) -> T:
    """What `waiting` gives, unless the client leaves first (then the wait is given up: a
    request that left the queue takes no slot)."""
    lease = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({lease, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not lease.done():
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
    return lease.result()  # raises CancelledError once the client has gone


async def _disconnect(request: Request) -> None:
    """Returns when the client disconnects (its body has been read: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
