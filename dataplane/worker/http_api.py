"""The worker's HTTP application: the native API of DESIGN §4 plus the OpenAI-compatible one."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.dataplane.plumbing.http import (
    EXCEPTION_HANDLERS,
    BearerAuth,
    BrowserGuard,
    parse_body,
    read_raw_body,
)
from rbee.dataplane.plumbing.openapi import OPENAPI_PATH, openapi_route
from rbee.dataplane.plumbing.sse import EventStream
from rbee.dataplane.protocol import events
from rbee.dataplane.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    InferenceRequest,
)
from rbee.dataplane.protocol.wire import SSE_DONE, ApiError, ErrorInfo
from rbee.dataplane.protocol.worker_api import (
    InferenceAnswer,
    ShutdownAnswer,
    WorkerHealth,
    WorkerReadiness,
)

from . import openai_api
from .chat import chat_prompt
from .engine import DoneEvent, ErrorEvent, Event, SamplingParams, TokenEvent
from .service import Worker
from .streaming import collect, sse_response, ttft_header

PUBLIC_PATHS = frozenset({"/health", OPENAPI_PATH})
REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "/v1/inference": InferenceRequest,
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatCompletionRequest,
}


def create_app(worker: Worker) -> Starlette:
    async def health(_request: Request) -> JSONResponse:
        return JSONResponse(worker.health().wire())

    async def ready(_request: Request) -> JSONResponse:
        return JSONResponse(worker.readiness().wire())

    async def loading_progress(_request: Request) -> EventStream:
        async def lines() -> AsyncGenerator[str, None]:
            async for event in worker.loading_events():
                yield json.dumps(event.wire())
            yield SSE_DONE

        return EventStream(lines(), ping_s=worker.settings.sse_ping_s)

    async def inference(request: Request) -> Response:
        raw = await read_raw_body(request)
        with worker.arriving():
            body = parse_body(raw, InferenceRequest)
            started = time.monotonic()
            stops: tuple[str, ...] = ()
            if body.messages is not None:
                chat = await chat_prompt(worker, body.messages)
                tokens, stops = chat.tokens, chat.stops
            else:
                tokens = await worker.prepare_prompt(body.prompt or "")
            params = SamplingParams(
                max_tokens=body.max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=body.top_k,
                seed=body.seed,
                stop=(*body.stop, *stops),
                repeat_penalty=body.repeat_penalty,
                repeat_last_n=body.repeat_last_n,
                presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty,
            )
            gen = worker.begin(tokens, params, body.request_id)
        headers = {"X-Request-Id": gen.request_id}
        model = worker.settings.served_model

        def elapsed_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        if not body.stream:
            result = await collect(request, gen)
            if isinstance(result.terminal, ErrorEvent):
                raise ApiError(result.terminal.code, result.terminal.message, headers=headers)
            answer = InferenceAnswer(
                request_id=gen.request_id,
                model=model,
                text=result.text,
                total_tokens=result.terminal.total_tokens,
                duration_ms=elapsed_ms(),
                stop_reason=result.terminal.stop_reason,
                cached_tokens=result.terminal.cached_tokens,
            )
            return JSONResponse(answer.wire(), headers=headers | ttft_header(gen))

        index = 0

        def render(event: Event) -> list[dict[str, Any]]:
            nonlocal index
            sent: events.InferenceEvent
            if isinstance(event, TokenEvent):
                index += 1
                sent = events.Token(token=event.text, index=index - 1)
            elif isinstance(event, DoneEvent):
                sent = events.Done(
                    total_tokens=event.total_tokens,
                    duration_ms=elapsed_ms(),
                    stop_reason=event.stop_reason,
                    cached_tokens=event.cached_tokens,
                )
            else:
                error = ErrorInfo(code=event.code, message=event.message)
                sent = events.ErrorEvent(error=error)
            return [sent.wire()]

        return sse_response(
            gen,
            render,
            first=[events.Started(request_id=gen.request_id, model=model).wire()],
            ping_s=worker.settings.sse_ping_s,
            headers=headers,
        )

    async def cancel(request: Request) -> Response:
        worker.cancel(request.path_params["request_id"])
        return Response(status_code=204)

    async def admin_shutdown(_request: Request) -> JSONResponse:
        worker.request_shutdown()
        answer = ShutdownAnswer(state=worker.lifecycle.state)
        return JSONResponse(answer.wire(), status_code=202)

    routes = [
        Route("/health", health),
        Route("/v1/ready", ready),
        Route("/v1/loading/progress", loading_progress),
        Route("/v1/inference", inference, methods=["POST"]),
        Route("/v1/inference/{request_id}", cancel, methods=["DELETE"]),
        Route("/v1/admin/shutdown", admin_shutdown, methods=["POST"]),
        Route("/metrics", worker.metrics.endpoint),
        *openai_api.routes(worker),
    ]
    routes.append(
        openapi_route(
            "rbee-worker",
            routes,
            bodies=REQUEST_BODIES,
            public_paths=PUBLIC_PATHS,
            answers={"/health": WorkerHealth, "/v1/ready": WorkerReadiness},
        )
    )
    middleware = [
        Middleware(BrowserGuard, loopback=worker.settings.is_loopback),
        Middleware(BearerAuth, api_key=worker.settings.api_key, public_paths=PUBLIC_PATHS),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS)
