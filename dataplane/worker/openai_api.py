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

from rbee.dataplane.plumbing.http import parse_body, read_raw_body
from rbee.dataplane.protocol.events import StopReason
from rbee.dataplane.protocol.requests import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from rbee.dataplane.protocol.wire import ApiError, ErrorCode

from .chat import chat_prompt, serving_template
from .engine import DoneEvent, ErrorEvent, Event, Generation, SamplingParams, TokenEvent
from .logprobs import TokenLogprob
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
        raw = await read_raw_body(request)
        with worker.arriving():
            body = parse_body(raw, CompletionRequest)
            _check_model(worker, body.model)
            constraint = constraint_for(body)
            params = _params(body, body.limit(), constraint, body.logprob_count())
            tokens = await _prompt_tokens(worker, body.prompt)
            gen = worker.begin(tokens, params, None)
        # The validation lets echo through with a text prompt only.
        echo = body.prompt if body.echo and isinstance(body.prompt, str) else ""
        return await _answer(request, gen, body, len(tokens), chat=False, echo=echo)

    async def chat_completions(request: Request) -> Response:
        raw = await read_raw_body(request)
        with worker.arriving():
            body = parse_body(raw, ChatCompletionRequest)
            _check_model(worker, body.model)
            constraint = constraint_for(body)
            tools = auto_tools(body, serving_template(worker).source)
            if body.logprobs and (tools or (constraint is not None and constraint.tool_call)):
                # The answer's text becomes tool calls: no token list would concatenate to it.
                raise ApiError(
                    ErrorCode.INVALID_REQUEST,
                    "logprobs: not supported with tools (the answer becomes tool calls)",
                    details={"field": "logprobs"},
                )
            prompt = await chat_prompt(worker, body.messages, tools=tools)
            params = _params(
                body,
                body.token_limit(None),
                constraint,
                body.logprob_count(),
                extra_stops=prompt.stops,
            )
            gen = worker.begin(prompt.tokens, params, None)
        calls: CallReader | None = None
        if constraint is not None and constraint.tool_call:
            calls = ForcedCall()
        elif tools:
            names = [t.function.name for t in body.tools or []]
            calls = TemplateCalls(names, parallel=body.parallel_tool_calls is not False)
        return await _answer(request, gen, body, len(prompt.tokens), chat=True, calls=calls)

    def _params(
        body: OpenAIRequest,
        max_tokens: int | None,
        constraint: Constraint | None,
        logprobs: int | None,
        *,
        extra_stops: tuple[str, ...] = (),
    ) -> SamplingParams:
        n_vocab = worker.serving_engine().n_vocab
        for token in body.logit_bias or {}:
            if int(token) >= n_vocab:
                raise ApiError(
                    ErrorCode.INVALID_REQUEST,
                    f"logit_bias: token {token} is not in the model's vocabulary "
                    f"(token ids 0 to {n_vocab - 1})",
                    details={"field": "logit_bias", "n_vocab": n_vocab},
                )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=(*(body.stop or ()), *extra_stops),
            grammar=constraint.grammar if constraint else None,
            repeat_penalty=body.repeat_penalty,
            repeat_last_n=body.repeat_last_n,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=body.logit_bias_pairs(),
            logprobs=logprobs,
        )

    async def _answer(
        request: Request,
        gen: Generation,
        body: OpenAIRequest,
        prompt_tokens: int,
        *,
        chat: bool,
        calls: CallReader | None = None,
        echo: str = "",
    ) -> Response:
        answer_id = f"{'chatcmpl' if chat else 'cmpl'}-{gen.request_id}"
        headers = {"X-Request-Id": gen.request_id}
        with_logprobs = gen.params.logprobs is not None
        text_offset = len(echo)  # completions' logprobs count characters of the whole text

        def logprobs(entries: tuple[TokenLogprob, ...]) -> dict[str, Any] | None:
            nonlocal text_offset
            if not with_logprobs:
                return None
            if chat:
                return {"content": [_chat_logprob(e) for e in entries], "refusal": None}
            shaped = _completion_logprobs(entries, text_offset)
            text_offset += sum(len(e.token) for e in entries)
            return shaped

        def usage(done: DoneEvent) -> dict[str, Any]:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": done.total_tokens,
                "total_tokens": prompt_tokens + done.total_tokens,
                # as OpenAI: the prompt's tokens a cache held (here, the slot's KV cells)
                "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
            }

        if not body.stream:
            result = await collect(request, gen)
            if isinstance(result.terminal, ErrorEvent):
                raise ApiError(result.terminal.code, result.terminal.message, headers=headers)
            finish = FINISH_REASON[result.terminal.stop_reason]
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": finish,
                "logprobs": logprobs(result.logprobs),
            }
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
                choice["text"] = echo + result.text
            return JSONResponse(
                {
                    "id": answer_id,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": model_id,
                    "choices": [choice],
                    "usage": usage(result.terminal),
                },
                headers=headers | ttft_header(gen),
            )

        include_usage = body.include_usage()

        def answer_chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            obj: dict[str, Any] = {
                "id": answer_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = None  # as OpenAI: every chunk has it, the last one filled in
            return obj

        def chunk(
            delta: dict[str, Any] | str,
            finish: str | None,
            entries: tuple[TokenLogprob, ...] = (),
        ) -> dict[str, Any]:
            key = "delta" if chat else "text"
            choice = {"index": 0, key: delta, "finish_reason": finish, "logprobs": None}
            if entries:
                choice["logprobs"] = logprobs(entries)
            return answer_chunk([choice])

        def done(event: DoneEvent, finish: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if include_usage:
                # OpenAI's last chunk: no choices, the usage of the whole request.
                finish.append(answer_chunk([]) | {"usage": usage(event)})
            return finish

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
                    calls_out = [chunk({"tool_calls": deltas}, None), chunk({}, "tool_calls")]
                    return done(event, [*out, *calls_out])
                return done(event, [*out, chunk({}, FINISH_REASON[event.stop_reason])])
            if isinstance(event, TokenEvent):
                delta = {"content": event.text} if chat else event.text
                return [chunk(delta, None, event.logprobs)]
            if isinstance(event, DoneEvent):
                return done(event, [chunk({} if chat else "", FINISH_REASON[event.stop_reason])])
            assert isinstance(event, ErrorEvent)
            return [{"error": {"code": str(event.code), "message": event.message}}]

        first = [chunk({"role": "assistant", "content": ""}, None)] if chat else []
        if echo:
            first.append(chunk(echo, None))
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


def _chat_logprob(entry: TokenLogprob) -> dict[str, Any]:
    """One token of a chat answer's `logprobs.content`."""
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.bytes),
        "top_logprobs": [
            {"token": top.token, "logprob": top.logprob, "bytes": list(top.bytes)}
            for top in entry.top
        ],
    }


def _completion_logprobs(entries: tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    """A completion's `logprobs` (the legacy shape): `top_logprobs` holds the sampled token
    too, as OpenAI's does (up to logprobs + 1 entries)."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [
            {top.token: top.logprob for top in e.top} | {e.token: e.logprob} for e in entries
        ],
        "text_offset": offsets,
    }
