"""Every message the dashboard's background work posts to its widgets."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from textual.message import Message
from textual.message_pump import MessagePump

from rbee.control.keeper.queen_status import QueenStatus
from rbee.control.keeper.status import LogLine, NodeStatus
from rbee.control.keeper.words import ActionableError

if TYPE_CHECKING:
    from .listeners import StreamStats

P = TypeVar("P", bound=MessagePump)
M = TypeVar("M", bound=Message)


def while_running(handler: Callable[[P, M], None]) -> Callable[[P, M], None]:
    """A handler of background work's reports: work may report while the app closes, and
    its messages are dropped then (the widgets they would update are going away)."""

    @functools.wraps(handler)
    def guarded(pump: P, message: M) -> None:
        if pump.app.is_running:
            handler(pump, message)

    return guarded


class NodeProbed(Message):
    """A fresh status of one node (its hive, workers and catalog), as its probes' schedule
    took it (control/keeper/scheduled_probes.py)."""

    def __init__(self, status: NodeStatus, checked_at: float) -> None:
        super().__init__()
        self.status = status
        self.checked_at = checked_at


class QueenProbed(Message):
    """What the queen is doing now; None: no queen runs."""

    def __init__(self, status: QueenStatus | None) -> None:
        super().__init__()
        self.status = status


class ActionProgress(Message):
    """A step of long action number `action` (ssh-up, a download…); `fraction` None: no
    measure yet."""

    def __init__(self, action: int, text: str, fraction: float | None = None) -> None:
        super().__init__()
        self.action = action
        self.text = text
        self.fraction = fraction


class ActionDone(Message):
    def __init__(self, action: int, text: str, node: str) -> None:
        super().__init__()
        self.action = action
        self.text = text
        self.node = node


class ActionFailed(Message):
    def __init__(self, action: int, error: ActionableError, node: str) -> None:
        super().__init__()
        self.action = action
        self.error = error
        self.node = node


class StreamStatus(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class StreamToken(Message):
    def __init__(self, text: str, stats: StreamStats) -> None:
        super().__init__()
        self.text = text
        self.tokens = stats.tokens
        self.ttft_s = stats.ttft_s
        self.tokens_per_s = stats.tokens_per_s


class StreamFailed(Message):
    def __init__(self, error: ActionableError) -> None:
        super().__init__()
        self.error = error


class StreamEnded(Message):
    """The stream on `node` is over: 0 answered, 1 failed, 130 canceled. (No node: the
    queen's stream, before it was routed.)"""

    def __init__(self, node: str | None, exit_code: int, tokens_per_s: float | None) -> None:
        super().__init__()
        self.node = node
        self.exit_code = exit_code
        self.tokens_per_s = tokens_per_s


class HiveLogLine(Message):
    def __init__(self, node: str, line: LogLine) -> None:
        super().__init__()
        self.node = node
        self.line = line


class HiveLogFailed(Message):
    def __init__(self, node: str, error: ActionableError) -> None:
        super().__init__()
        self.node = node
        self.error = error
