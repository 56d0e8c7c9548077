"""OpenAI-compatible endpoints, so existing clients (the openai SDK, curl scripts) work unchanged.

Errors keep rbee's envelope: `{"error": {"code", "message", ...}}` is also what OpenAI clients
read a message from.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.dataplane.plumbing.http import read_body
from rbee.dataplane.protocol.events import StopReason
from rbee.dataplane.protocol.requests import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from rbee.dataplane.protocol.wire import ApiError, ErrorCode

from .chat import chat_prompt, serving_template
from .engine import DoneEvent, ErrorEvent, Event, Generation, SamplingParams, TokenEvent
from .service import Worker
from .streaming import collect, sse_response, ttft_header
from .structured import (
    CallReader,
    Constraint,
    ForcedCall,
    TemplateCalls,
    auto_tools,
    constraint_for,
)

FINISH_REASON = {
    StopReason.MAX_TOKENS: "length",
    StopReason.EOS: "stop",
    StopReason.STOP: "stop",
    StopReason.CANCELED: "stop",
}


def routes(worker: Worker) -> list[Route]:
    model_id = worker.settings.served_model
    created = int(time.time())

    async def models(_request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": model_id,
                        "object": "model",
                        "created": created,
                        "owned_by": "rbee",
                        # which template chat requests get (None until the model loaded)
                        "chat_template": worker.chat_template_in_use,
                    },
                ],
            }
        )

    async def completions(request: Request) -> Response:
        body = await read_body(request, CompletionRequest)
        _check_model(worker, body.model)
        constraint = constraint_for(body)
        tokens = await _prompt_tokens(worker, body.prompt)
        gen = worker.begin(tokens, _params(body, body.limit(), constraint), None)
        return await _answer(request, gen, body.stream, len(tokens), chat=False)

    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, ChatCompletionRequest)
        _check_model(worker, body.model)
        constraint = constraint_for(body)
        tools = auto_tools(body, serving_template(worker).source)
        prompt = await chat_prompt(worker, body.messages, tools=tools)
        params = _params(body, body.token_limit(None), constraint, extra_stops=prompt.stops)
        gen = worker.begin(prompt.tokens, params, None)
        calls: CallReader | None = None
        if constraint is not None and constraint.tool_call:
            calls = ForcedCall()
        elif tools:
            names = [t.function.name for t in body.tools or []]
            calls = TemplateCalls(names, parallel=body.parallel_tool_calls is not False)
        return await _answer(request, gen, body.stream, len(prompt.tokens), chat=True, calls=calls)

    async def _answer(
        request: Request,
        gen: Generation,
        stream: bool,
        prompt_tokens: int,
        *,
        chat: bool,
        calls: CallReader | None = None,
    ) -> Response:
        answer_id = f"{'chatcmpl' if chat else 'cmpl'}-{gen.request_id}"
        headers = {"X-Request-Id": gen.request_id}
        if not stream:
            result = await collect(request, gen)
            if isinstance(result.terminal, ErrorEvent):
                raise ApiError(result.terminal.code, result.terminal.message, headers=headers)
            finish = FINISH_REASON[result.terminal.stop_reason]
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if calls is not None:
                content = calls.feed(result.text)
                tail, tool_calls = calls.finish()
                choice["message"] = {"role": "assistant", "content": content + tail or None}
                if tool_calls:
                    choice["message"]["tool_calls"] = tool_calls
                    choice["finish_reason"] = "tool_calls"
            elif chat:
                choice["message"] = {"role": "assistant", "content": result.text}
            else:
                choice["text"] = result.text
            completion_tokens = result.terminal.total_tokens
            return JSONResponse(
                {
                    "id": answer_id,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": model_id,
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
                headers=headers | ttft_header(gen),
            )

        def chunk(delta: dict[str, Any] | str, finish: str | None) -> dict[str, Any]:
            if chat:
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
            return {
                "id": answer_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": [choice],
            }

        def render(event: Event) -> list[dict[str, Any]]:
            # Tool calls: content streams as far as the reader is sure of it; each call
            # goes out as one delta once the answer is complete.
            if calls is not None and isinstance(event, TokenEvent):
                content = calls.feed(event.text)
                return [chunk({"content": content}, None)] if content else []
            if calls is not None and isinstance(event, DoneEvent):
                tail, tool_calls = calls.finish()
                out = [chunk({"content": tail}, None)] if tail else []
                if tool_calls:
                    deltas = [{"index": i} | call for i, call in enumerate(tool_calls)]
                    return [*out, chunk({"tool_calls": deltas}, None), chunk({}, "tool_calls")]
                return [*out, chunk({}, FINISH_REASON[event.stop_reason])]
            if isinstance(event, TokenEvent):
                return [chunk({"content": event.text} if chat else event.text, None)]
            if isinstance(event, DoneEvent):
                return [chunk({} if chat else "", FINISH_REASON[event.stop_reason])]
            assert isinstance(event, ErrorEvent)
            return [{"error": {"code": str(event.code), "message": event.message}}]

        first = [chunk({"role": "assistant", "content": ""}, None)] if chat else []
        return sse_response(
            gen, render, first=first, ping_s=worker.settings.sse_ping_s, headers=headers
        )

    return [
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]


def _check_model(worker: Worker, model: str | None) -> None:
    """A request may name the model by its id, by its file, or not at all; any other name is
    a 404 naming what this worker serves, as OpenAI answers a model it does not know."""
    if model is None or worker.settings.serves(model):
        return
    served = worker.settings.served_model
    raise ApiError(
        ErrorCode.MODEL_NOT_FOUND,
        f"model: {model!r} is not served here; this worker serves {served} "
        "(GET /v1/models lists it): send that as the model",
        details={"field": "model", "model": model, "served": served},
    )


async def _prompt_tokens(worker: Worker, prompt: str | list[int]) -> list[int]:
    """A completion's prompt as tokens: text tokenized, token ids as sent (checked)."""
    if isinstance(prompt, str):
        return await worker.prepare_prompt(prompt)
    return worker.prepare_token_prompt(prompt)


def _params(
    body: OpenAIRequest,
    max_tokens: int | None,
    constraint: Constraint | None,
    *,
    extra_stops: tuple[str, ...] = (),
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=(*(body.stop or ()), *extra_stops),
        grammar=constraint.grammar if constraint else None,
    )
