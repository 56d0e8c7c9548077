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
from rbee.dataplane.protocol.wire import ApiError

from .chat import chat_prompt
from .engine import DoneEvent, ErrorEvent, Event, Generation, SamplingParams, TokenEvent
from .service import Worker
from .streaming import collect, sse_response, ttft_header

FINISH_REASON = {
    StopReason.MAX_TOKENS: "length",
    StopReason.EOS: "stop",
    StopReason.STOP: "stop",
    StopReason.CANCELED: "stop",
}


def routes(worker: Worker) -> list[Route]:
    model_id = worker.settings.model_ref
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
        tokens = await worker.prepare_prompt(body.prompt_text())
        gen = worker.begin(tokens, _params(body, body.limit()), None)
        return await _answer(request, gen, body.stream, len(tokens), chat=False)

    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, ChatCompletionRequest)
        prompt = await chat_prompt(worker, body.messages)
        params = _params(body, body.token_limit(None), extra_stops=prompt.stops)
        gen = worker.begin(prompt.tokens, params, None)
        return await _answer(request, gen, body.stream, len(prompt.tokens), chat=True)

    async def _answer(
        request: Request, gen: Generation, stream: bool, prompt_tokens: int, *, chat: bool
    ) -> Response:
        answer_id = f"{'chatcmpl' if chat else 'cmpl'}-{gen.request_id}"
        headers = {"X-Request-Id": gen.request_id}
        if not stream:
            result = await collect(request, gen)
            if isinstance(result.terminal, ErrorEvent):
                raise ApiError(result.terminal.code, result.terminal.message, headers=headers)
            finish = FINISH_REASON[result.terminal.stop_reason]
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
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


def _params(
    body: OpenAIRequest, max_tokens: int | None, *, extra_stops: tuple[str, ...] = ()
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=(*(body.stop or ()), *extra_stops),
    )
