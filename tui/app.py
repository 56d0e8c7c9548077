"""`rbee tui`: the cluster console. Everything it knows and does goes through the keeper's
facade (control.keeper.keeper); long calls run as Textual workers and report back with
messages (through the listeners of listeners.py), so the screen never waits on the network."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from rbee.control.keeper.inventory import Inventory
from rbee.control.keeper.keeper import Keeper
from rbee.control.keeper.node import Node
from rbee.control.keeper.scheduled_probes import ScheduledProbes
from rbee.control.keeper.status import LogLine, NodeStatus
from rbee.control.keeper.words import ActionableError
from rbee.control.keeper.worker_registry import WorkerRegistry
from rbee.dataplane.protocol.model_refs import DEFAULT_MODEL_REF

from .activity_bar import ActivityBar
from .confirm_screen import ConfirmScreen
from .listeners import ActionListener
from .log_panel import LogPanel
from .messages import (
    ActionDone,
    ActionFailed,
    ActionProgress,
    HiveLogFailed,
    HiveLogLine,
    NodeProbed,
    while_running,
)
from .model_picker import ModelPickerScreen
from .nodes_table import NodesTable
from .queen_panel import QueenPanel
from .settings import WORKER_LOAD_TIMEOUT_S, TuiConfig
from .stream_panel import StreamPanel
from .workers_table import WorkersTable

SHORT_ROWS = 32  # a terminal with fewer rows gets the compact layout
ROWS_BATCH_S = 0.5  # the nodes' rows probed within this are redrawn together


class RbeeApp(App[None]):
    CSS_PATH = "app.tcss"
    VERTICAL_BREAKPOINTS = [(0, "-short"), (SHORT_ROWS, "-tall")]  # see app.tcss
    TITLE = "rbee"
    SUB_TITLE = "cluster console"
    BINDINGS = [
        Binding("p", "prompt", "prompt"),
        Binding("space", "mark", "mark"),
        Binding("u", "ssh_up", "ssh-up"),
        Binding("d", "ssh_down", "ssh-down"),
        Binding("s", "spawn", "spawn"),
        Binding("x", "shutdown_worker", "stop"),
        Binding("m", "download", "download"),
        # Keys that also work while typing a prompt (the letters go to the prompt then).
        Binding("c,ctrl+g", "cancel_stream", "cancel"),
        Binding("g", "toggle_queen", "queen"),
        Binding("a", "toggle_all", "all"),
        Binding("r", "refresh", "refresh"),
        Binding("q", "quit", "quit"),
        Binding("escape", "leave_input", "leave prompt"),
    ]

    def __init__(
        self, inventory: Inventory, registry: WorkerRegistry, config: TuiConfig | None = None
    ) -> None:
        super().__init__()
        self.nodes = {node.name: node for node in inventory.nodes.values()}
        # Its connections (one per node, kept across probes) close when the app does.
        self.keeper = Keeper(inventory, registry)
        self.config = config or TuiConfig()
        self.statuses: dict[str, NodeStatus] = {}
        self.show_all_workers = False
        # Each node's probe is a plain task, not a Textual worker (whose state changes are
        # messages to the app: three per probe, a share of the idle CPU at 60 nodes).
        self._probes = ScheduledProbes(
            self.nodes.values(), self.config.refresh_s, self.keeper.probe, self._probed
        )
        self._unshown: dict[str, tuple[NodeStatus, float]] = {}  # rows to redraw, and when
        self._log_following = False
        self._highlighted_worker: str | None = None
        self._action_numbers = itertools.count()

    def compose(self) -> ComposeResult:
        # The tables span the width, so every column shows; the stream and the log share
        # the rest of the height below them.
        yield Header()
        yield NodesTable(list(self.nodes.values()), id="nodes")
        yield Static("", markup=False, id="node-problem")  # the words of an error, as text
        yield WorkersTable(id="workers")
        yield Static("", id="worker-detail")
        with Horizontal(id="below"):
            yield StreamPanel(self.keeper, self.nodes, self.config.max_tokens, id="stream")
            yield LogPanel(id="log")
        yield QueenPanel(self.keeper, id="queen")
        yield ActivityBar(id="activity")
        # Every key's hint fits at 120 columns without the palette's (^p still opens it).
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.main.query_one("#nodes").border_title = "nodes"
        self.main.query_one("#stream").border_title = "stream"
        self.main.query_one(NodesTable).focus()
        self.action_refresh()
        # The schedule says which nodes are due; a second's tick also counts silences up.
        self.set_interval(self._probes.tick_s, self._probe_due)
        self.set_interval(self.config.refresh_s, self.main.query_one(QueenPanel).refresh_queen)

    async def on_unmount(self) -> None:
        await self._probes.aclose()
        await self.keeper.aclose()

    # ----------------------------------------------------------------- what is selected

    @property
    def main(self) -> Screen[None]:
        """The dashboard's screen: dialogs go on top of it, so lookups must not follow
        `self.screen` there."""
        return self.screen_stack[0]

    @property
    def nodes_table(self) -> NodesTable:
        return self.main.query_one(NodesTable)

    @property
    def workers_table(self) -> WorkersTable:
        return self.main.query_one(WorkersTable)

    @property
    def activity(self) -> ActivityBar:
        return self.main.query_one(ActivityBar)

    @property
    def stream_panel(self) -> StreamPanel:
        return self.main.query_one(StreamPanel)

    @property
    def selected_node(self) -> Node | None:
        name = self.nodes_table.selected_node
        return self.nodes.get(name) if name else None

    # ----------------------------------------------------------------- refreshing

    def action_refresh(self) -> None:
        """Probes every node now (each at its own pace after), and asks the queen."""
        for name in self.nodes:
            self._probes.soon(name)
        self._probe_due()
        self.main.query_one(QueenPanel).refresh_queen()

    def _probe_due(self) -> None:
        """Starts the probes that are due (a slow node delays no other; one stuck past its
        deadline is given up, its node shown not answering), and counts silences up."""
        self._probes.tick()
        now = time.monotonic()
        for name in self.nodes:
            if (silent_s := self._probes.schedule.silent_s(name, now)) is not None:
                self.nodes_table.show_silence(name, silent_s)

    def _probed(self, status: NodeStatus) -> None:
        self.post_message(NodeProbed(status, self.config.clock()))

    @while_running
    def on_node_probed(self, message: NodeProbed) -> None:
        self._show_status(message.status, message.checked_at)

    def _show_status(self, status: NodeStatus, checked_at: float) -> None:
        self.statuses[status.name] = status
        if not self._unshown:
            self.set_timer(ROWS_BATCH_S, self._show_rows)
        self._unshown[status.name] = (status, checked_at)
        if status.name == self.nodes_table.selected_node:
            self._show_problem(status)
        if self.show_all_workers or status.name == self.nodes_table.selected_node:
            self._show_workers()
        log = self.main.query_one(LogPanel)
        if status.name == log.node and status.is_up and not self._log_following:
            log.follow(status.name)  # afresh: the failure's line goes, the hive resends its lines
            self._follow_log(self.nodes[status.name])

    def _show_rows(self) -> None:
        """The nodes' rows that changed, in one repaint (one per probe cost most of an idle
        dashboard's CPU at many nodes)."""
        rows, self._unshown = self._unshown, {}
        if not self.is_running or not self.screen_stack:
            return  # the app closed since
        now = time.monotonic()
        for status, checked_at in rows.values():
            self.nodes_table.show(
                status, checked_at, self._probes.schedule.silent_s(status.name, now)
            )

    def _show_problem(self, status: NodeStatus | None) -> None:
        """The selected node's trouble in full, with what to do, under the table."""
        problem = self.main.query_one("#node-problem", Static)
        text = ""
        if status is not None and status.problem is not None:
            text = f"{status.name}: {status.problem}" + (
                f"\nSuggestion: {status.suggestion}" if status.suggestion else ""
            )
        if text != str(problem.content):  # an update lays the screen out again
            problem.update(text)
            problem.display = bool(text)

    def _show_workers(self) -> None:
        selected = self.nodes_table.selected_node
        names = list(self.statuses) if self.show_all_workers else [selected]
        workers = [w for name in names if (s := self.statuses.get(name or "")) for w in s.workers]
        self.workers_table.show(workers)
        self.workers_table.border_title = (
            "workers: every node" if self.show_all_workers else f"workers: {selected}"
        )
        self._show_worker_detail()

    def _show_worker_detail(self) -> None:
        """The selected worker's model, url and error in full (the table clips them)."""
        detail = self.main.query_one("#worker-detail", Static)
        worker = self.workers_table.selected
        text = Text()
        if worker is not None:
            text.append(f"{worker.worker_id} on {worker.node}: {worker.model_ref} at {worker.url}")
            if worker.error:
                text.append(f"\n{worker.error}", style="red")
        if text != detail.content:  # an update lays the screen out again
            detail.update(text)
            detail.display = worker is not None

    @on(DataTable.RowHighlighted, "#nodes")
    def node_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        node = self.selected_node
        if node is None:
            return
        self._highlighted_worker = None  # prompts go to the node, until a worker is picked
        self._show_workers()
        self._show_problem(self.statuses.get(node.name))
        self.stream_panel.target(node.name)
        self.main.query_one(LogPanel).follow(node.name)
        self._follow_log(node)

    @on(DataTable.RowHighlighted, "#workers")
    def worker_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_worker_detail()
        worker = self.workers_table.selected
        if worker is None or worker.worker_id == self._highlighted_worker:
            return  # the 2-s redraw put the cursor back: keep what the person typed
        self._highlighted_worker = worker.worker_id
        self.stream_panel.target(worker.node, (worker.worker_id, worker.model_ref))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`esc leave prompt` shows (and works) while a text field has the keys."""
        if action == "leave_input":
            return isinstance(self.focused, Input)
        return True

    def action_prompt(self) -> None:
        """To the prompt in one key (from the tables, where the single-key bindings work)."""
        self.main.query_one("#prompt", Input).focus()

    def action_leave_input(self) -> None:
        """From the prompt back to the tables, where the single-key bindings work."""
        self.nodes_table.focus()

    def action_toggle_all(self) -> None:
        self.show_all_workers = not self.show_all_workers
        self._show_workers()

    # ----------------------------------------------------------------- the hive's log

    def _follow_log(self, node: Node) -> None:
        self._log_following = True
        self.follow_log(node)

    @work(group="log", exclusive=True, exit_on_error=False)
    async def follow_log(self, node: Node) -> None:
        def show(line: LogLine) -> None:
            self.post_message(HiveLogLine(node.name, line))

        try:
            await self.keeper.follow_logs(node, show)
            problem = ActionableError("the log ended: the hive stopped")
        except ActionableError as exc:
            problem = exc
        self.post_message(HiveLogFailed(node.name, problem))

    @while_running
    def on_hive_log_line(self, message: HiveLogLine) -> None:
        log = self.main.query_one(LogPanel)
        if message.node == log.node:
            log.add(message.line)

    @while_running
    def on_hive_log_failed(self, message: HiveLogFailed) -> None:
        log = self.main.query_one(LogPanel)
        if message.node == log.node:
            self._log_following = False  # the next probe that finds the hive up follows again
            log.problem(message.error.in_words())

    # ----------------------------------------------------------------- long actions

    @work(group="actions", exit_on_error=False)
    async def act(
        self, node: Node, doing: str, action: Callable[[ActionListener], Awaitable[str]]
    ) -> None:
        """One long action on a node: its own line in the activity bar, with each step while
        it runs, then its outcome in words."""
        number = next(self._action_numbers)
        listener = ActionListener(self, number)
        listener.say(doing)
        try:
            outcome = await action(listener)
        except ActionableError as exc:
            self.post_message(ActionFailed(number, exc, node.name))
            return
        self.post_message(ActionDone(number, outcome, node.name))

    @while_running
    def on_action_progress(self, message: ActionProgress) -> None:
        self.activity.working(message.action, message.text, message.fraction)

    @while_running
    def on_action_done(self, message: ActionDone) -> None:
        self.activity.done(message.action, message.text)
        self._probe_now(message.node)

    @while_running
    def on_action_failed(self, message: ActionFailed) -> None:
        words = message.error.in_words()
        # SSH errors name their node already; the line must name it once.
        prefix = "" if words.startswith(f"{message.node}: ") else f"{message.node}: "
        self.activity.failed(message.action, prefix + words)
        self._probe_now(message.node)

    def _probe_now(self, name: str) -> None:
        self._probes.soon(name)
        self._probe_due()

    def action_mark(self) -> None:
        """Marks (or unmarks) the selected node: ssh-up and ssh-down act on every marked one."""
        if name := self.nodes_table.selected_node:
            self.nodes_table.toggle_mark(name)

    def _hive_targets(self) -> list[Node]:
        """The marked nodes, else the selected one."""
        marked = [node for name, node in self.nodes.items() if name in self.nodes_table.marked]
        selected = self.selected_node
        return marked or ([selected] if selected else [])

    def action_ssh_up(self) -> None:
        for node in self._hive_targets():
            self.act(
                node,
                f"{node.name}: ssh-up…",
                lambda listener, node=node: self.keeper.hive_up(node, listener),
            )

    def action_ssh_down(self) -> None:
        nodes = self._hive_targets()
        if not nodes:
            return
        workers = sum(len(self.statuses[n.name].workers) for n in nodes if n.name in self.statuses)
        names = ", ".join(n.name for n in nodes)

        def answered(yes: bool | None) -> None:
            for node in nodes if yes else []:
                self.act(
                    node,
                    f"{node.name}: ssh-down…",
                    lambda listener, node=node: self.keeper.hive_down(node, listener),
                )

        self.push_screen(
            ConfirmScreen(f"Stop the hive on {names} and its {workers} worker(s)?"), answered
        )

    def _catalog(self, node: Node) -> list[str]:
        status = self.statuses.get(node.name)
        return list(status.models) if status else []

    def action_spawn(self) -> None:
        self._pick_model_then("Spawn a worker on", "starting a worker for", self._spawn)

    def _pick_model_then(
        self,
        title: str,
        doing: str,
        action: Callable[[Node, str, ActionListener], Awaitable[str]],
    ) -> None:
        """A model picked for the selected node (its catalog offered), then `action` on
        them as a line of the activity bar."""
        node = self.selected_node
        if node is None:
            return

        def chosen(ref: str | None) -> None:
            if ref:
                self.act(
                    node,
                    f"{node.name}: {doing} {ref}…",
                    lambda listener: action(node, ref, listener),
                )

        self.push_screen(
            ModelPickerScreen(f"{title} {node.name}", self._catalog(node), DEFAULT_MODEL_REF),
            chosen,
        )

    async def _spawn(self, node: Node, ref: str, listener: ActionListener) -> str:
        worker_id = await self.keeper.spawn_worker(node, ref, listener)
        listener.say(f"{node.name}: {worker_id} loading {ref}…")
        # The outcome says what stays true: a line saying "(loading)" outlived the loading.
        await self.keeper.wait_worker_ready(
            node, worker_id, listener, timeout_s=WORKER_LOAD_TIMEOUT_S
        )
        return f"{node.name}: {worker_id} started for {ref}, ready"

    def action_shutdown_worker(self) -> None:
        selected = self.workers_table.selected
        if selected is None:
            self.activity.notice("No worker selected: pick one in the workers table.")
            return
        node, worker_id = self.nodes[selected.node], selected.worker_id

        def answered(yes: bool | None) -> None:
            if yes:
                self.act(
                    node,
                    f"{node.name}: stopping {worker_id}…",
                    lambda _listener: self._stop_worker(node, worker_id),
                )

        self.push_screen(ConfirmScreen(f"Stop worker {worker_id} on {node.name}?"), answered)

    async def _stop_worker(self, node: Node, worker_id: str) -> str:
        state = await self.keeper.shutdown_worker(node, worker_id)
        return f"{node.name}: {worker_id} {state}"

    def action_download(self) -> None:
        self._pick_model_then("Download a model to", "downloading", self._download)

    async def _download(self, node: Node, ref: str, listener: ActionListener) -> str:
        path = await self.keeper.download_model(node, ref, listener)
        return f"{node.name}: {ref} is in the catalog ({path})"

    # ----------------------------------------------------------------- streaming

    def on_stream_panel_ended(self, message: StreamPanel.Ended) -> None:
        if message.node is not None:
            self._probe_now(message.node)  # its workers' state and speed changed
        if self.stream_panel.through_queen:
            self.main.query_one(QueenPanel).refresh_queen()

    def action_toggle_queen(self) -> None:
        self.stream_panel.toggle_queen()

    def action_cancel_stream(self) -> None:
        self.stream_panel.cancel()
