"""Passing a request to a worker and its answer back, as it comes.

A stream's bytes pass through unbuffered (the worker's SSE lines, keep-alives included). A
client that goes away closes the worker's stream, which cancels the generation there; a
worker that dies mid-stream ends the client's stream with an error chunk, never a silent cut.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response, StreamingResponse

from rbee.dataplane.protocol.wire import SSE_DONE, ApiError, ErrorCode, error_body

from .upstream import UpstreamAnswer, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

# Answers of the worker that the queen passes on with their status as they are.
_PASSED_HEADERS = ("content-type", "retry-after", "x-request-id")


async def answer(
    upstream: UpstreamAnswer,
    *,
    stream: bool,
    headers: dict[str, str],
    first_byte: Callable[[], None],
    broken: Callable[[], None],
    done: Callable[[], None],
) -> Response:
    """The worker's answer as the client's: its status and body; a stream as it comes.
    `first_byte` is called when the answer starts coming (a stream's first chunk), `broken`
    when the worker broke off (it is likely dead), `done` once the request is over for the
    worker (answered, failed, or the client gone)."""
    passed = headers | {k: v for k, v in upstream.headers.items() if k in _PASSED_HEADERS}
    if not stream or upstream.status_code != 200:
        try:
            content = await upstream.aread()
            first_byte()
        except UpstreamTimeout:
            raise ApiError(
                ErrorCode.CONNECTION_TIMEOUT, "the worker's answer did not come in time"
            ) from None
        except UpstreamError as exc:
            broken()
            raise ApiError(ErrorCode.WORKER_CRASHED, f"the worker stopped: {exc}") from None
        finally:
            upstream.close()
            done()
        return Response(content, status_code=upstream.status_code, headers=passed)
    return StreamingResponse(chunks(upstream, first_byte, broken, done), headers=passed)


async def chunks(
    upstream: UpstreamAnswer,
    first_byte: Callable[[], None],
    broken: Callable[[], None],
    done: Callable[[], None],
) -> AsyncIterator[bytes]:
    """A worker's stream, chunk by chunk; an error chunk if it breaks off."""
    first = True
    try:
        async for chunk in upstream.aiter_raw():
            if first:
                first_byte()
                first = False
            yield chunk
    except UpstreamError as exc:  # the worker died or fell silent mid-stream
        log.warning("stream from %s broke: %s", upstream.url, exc)
        broken()
        error = error_body(ErrorCode.WORKER_CRASHED, f"the worker stopped mid-answer: {exc}")
        yield f"data: {json.dumps(error)}\n\ndata: {SSE_DONE}\n\n".encode()
    finally:
        upstream.close()  # a client that left: the worker sees its stream close
        done()
