"""`rbee infer --queen`: one prompt through the running queen, which picks the node and the
worker (or starts one), queues it while every slot is busy, and tells its timeline.

It ends as `rbee infer` does: 0 answered, 1 failed (with words to act on), 130 canceled;
Ctrl+C cancels the request at the queen wherever it is (queued, waiting for a start, on a
worker). Tokens and the timeline go to one listener (events.py).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from rbee.dataplane.protocol import events as wire
from rbee.dataplane.protocol.client import InvalidResponse, PeerSilent, RemoteError
from rbee.dataplane.protocol.queen_client import QueenClient

from .events import (
    AnswerEnded,
    Failed,
    Listener,
    Loading,
    Queued,
    RequestSent,
    Routed,
    StartingWorker,
    Step,
    Token,
)
from .infer import (
    CANCEL_ACK_TIMEOUT_S,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    close_at_rest,
    one_user_message,
    save_partial,
)
from .queen_address import QueenAddress
from .queen_status import queen_call_failure, queen_client
from .words import ActionableError, no_queen, queen_failure


@dataclass(frozen=True)
class QueenRequest:
    prompt: str
    model: str  # an inventory model's name ([models.NAME]) or a model reference
    max_tokens: int = 20
    temperature: float = 0.7
    seed: int | None = None
    chat: bool = False  # the prompt as one user message, in the model's chat template


class QueenInfer:
    """One prompt through the queen at `address` (None: no queen runs), reported to a
    listener: `rbee infer --queen`'s flow, on the facade for the dashboard too."""

    def __init__(
        self, address: QueenAddress | None, request: QueenRequest, listener: Listener
    ) -> None:
        self.address = address
        self.request = request
        self.request_id = f"req-{uuid.uuid4().hex[:16]}"
        self._listener = listener
        self._canceled = asyncio.Event()
        self._tokens: list[str] = []

    def cancel(self) -> None:
        """Ctrl+C (or the dashboard's cancel), whatever the request is doing."""
        self._canceled.set()

    async def run(self) -> int:
        """The exit code: 0 answered, 1 failed (the listener heard why), 130 canceled."""
        try:
            if self.address is None:
                raise no_queen()
            async with queen_client(self.address) as client:
                return await self._stream(client)
        except ActionableError as exc:
            self._listener.heard(Failed(exc))
            return EXIT_FAILED

    async def _stream(self, client: QueenClient) -> int:
        req = self.request
        params: dict[str, Any] = {
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "request_id": self.request_id,
        }
        if req.seed is not None:
            params["seed"] = req.seed
        if req.chat:
            params["messages"] = one_user_message(req.prompt)
        self._listener.heard(RequestSent())
        events = client.stream(req.model, None if req.chat else req.prompt, **params)
        next_event = asyncio.ensure_future(anext(events))
        canceled = asyncio.ensure_future(self._canceled.wait())
        try:
            while True:
                await asyncio.wait({next_event, canceled}, return_when=asyncio.FIRST_COMPLETED)
                if canceled.done():
                    return await self._cancel(client)
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    raise self._broken() from None
                except (PeerSilent, InvalidResponse) as exc:  # frozen, or answering nonsense
                    raise self._broken(exc.message) from None
                except RemoteError as exc:  # refused before the stream began
                    raise queen_failure(
                        exc.code, exc.message, status=exc.status, retry_after=exc.retry_after
                    ) from None
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    if self._tokens:
                        raise self._broken(str(exc) or type(exc).__name__) from None
                    raise queen_call_failure(client.base_url, exc) from None
                if (ended := self._heard(event)) is not None:
                    return ended
                next_event = asyncio.ensure_future(anext(events))
        finally:
            canceled.cancel()
            await close_at_rest(events, next_event)

    def _heard(self, event: wire.QueenInferenceEvent) -> int | None:
        """Tells the listener; the exit code once the stream has ended."""
        listener = self._listener
        match event:
            case wire.Queued(position=position):
                listener.heard(Queued(position))
            case wire.Spawning(node=node):
                listener.heard(StartingWorker(node))
            case wire.Loading(layers_loaded=done, layers_total=total):
                listener.heard(Loading(done, total))
            case wire.Routed(node=node, worker_id=worker_id):
                listener.heard(Routed(node, worker_id))
            case wire.Token(token=text):
                self._tokens.append(text)
                listener.heard(Token(text))
            case wire.Done():
                listener.heard(AnswerEnded())
                return EXIT_OK
            case wire.ErrorEvent(error=error):
                if self._tokens:
                    listener.heard(AnswerEnded())
                raise queen_failure(error.code, error.message)
        return None

    async def _cancel(self, client: QueenClient) -> int:
        """Ctrl+C: the queen drops the request wherever it is (5 s at most to say so)."""
        if self._tokens:
            self._listener.heard(AnswerEnded())
        try:
            await client.cancel(self.request_id, timeout_s=CANCEL_ACK_TIMEOUT_S)
            acknowledged = True
        except RemoteError as exc:
            acknowledged = exc.status == 404  # it had ended, or had not reached the queen
        except (httpx.HTTPError, OSError):
            acknowledged = False
        self._listener.heard(
            Step("Canceled." if acknowledged else "Canceled (the queen may still be processing).")
        )
        return EXIT_INTERRUPTED

    def _broken(self, why: str | None = None) -> ActionableError:
        """The stream ended without its terminal event: the tokens so far are kept in a
        file, as plain infer's EC4."""
        if self._tokens:
            self._listener.heard(AnswerEnded())
        try:
            saved = (
                f"Partial result saved to: {save_partial(self.request_id, ''.join(self._tokens))}"
            )
        except OSError as exc:
            saved = f"Partial result not saved: {exc.strerror or exc}"
        return ActionableError(
            "SSE stream closed unexpectedly",
            *([why[:1].upper() + why[1:]] if why else []),
            saved,
            f"Tokens generated: {len(self._tokens)} / {self.request.max_tokens}",
            suggestion="the queen may have stopped: see its log, and `rbee nodes`",
        )
