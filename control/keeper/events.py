"""What the keeper's flows report while they run, and who hears it.

Infer, the hive actions and downloads emit these to one listener: the CLI's console prints
them, the dashboard turns them into its widgets' messages, the queen into its requests'
timelines. A flow never prints; failures that end a flow are raised as ActionableError
(words.py) and only reported as `Failed` when the flow goes on or ends with an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .words import ActionableError


@dataclass(frozen=True)
class Step:
    """A step in words: `Attempt 1: Connecting to …`, `Model ready!`, `Canceled.`"""

    text: str


@dataclass(frozen=True)
class Downloading:
    """A model download's progress on a node."""

    node: str
    model_ref: str
    bytes_done: int
    bytes_total: int | None  # None while the size is unknown
    mb_per_s: float

    @property
    def fraction(self) -> float | None:
        return self.bytes_done / self.bytes_total if self.bytes_total else None


@dataclass(frozen=True)
class DownloadRetrying:
    node: str
    model_ref: str
    attempt: int
    attempts: int
    delay_ms: int


@dataclass(frozen=True)
class Downloaded:
    node: str
    model_ref: str


@dataclass(frozen=True)
class Loading:
    """A worker loading its model, layer by layer."""

    layers_loaded: int
    layers_total: int


@dataclass(frozen=True)
class Queued:
    """The queen holds the request in its model's queue, at `position` (1: next)."""

    position: int


@dataclass(frozen=True)
class StartingWorker:
    """The queen is starting a worker of the request's model on `node`."""

    node: str


@dataclass(frozen=True)
class Routed:
    """The queen sent the request to `worker_id` on `node`."""

    node: str
    worker_id: str


@dataclass(frozen=True)
class RequestSent:
    """The prompt is on its way to the worker (time to first token counts from here)."""


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class AnswerEnded:
    """The answer's stream is over (completed, cut, canceled or failed)."""


@dataclass(frozen=True)
class Failed:
    error: ActionableError


KeeperEvent = (
    Step
    | Downloading
    | DownloadRetrying
    | Downloaded
    | Loading
    | Queued
    | StartingWorker
    | Routed
    | RequestSent
    | Token
    | AnswerEnded
    | Failed
)


def timeline_text(event: KeeperEvent) -> str | None:
    """A step of a request's way through the queen, in words (None: not one)."""
    match event:
        case Queued(position):
            return f"Queued: {position} in line."
        case StartingWorker(node):
            return f"Starting a worker on {node}..."
        case Routed(node, worker_id):
            return f"Routed to {worker_id} on {node}."
    return None


class Listener(Protocol):
    def heard(self, event: KeeperEvent) -> None: ...


class Unheard:
    """A listener for callers that want only the outcome."""

    def heard(self, event: KeeperEvent) -> None:
        pass
