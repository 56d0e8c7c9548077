"""The dashboard's listeners (control.keeper.events): the keeper's flows report to these,
and they post the app's messages, so the screen never waits on the flows."""

from __future__ import annotations

import time
from dataclasses import dataclass

from textual.message import Message
from textual.message_pump import MessagePump

from rbee.control.keeper.events import (
    AnswerEnded,
    Downloaded,
    Downloading,
    DownloadRetrying,
    Failed,
    KeeperEvent,
    Loading,
    RequestSent,
    Routed,
    Step,
    Token,
    timeline_text,
)

from .messages import ActionProgress, StreamFailed, StreamStatus, StreamToken


@dataclass
class StreamStats:
    tokens: int = 0
    ttft_s: float | None = None  # prompt sent → first token
    tokens_per_s: float | None = None  # between the first and the latest token


def progress_text(event: KeeperEvent) -> str | None:
    """A download, load or queen step in a few words (None: not one, or nothing to show
    yet)."""
    match event:
        case Downloading(node, ref, done, total, speed) if total:
            return (
                f"{node}: downloading {ref} {done / 1e6:.1f} / {total / 1e6:.1f} MB "
                f"@ {speed:.1f} MB/s"
            )
        case DownloadRetrying(node, ref, attempt, attempts):
            return f"{node}: retrying the download of {ref} (attempt {attempt}/{attempts})"
        case Downloaded(node, ref):
            return f"{node}: {ref} downloaded"
        case Loading(done, total) if total:
            return f"loading the model: {done}/{total} layers"
    return timeline_text(event)


class StreamListener:
    """One prompt's stream: steps and failures become the stream panel's messages, and the
    tokens are timed (time to first token, tokens per second)."""

    def __init__(self, panel: MessagePump) -> None:
        self._panel = panel
        self.stats = StreamStats()
        self.routed_to: str | None = None  # the node the queen sent the prompt to
        self._sent_at = 0.0
        self._first_at = 0.0

    def heard(self, event: KeeperEvent) -> None:
        message: Message | None = None
        match event:
            case Step(text):
                message = StreamStatus(text)
            case Failed(error):
                message = StreamFailed(error)
            case RequestSent():
                self.stats = StreamStats()
                self._sent_at = time.monotonic()
            case Token(text):
                self._count_token()
                message = StreamToken(text, self.stats)
            case AnswerEnded():
                pass  # the panel shows the answer as it came; nothing to close
            case Routed(node):
                self.routed_to = node
                message = StreamStatus(str(timeline_text(event)))
            case _:
                if progress := progress_text(event):
                    message = StreamStatus(progress)
        if message is not None:
            self._panel.post_message(message)

    def _count_token(self) -> None:
        now = time.monotonic()
        stats = self.stats
        stats.tokens += 1
        if stats.tokens == 1:
            self._first_at = now
            stats.ttft_s = now - self._sent_at
        elif now > self._first_at:
            stats.tokens_per_s = (stats.tokens - 1) / (now - self._first_at)


class ActionListener:
    """One long action (ssh-up, a download, a spawn): its steps and progress become that
    action's line in the activity bar."""

    def __init__(self, app: MessagePump, action: int) -> None:
        self._app = app
        self._action = action

    def say(self, text: str, fraction: float | None = None) -> None:
        self._app.post_message(ActionProgress(self._action, text, fraction))

    def heard(self, event: KeeperEvent) -> None:
        match event:
            case Step(text):
                self.say(text)
            case Downloading() if event.fraction is not None:
                self.say(progress_text(event) or "", event.fraction)
            case _:
                if progress := progress_text(event):
                    self.say(progress)
