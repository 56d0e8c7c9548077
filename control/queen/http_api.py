"""The queen's HTTP API (DESIGN §4 "Queen"): the OpenAI endpoints, the models the cluster
serves, the cluster itself, health. Every answer names the node and worker that gave it."""

from __future__ import annotations

import logging
import time

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.control.keeper.keeper import Keeper
from rbee.dataplane.plumbing.http import (
    EXCEPTION_HANDLERS,
    BearerAuth,
    BrowserGuard,
    parse_body,
    read_raw_body,
)
from rbee.dataplane.plumbing.openapi import openapi_route
from rbee.dataplane.protocol.requests import RoutedRequest
from rbee.dataplane.protocol.wire import VERSION, ApiError, ErrorCode

from .cluster_view import ClusterView
from .relay import relay
from .routing import pick, serving
from .settings import RETRY_AFTER_S, QueenSettings

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/health"})


def create_app(
    keeper: Keeper, view: ClusterView, http: httpx.AsyncClient, settings: QueenSettings
) -> Starlette:
    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive", "version": VERSION})

    async def models(_request: Request) -> JSONResponse:
        """Every model a worker serves or a node's catalog holds, once each."""
        refs = {w.model_ref for w in view.workers()}
        refs |= {ref for s in view.statuses.values() if s.is_up for ref in s.models}
        data = [{"id": ref, "object": "model", "owned_by": "rbee"} for ref in sorted(refs)]
        return JSONResponse({"object": "list", "data": data})

    async def cluster(_request: Request) -> JSONResponse:
        nodes = [
            {
                "name": s.name,
                "state": str(s.state),
                "version": s.version,
                "problem": s.problem,
                "checked_at": view.checked_at.get(s.name),
                "routed": view.routed[s.name],
            }
            for s in view.statuses.values()
        ]
        workers = [
            {
                "node": w.node,
                "worker_id": w.worker_id,
                "model_ref": w.model_ref,
                "state": w.state,
                "slots_total": w.slots_total,
                "in_flight": view.in_flight[w.worker_id],
                "last_tokens_per_s": w.last_tokens_per_s,
            }
            for w in view.workers()
        ]
        return JSONResponse({"nodes": nodes, "workers": workers})

    async def openai(request: Request) -> Response:
        raw = await read_raw_body(request)
        routed = parse_body(raw, RoutedRequest)
        model = routed.model.strip()
        started = time.monotonic()
        route = pick(view.workers(), model, view.in_flight, keeper.registry)
        if route is None:
            if serving(view.workers(), model):
                raise ApiError(
                    ErrorCode.ALL_SLOTS_BUSY,
                    f"every worker of {model} is busy; retry in {RETRY_AFTER_S} s",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            raise ApiError(
                ErrorCode.MODEL_NOT_FOUND,
                f"no worker serves {model}; GET /v1/models lists the models that are served",
            )
        worker = route.worker
        node = next(n for n in keeper.nodes if n.name == worker.node)
        url = await keeper.access(node).worker_url(worker.url)
        view.in_flight[worker.worker_id] += 1
        view.routed[worker.node] += 1
        log.info("%s %s → %s on %s", request.url.path, model, worker.worker_id, worker.node)

        def done() -> None:
            view.in_flight[worker.worker_id] -= 1

        routed_ms = (time.monotonic() - started) * 1000
        headers = {
            "X-Rbee-Node": worker.node,
            "X-Rbee-Worker": worker.worker_id,
            "Server-Timing": f"route;dur={routed_ms:.1f}",
        }
        return await relay(
            http,
            url + request.url.path,
            route.api_key,
            raw,  # as it came: the worker reads what the queen does not
            stream=routed.stream,
            headers=headers,
            done=done,
        )

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/cluster", cluster),
        Route("/v1/completions", openai, methods=["POST"]),
        Route("/v1/chat/completions", openai, methods=["POST"]),
    ]
    routes.append(
        openapi_route(
            "rbee queen",
            routes,
            public_paths=PUBLIC_PATHS,
            bodies={"/v1/completions": RoutedRequest, "/v1/chat/completions": RoutedRequest},
        )
    )
    middleware = [
        Middleware(BrowserGuard, loopback=settings.is_loopback),
        Middleware(BearerAuth, api_key=settings.api_key, public_paths=PUBLIC_PATHS),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS)
