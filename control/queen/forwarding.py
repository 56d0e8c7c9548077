"""A request's way from the queen to a worker: a slot (dispatch.py), the worker reached
(through its node's forward), the body sent, once more elsewhere if that worker cannot be
reached, back to the head of the queue if others hold the worker's slots; and rbee's own
`/v1/inference`, whose stream tells the request's timeline before the worker's events, and
which `DELETE /v1/inference/{id}` cancels wherever it is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.runner import RunnerError
from rbee.control.keeper.served_models import ModelSpec
from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.events import ErrorEvent, Routed
from rbee.dataplane.protocol.requests import QueenInferenceRequest
from rbee.dataplane.protocol.wire import (
    SILENCE_LIMIT_S,
    SSE_DONE,
    ApiError,
    ErrorCode,
    ErrorInfo,
    Message,
)
from rbee.dataplane.protocol.worker_client import WorkerClient

from .cluster_view import ClusterView
from .dispatch import Dispatcher, Lease, Timeline
from .metrics import QueenMetrics
from .relay import chunks
from .settings import QueenSettings
from .timing import Waited
from .upstream import (
    BrokeOff,
    Unreachable,
    UpstreamAnswer,
    UpstreamError,
    UpstreamTimeout,
    WorkerLinks,
)

log = logging.getLogger(__name__)
ROUTE_ATTEMPTS = 2  # a worker unreachable before the request starts: once more elsewhere
CANCEL_TIMEOUT_S = 5.0
KEEPALIVE_S = 10.0  # DESIGN §4: a stream is never silent longer, waiting in a queue included


def _unheard(_event: Message) -> None:
    pass


@dataclass
class _InFlight:
    """A `/v1/inference` request the queen holds: waiting (its task), or on a worker."""

    waiting: asyncio.Future[tuple[Lease, UpstreamAnswer]]
    worker_url: str | None = None
    worker_key: str | None = None
    canceled: bool = False


class Forwarder:
    def __init__(
        self,
        keeper: Keeper,
        view: ClusterView,
        dispatcher: Dispatcher,
        links: WorkerLinks,
        metrics: QueenMetrics,
        settings: QueenSettings,
    ) -> None:
        self._settings = settings
        self._keeper = keeper
        self._view = view
        self._dispatcher = dispatcher
        self._links = links
        self._metrics = metrics
        self._in_flight: dict[str, _InFlight] = {}

    async def route(
        self, spec: ModelSpec, path: str, body: bytes, *, stream: bool, heard: Timeline = _unheard
    ) -> tuple[Lease, UpstreamAnswer]:
        """A slot on a worker of the model and the worker's answer to `body` at `path`,
        its body still to be read; the lease's `waited` is the whole wait for it and its
        `sent_at` when the body went to the worker that took it. ApiError when no slot comes
        in the queue's wait limit or no worker can be reached."""
        settings = self._settings
        # A stream is silent for the silence limit at most (the worker sends keep-alives); a
        # whole answer comes once it is all generated.
        read_s = SILENCE_LIMIT_S if stream else settings.whole_answer_timeout_s
        deadline = asyncio.get_running_loop().time() + settings.queue_wait_s
        waited = Waited()
        unreachable = 0
        refused = False
        while True:
            lease = await self._dispatcher.acquire(spec, heard, deadline=deadline, again=refused)
            waited += lease.waited
            worker = lease.worker
            try:
                node = self._keeper.inventory.get(worker.node)
                url = await self._keeper.access(node).worker_url(worker.url)
                lease.sent_at = time.monotonic()
                upstream = await self._links.post(
                    url + path,
                    body,
                    api_key=lease.route.api_key,
                    connect_timeout_s=settings.connect_timeout_s,
                    read_timeout_s=read_s,
                )
                try:
                    refused = await _slots_taken(upstream)
                except BaseException:
                    upstream.close()
                    raise
            except (Unreachable, RunnerError, OSError) as exc:
                # Not started there: the worker is gone (or its node's connection broke).
                lease.release()
                self._view.forget(worker)
                log.warning("%s on %s unreachable: %s", worker.worker_id, worker.node, exc)
                unreachable += 1
                if unreachable == ROUTE_ATTEMPTS:
                    raise ApiError(
                        ErrorCode.WORKER_CRASHED,
                        f"{worker.worker_id} on {worker.node} could not be reached: {exc}",
                    ) from None
                continue
            except UpstreamTimeout:
                lease.release()
                raise ApiError(
                    ErrorCode.CONNECTION_TIMEOUT,
                    f"{worker.worker_id} on {worker.node} did not answer in {read_s:g} s",
                ) from None
            except BrokeOff as exc:  # it took the request, then broke off
                lease.release()
                self._view.forget(worker)
                raise ApiError(
                    ErrorCode.WORKER_CRASHED, f"{worker.worker_id} on {worker.node}: {exc}"
                ) from None
            except BaseException:
                lease.release()  # the client left while the worker was being reached
                raise
            if refused:  # others hold its slots (a client of the worker's own, say)
                upstream.close()
                lease.release(taken_by_others=True)
                waited += Waited(queue_s=time.monotonic() - lease.sent_at)
                log.info(
                    "%s on %s: all slots busy with others' requests; %s waits again",
                    worker.worker_id,
                    worker.node,
                    spec.name,
                )
                continue
            log.info("%s %s → %s on %s", path, spec.name, worker.worker_id, node.name)
            self._metrics.routed.labels(node=node.name).inc()
            self._metrics.queue_wait.observe(waited.total_s)
            lease.waited = waited
            heard(
                Routed(
                    node=worker.node,
                    worker_id=worker.worker_id,
                    queue_ms=_ms(waited.queue_s),
                    spawn_ms=_ms(waited.spawn_s),
                    load_ms=_ms(waited.load_s),
                )
            )
            return lease, upstream

    def broken(self, lease: Lease) -> Callable[[], None]:
        """What to do when the lease's worker breaks off mid-answer: it is likely dead, so
        no other request goes there until its node's next probe says otherwise."""
        return lambda: self._view.forget(lease.worker)

    # ----------------------------------------------------------------- /v1/inference

    def request_id(self, body: QueenInferenceRequest) -> str:
        """The request's id: the client's, unless one of that id is in flight, or a new one."""
        if body.request_id is None:
            return f"req-{uuid.uuid4().hex[:16]}"
        if body.request_id in self._in_flight:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"request_id {body.request_id} is in flight already; send another one",
                details={"field": "request_id"},
            )
        return body.request_id

    async def inference_stream(
        self, spec: ModelSpec, request_id: str, payload: bytes, arrived: float
    ) -> AsyncIterator[bytes]:
        """The request's SSE stream: its timeline while it waits, then the worker's events
        as they come; an error event (never a cut) when it cannot go on."""
        if request_id in self._in_flight:  # taken since the request was read
            yield _error(ErrorCode.INVALID_REQUEST, f"request_id {request_id} is in flight")
            return
        timeline: asyncio.Queue[Message] = asyncio.Queue()
        routing = asyncio.ensure_future(
            self.route(spec, "/v1/inference", payload, stream=True, heard=timeline.put_nowait)
        )
        held = _InFlight(routing)
        self._in_flight[request_id] = held
        taken = False  # the lease and the worker's answer are this generator's to close
        told: asyncio.Future[Message] | None = None
        try:
            while not routing.done():
                told = asyncio.ensure_future(timeline.get())
                await asyncio.wait(
                    {told, routing}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if told.done():
                    yield _sse(told.result())
                else:
                    told.cancel()
                    if not routing.done():
                        yield b": keep-alive\n\n"
                told = None
            while not timeline.empty():
                yield _sse(timeline.get_nowait())
            try:
                lease, upstream = routing.result()
                taken = True
            except asyncio.CancelledError:
                yield _error(ErrorCode.REQUEST_CANCELED, "canceled before a worker took it")
                return
            except ApiError as exc:
                yield _error(exc.code, exc.message)
                return
            if held.canceled or upstream.status_code != 200:
                lease.release()
                if held.canceled:  # DELETE came as a worker was found
                    upstream.close()
                    error = ErrorInfo(
                        code=ErrorCode.REQUEST_CANCELED, message="canceled before it started"
                    )
                else:
                    error = await _error_of(upstream)
                yield _error(error.code, error.message)
                return
            held.worker_url = upstream.url.removesuffix("/v1/inference")
            held.worker_key = lease.route.api_key

            def first_byte() -> None:
                self._metrics.first_byte.observe(time.monotonic() - arrived)

            async for chunk in chunks(upstream, first_byte, self.broken(lease), lease.release):
                yield chunk
        finally:
            if self._in_flight.get(request_id) is held:
                del self._in_flight[request_id]
            if told is not None:
                told.cancel()
            if not routing.done():
                routing.cancel()  # the client left while it waited: it takes no slot
                with contextlib.suppress(asyncio.CancelledError, ApiError):
                    await routing
            elif not taken and not routing.cancelled() and routing.exception() is None:
                lease, upstream = routing.result()  # routed just as the client left
                lease.release()
                upstream.close()

    async def cancel(self, request_id: str) -> None:
        """Cancels the request wherever it is: waiting (it leaves the queue or the start it
        waited for), or on its worker (the worker stops generating)."""
        held = self._in_flight.get(request_id)
        if held is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no request {request_id} is in flight here")
        if held.worker_url is None:
            held.canceled = True
            held.waiting.cancel()
            return
        try:
            async with WorkerClient(held.worker_url, held.worker_key) as worker:
                await worker.cancel(request_id, timeout_s=CANCEL_TIMEOUT_S)
        except (httpx.HTTPError, RemoteError, OSError) as exc:
            raise ApiError(
                ErrorCode.WORKER_CRASHED, f"the worker of {request_id} did not answer: {exc}"
            ) from None


def with_model(body: bytes, model: str) -> bytes:
    """An OpenAI body, a JSON object the queen has read, naming `model`: the reference of the
    workers it is routed to, which know no inventory names. The member is appended rather
    than the body parsed again (a tenth of the CPU): JSON readers keep the last of a repeated
    name (Python's json documents it; workers read with it). A body not in UTF-8 (json reads
    UTF-16 and -32 too) is encoded anew."""
    end = body.rstrip()
    if body[:1] in b"{ \t\r\n" and end.endswith(b"}"):
        return end[:-1] + b',"model":' + json.dumps(model).encode() + b"}"
    fields = json.loads(body)
    fields["model"] = model
    return json.dumps(fields).encode()


async def _slots_taken(upstream: UpstreamAnswer) -> bool:
    """Whether the worker refused the request because all its slots are busy (its body is
    read then; any other answer is left to be read)."""
    if upstream.status_code != 503:
        return False
    await upstream.aread()
    try:
        return bool(upstream.json()["error"]["code"] == ErrorCode.ALL_SLOTS_BUSY)
    except (ValueError, KeyError, TypeError):
        return False


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _sse(event: Message) -> bytes:
    return f"data: {json.dumps(event.wire())}\n\n".encode()


def _error(code: ErrorCode | str, message: str) -> bytes:
    event = ErrorEvent(error=ErrorInfo(code=str(code), message=message))
    return _sse(event) + f"data: {SSE_DONE}\n\n".encode()


async def _error_of(upstream: UpstreamAnswer) -> ErrorInfo:
    """The error a worker answered with (its envelope), read and closed."""
    try:
        body = await upstream.aread()
        return ErrorInfo.model_validate(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=f"HTTP {upstream.status_code}")
    except UpstreamError as exc:
        return ErrorInfo(code=ErrorCode.WORKER_CRASHED, message=f"the worker stopped: {exc}")
    finally:
        upstream.close()
