"""Prompt a model on the selected node, or through the queen, and watch the tokens arrive,
with their speed.

The panel runs its stream itself (`Keeper.infer` as `rbee infer` does, or
`Keeper.infer_through_queen` as `rbee infer --queen` does) in a Textual worker; the stream's
listener posts to the panel, so the screen never waits on the network. Through the queen, the
model is an inventory model's name or a reference, and the queen picks the node.
"""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, Label, Sparkline, Static

from rbee.control.keeper.infer import InferRequest
from rbee.control.keeper.keeper import InferRun, Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.queen_infer import QueenInfer, QueenRequest
from rbee.control.keeper.words import ActionableError, checked_model_ref
from rbee.dataplane.protocol.model_refs import DEFAULT_MODEL_REF

from .listeners import StreamListener
from .messages import StreamEnded, StreamFailed, StreamStatus, StreamToken, while_running
from .settings import ANSWER_REPAINT_S, SPARKLINE_REQUESTS


class StreamPanel(Vertical):
    class Ended(Message):
        """A stream on `node` is over (answered, failed or canceled); no node: through the
        queen, which had not routed it."""

        def __init__(self, node: str | None) -> None:
            super().__init__()
            self.node = node

    def __init__(
        self, keeper: Keeper, nodes: dict[str, Node], max_tokens: int, *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self._keeper = keeper
        self._known_nodes = nodes
        self.max_tokens = max_tokens  # per prompt
        self.stream: InferRun | QueenInfer | None = None  # the one running, if any
        self.answer = ""
        self.node: str | None = None  # where the next prompt goes, unless through the queen
        # The highlighted worker and its model: a prompt for that model goes to it.
        self.worker: tuple[str, str] | None = None
        self.through_queen = False
        self._speeds: list[float] = []
        self._stats_text = ""
        self._repaint: Timer | None = None  # pending repaint of the answer, if any

    def compose(self) -> ComposeResult:
        with Horizontal(id="stream-target"):
            yield Label("on ?", id="stream-node")
            yield Input(DEFAULT_MODEL_REF, placeholder="model", id="stream-model")
        yield Input(placeholder="prompt, then Enter", id="prompt")
        with VerticalScroll(id="stream-answer-box"):
            # markup=False: a model's output and error words are text, not Textual markup
            # (a "[/INST]" in an answer must show as such, not end the app).
            yield Static("", markup=False, id="stream-answer")
        yield Static("", markup=False, id="stream-stats")
        yield Sparkline([], id="stream-sparkline")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "prompt":
            return
        event.stop()
        prompt = event.value.strip()
        if prompt:
            self._start(prompt, self.query_one("#stream-model", Input).value)

    def _start(self, prompt: str, model_ref: str) -> None:
        if self.stream is not None:
            self.stats("A stream is running: cancel it first (c).")
            return
        if self.through_queen:
            self._start_through_queen(prompt, model_ref.strip())
            return
        node = self._known_nodes.get(self.node or "")
        if node is None:
            self.failed("No node selected: pick one in the nodes table.")
            return
        try:
            ref = checked_model_ref(model_ref)
        except ActionableError as exc:
            self.failed(exc.in_words())
            return
        worker_id = self.worker[0] if self.worker and self.worker[1] == ref else None
        request = InferRequest(
            prompt=prompt,
            model_ref=ref,
            max_tokens=self.max_tokens,
            backend=node.backend,
            worker_id=worker_id,
        )
        listener = StreamListener(self)
        self.stream = self._keeper.infer(node, request, listener)
        self.started()
        self._run(self.stream, node.name, listener)

    def _start_through_queen(self, prompt: str, model: str) -> None:
        if not model:
            self.failed("No model: type an inventory model's name or a reference.")
            return
        request = QueenRequest(prompt=prompt, model=model, max_tokens=self.max_tokens)
        listener = StreamListener(self)
        self.stream = self._keeper.infer_through_queen(request, listener)
        self.started()
        self._run(self.stream, None, listener)

    @work(group="stream", exit_on_error=False)
    async def _run(
        self, stream: InferRun | QueenInfer, node: str | None, listener: StreamListener
    ) -> None:
        code = await stream.run()
        node = node or listener.routed_to
        self.post_message(StreamEnded(node, code, listener.stats.tokens_per_s))

    def cancel(self) -> None:
        if self.stream is not None:
            self.stats("canceling…")
            self.stream.cancel()

    @while_running
    def on_stream_status(self, message: StreamStatus) -> None:
        self.stats(message.text)

    @while_running
    def on_stream_token(self, message: StreamToken) -> None:
        self.add_token(message.text, message.tokens, message.ttft_s, message.tokens_per_s)

    @while_running
    def on_stream_failed(self, message: StreamFailed) -> None:
        self.failed(message.error.in_words())

    @while_running
    def on_stream_ended(self, message: StreamEnded) -> None:
        self.stream = None
        if message.exit_code == 0:  # otherwise the panel already says why (or "Canceled.")
            self.answered(message.tokens_per_s)
        self.post_message(self.Ended(message.node))

    def target(self, node: str | None, worker: tuple[str, str] | None = None) -> None:
        """The node (and optionally a worker there, with its model) the next prompt goes
        to, unless it goes through the queen."""
        self.node = node
        self.worker = worker
        self._show_target()
        if worker:
            self.query_one("#stream-model", Input).value = worker[1]

    def toggle_queen(self) -> None:
        """Prompts go through the queen, or back to the selected node."""
        self.through_queen = not self.through_queen
        self._show_target()
        self.stats(
            "Prompts go through the queen: it picks the node."
            if self.through_queen
            else f"Prompts go to {self.node or 'the selected node'}."
        )

    def _show_target(self) -> None:
        where = "via queen" if self.through_queen else f"on {self.node or '?'}"
        self.query_one("#stream-node", Label).update(where)

    def started(self) -> None:
        self._cancel_repaint()
        self.answer = ""
        self.query_one("#stream-answer", Static).update("")
        box = self.query_one("#stream-answer-box")
        box.anchor(False)
        box.scroll_home(animate=False)
        self._show_stats("starting…")

    def stats(self, text: str) -> None:
        """A status line of the app's (canceling, canceled, waiting): after the tokens so far."""
        self._flush()
        self._show_stats(text)

    def _show_stats(self, text: str) -> None:
        stats = self.query_one("#stream-stats", Static)
        stats.update(text)
        stats.remove_class("error")

    def failed(self, text: str) -> None:
        self.stats(text)
        self.query_one("#stream-stats", Static).add_class("error")

    def add_token(
        self, text: str, tokens: int, ttft_s: float | None, tokens_per_s: float | None
    ) -> None:
        self.answer += text
        ttft = "-" if ttft_s is None else f"{ttft_s * 1000:.0f} ms"
        speed = "-" if tokens_per_s is None else f"{tokens_per_s:.1f}"
        self._stats_text = f"{tokens} tokens · TTFT {ttft} · {speed} tok/s"
        if self._repaint is None:
            self._repaint = self.set_timer(ANSWER_REPAINT_S, self._flush)

    def _flush(self) -> None:
        """Shows the answer and stats as they are now (see ANSWER_REPAINT_S)."""
        if self._repaint is None:
            return
        self._cancel_repaint()
        self.query_one("#stream-answer", Static).update(self.answer)
        box = self.query_one("#stream-answer-box")
        if box.max_scroll_y > 0 and not box.is_anchored:
            # Taller than the panel: keep the newest tokens in view, until the person scrolls
            # up to read (anchored only now: an anchored short answer would sit at the bottom).
            box.anchor()
        self._show_stats(self._stats_text)

    def _cancel_repaint(self) -> None:
        if self._repaint is not None:
            self._repaint.stop()
            self._repaint = None

    def answered(self, tokens_per_s: float | None) -> None:
        """The answer is complete: its speed joins the sparkline."""
        self._flush()
        if tokens_per_s is not None:
            self._speeds = [*self._speeds, tokens_per_s][-SPARKLINE_REQUESTS:]
            self.query_one(Sparkline).data = self._speeds
        stats = self.query_one("#stream-stats", Static)
        stats.update(f"{stats.content} · done")
