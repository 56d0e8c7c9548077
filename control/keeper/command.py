"""`rbee`: the keeper's command line (operator machine).

`rbee --help` must be quick (issue 15: under 150 ms), so this module imports only what the
commands' options name; the keeper itself (asyncssh, httpx, pydantic, rich) loads inside the
commands that run it. tests/keeper/test_command.py holds the line.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, get_args

import click
from click.core import ParameterSource

from rbee.dataplane.protocol.backends import Backend
from rbee.dataplane.protocol.limits import MAX_TOKENS_LIMIT
from rbee.dataplane.protocol.model_refs import DEFAULT_MODEL_REF

from .inventory_errors import InventoryError

if TYPE_CHECKING:
    from .console import Console
    from .fleet_progress import NodeListener
    from .inventory import Inventory
    from .keeper import Keeper
    from .node import Node


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--inventory",
    "inventory_path",
    default=None,
    metavar="FILE",
    help="inventory.toml (else $RBEE_INVENTORY, ~/.config/rbee/inventory.toml, "
    "the bundled example).",
)
@click.version_option(package_name="rbee", prog_name="rbee")  # read on --version only
@click.pass_context
def main(ctx: click.Context, inventory_path: str | None) -> None:
    """Run LLM inference on the machines you already own."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = inventory_path


class InventoryMistake(click.ClickException):
    """The inventory cannot be read: refused before any network call, with exit 2 like the
    command line's own mistakes (an unknown node, a bad model reference)."""

    exit_code = 2


def inventory_of(ctx: click.Context) -> Inventory:
    """The inventory the command line names (`--inventory`, else the usual places)."""
    from .inventory import find_inventory, load_inventory

    try:
        return load_inventory(find_inventory(ctx.obj))
    except InventoryError as exc:
        raise InventoryMistake(str(exc)) from None


@main.command()
@click.argument("prompt_words", nargs=-1)
@click.option("--prompt", default=None, help="The prompt (or give it as arguments).")
@click.option("--node", default="local", show_default=True)
@click.option(
    "--model",
    "model_ref",
    default=DEFAULT_MODEL_REF,
    show_default=True,
    help="A model reference; with --queen, an inventory model's name works too.",
)
@click.option(
    "--queen",
    "through_queen",
    is_flag=True,
    help="Send the prompt through the running queen (`rbee queen`): it picks the node and "
    "the worker, or starts one.",
)
@click.option(
    "--chat",
    is_flag=True,
    help="Send the prompt as a chat message, in the model's chat template (as "
    "/v1/chat/completions does), instead of text to continue.",
)
@click.option(
    "--max-tokens", type=click.IntRange(1, MAX_TOKENS_LIMIT), default=200, show_default=True
)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the model to load.",
)
@click.option(
    "--retry",
    "busy_retries",
    type=click.IntRange(0, 10),
    default=3,
    show_default=True,
    help="Retries when the worker is busy (after 1, 2, 4 … s).",
)
@click.option(
    "--backend",
    type=click.Choice(get_args(Backend)),
    default=None,
    help="cpu, cuda or metal (default: the node's backend in the inventory).",
)
@click.option(
    "--device",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Which GPU of the node (cuda, metal).",
)
@click.pass_context
def infer(
    ctx: click.Context,
    prompt_words: tuple[str, ...],
    prompt: str | None,
    node: str,
    model_ref: str,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    timeout_s: float,
    busy_retries: int,
    backend: Backend | None,
    device: int,
    through_queen: bool,
    chat: bool,
) -> None:
    """Stream an answer from MODEL on NODE, or through the queen (tokens on stdout,
    progress on stderr)."""
    text = prompt if prompt is not None else " ".join(prompt_words)
    if not text.strip():
        raise click.UsageError('give a prompt: rbee infer "write a short story"')
    from .infer import InferRequest
    from .queen_infer import QueenRequest

    if through_queen:
        _refuse_node_options(ctx)
        if not model_ref.strip():
            raise click.BadParameter("give a model's name or reference", param_hint="--model")
        queen_request = QueenRequest(
            prompt=text,
            model=model_ref.strip(),
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            chat=chat,
        )
        _run(
            ctx,
            lambda keeper, console: _cancelable(keeper.infer_through_queen(queen_request, console)),
        )
        return
    from rbee.dataplane.protocol.model_refs import InvalidModelRef, parse_model_ref

    try:
        model_ref = parse_model_ref(model_ref).spelled
    except InvalidModelRef as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    inventory = inventory_of(ctx)
    try:
        target = inventory.get(node)
    except InventoryError as exc:
        raise click.BadParameter(str(exc), param_hint="--node") from None
    request = InferRequest(
        prompt=text,
        model_ref=model_ref,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        loading_timeout_s=timeout_s,
        busy_retries=busy_retries,
        backend=backend or target.backend,
        device=device,
        chat=chat,
    )

    _run(ctx, lambda keeper, console: _cancelable(keeper.infer(target, request, console)))


# The options that choose where plain infer runs: the queen chooses for itself.
NODE_OPTIONS = ("node", "timeout_s", "busy_retries", "backend", "device")


def _refuse_node_options(ctx: click.Context) -> None:
    """A node option given with --queen would be ignored: refused, naming it."""
    for param in ctx.command.params:
        if param.name in NODE_OPTIONS and ctx.get_parameter_source(param.name) not in (
            ParameterSource.DEFAULT,
            None,
        ):
            raise click.UsageError(
                f"{param.opts[0]} does not go with --queen: the queen picks the node and "
                "the worker (leave out --queen to choose them)"
            )


class _Cancelable(Protocol):
    def cancel(self) -> None: ...

    async def run(self) -> int: ...


async def _cancelable(run: _Cancelable) -> int:
    """An infer flow on the terminal: Ctrl+C cancels it (EC5)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, run.cancel)
    try:
        return await run.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _nodes(ctx: click.Context, names: tuple[str, ...]) -> list[Node]:
    inventory = inventory_of(ctx)
    try:
        return [inventory.get(name) for name in names]
    except InventoryError as exc:
        raise click.BadParameter(str(exc), param_hint="NODE") from None


def _on_each(
    ctx: click.Context,
    names: tuple[str, ...],
    action: Callable[[Keeper, Node, NodeListener], Awaitable[str]],
    done: str,
) -> None:
    """Runs `action` on every named node at once: a live row per node on a terminal, a line
    per node when piped, then the summary (fleet_progress.py); exit 1 if any failed."""
    import asyncio

    from .console import Console
    from .fleet_progress import FleetProgress
    from .keeper import Keeper
    from .runner import RunnerError
    from .words import ActionableError

    inventory = inventory_of(ctx)
    nodes = list({node.name: node for node in _nodes(ctx, names)}.values())
    console = Console()

    async def all_nodes() -> bool:
        with FleetProgress(console, [node.name for node in nodes], done) as progress:
            async with Keeper(inventory) as keeper:

                async def one(node: Node) -> None:
                    try:
                        said = await action(keeper, node, progress.listener(node.name))
                    except (ActionableError, InventoryError, RunnerError) as exc:
                        # InventoryError, RunnerError: rbee deploy's own connection
                        progress.failed(node.name, exc)
                    else:
                        progress.succeeded(node.name, said)

                await asyncio.gather(*(one(node) for node in nodes))
            return not progress.any_failed

    if not asyncio.run(all_nodes()):
        sys.exit(1)


_bundled_model = click.option(
    "--bundled-model/--no-bundled-model",
    default=True,
    show_default=True,
    help="Also install the default model's package (about 250 MB) on the node.",
)


@main.command("ssh-up")
@click.argument("names", nargs=-1, required=True, metavar="NODE...")
@click.option(
    "--no-install",
    is_flag=True,
    help="Fail (with the install command) instead of installing rbee on a node that "
    "lacks it or has another version.",
)
@_bundled_model
@click.pass_context
def ssh_up(
    ctx: click.Context, names: tuple[str, ...], no_install: bool, bundled_model: bool
) -> None:
    """Start the hive on NODEs (over SSH), installing rbee first where it is missing or
    another version, and wait until it answers."""
    from .install_plan import Installer

    installer = None if no_install else Installer(bundled_model=bundled_model)
    try:
        _on_each(
            ctx,
            names,
            lambda keeper, node, listener: keeper.hive_up(node, listener, installer=installer),
            "up",
        )
    finally:
        if installer is not None:
            installer.close()


@main.command("ssh-down")
@click.argument("names", nargs=-1, required=True, metavar="NODE...")
@click.pass_context
def ssh_down(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Stop the hive on NODEs; their workers stop with it."""
    _on_each(ctx, names, lambda keeper, node, listener: keeper.hive_down(node, listener), "stopped")


@main.command()
@click.argument("names", nargs=-1, required=True, metavar="NODE...")
@_bundled_model
@click.pass_context
def deploy(ctx: click.Context, names: tuple[str, ...], bundled_model: bool) -> None:
    """Install rbee on NODEs over SSH (fabric): build the wheel here, upload it, create the
    venv at the node's rbee_path, pip install, check the version."""
    from .deploy import deploy as deploy_node  # fabric/paramiko: ~0.1 s no other command pays
    from .install_plan import Installer

    installer = Installer(bundled_model=bundled_model)
    try:
        _on_each(
            ctx,
            names,
            lambda _keeper, node, listener: deploy_node(node, installer, listener.status),
            "installed",
        )
    finally:
        installer.close()


def _run(ctx: click.Context, work: Callable[[Keeper, Console], Awaitable[int]]) -> None:
    """Runs one command on the cluster; its ActionableErrors become words and exit 1."""
    import asyncio

    from .console import Console
    from .keeper import Keeper
    from .words import ActionableError

    inventory = inventory_of(ctx)
    console = Console()

    async def run() -> int:
        async with Keeper(inventory) as keeper:
            try:
                return await work(keeper, console)
            except ActionableError as exc:
                console.explain(exc)
                return 1

    sys.exit(asyncio.run(run()))


def _node(ctx: click.Context, name: str) -> Node:
    return _nodes(ctx, (name,))[0]


def _output(each: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A listing's `-o/--output`: the table for people, or JSON for scripts."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help=f"json: one object per {each}, for scripts (docs/keeper.md names the keys).",
    )


@main.command()
@_output("node")
@click.pass_context
def nodes(ctx: click.Context, output: str) -> None:
    """Every node of the inventory: hive state, version, workers, models; each row as its
    node answers, all within the longest SSH connect timeout + 2 s."""
    from . import fleet

    _run(ctx, lambda keeper, console: fleet.nodes_table(keeper, console, output))


@main.group()
def workers() -> None:
    """Workers: those this keeper started, and what each node's hive runs."""


@workers.command("list")
@_output("worker")
@click.pass_context
def workers_list(ctx: click.Context, output: str) -> None:
    """The workers this keeper started, as their hives report them now (a node that does
    not answer within 5 s shows its workers' state as unknown)."""
    from . import fleet

    _run(ctx, lambda keeper, console: fleet.workers_list(keeper, console, output))


@workers.command("env")
@click.argument("worker_id")
@click.pass_context
def workers_env(ctx: click.Context, worker_id: str) -> None:
    """OPENAI_BASE_URL and OPENAI_API_KEY of WORKER_ID, as export lines:
    eval "$(rbee workers env WORKER_ID)". The key is the worker's own; keep it private."""
    from . import fleet

    _run(ctx, lambda keeper, console: fleet.workers_env(keeper, worker_id, console))


@workers.command("health")
@click.option("--node", "node_name", default="local", show_default=True)
@click.pass_context
def workers_health(ctx: click.Context, node_name: str) -> None:
    """Ask each worker on NODE how it is, now."""
    from . import fleet

    node = _node(ctx, node_name)
    _run(ctx, lambda keeper, console: fleet.workers_health(keeper, node, console))


@workers.command("shutdown")
@click.option("--id", "worker_id", required=True, help="The worker to stop.")
@click.option(
    "--node",
    "node_name",
    default=None,
    help="Its node (default: the node the registry knows it on).",
)
@click.pass_context
def workers_shutdown(ctx: click.Context, worker_id: str, node_name: str | None) -> None:
    """Stop one worker gracefully."""
    from . import fleet
    from .worker_registry import WorkerRegistry

    if not node_name:
        registry = WorkerRegistry()
        try:
            known = registry.get(worker_id)
        finally:
            registry.close()
        if known is None:
            raise click.UsageError(f"{worker_id} is not in this keeper's registry: give --node")
        node_name = known.node
    node = _node(ctx, node_name)
    _run(ctx, lambda keeper, console: fleet.workers_shutdown(keeper, node, worker_id, console))


@main.group()
def models() -> None:
    """Models in a node's catalog."""


@models.command("list")
@click.option("--node", "node_name", default="local", show_default=True)
@_output("model")
@click.pass_context
def models_list(ctx: click.Context, node_name: str, output: str) -> None:
    """The models NODE has."""
    from . import fleet

    node = _node(ctx, node_name)
    _run(ctx, lambda keeper, console: fleet.models_list(keeper, node, console, output))


@models.command("download")
@click.argument("model_ref")
@click.option("--node", "node_name", default="local", show_default=True)
@click.pass_context
def models_download(ctx: click.Context, model_ref: str, node_name: str) -> None:
    """Put MODEL_REF in NODE's catalog, with a progress bar."""
    from rbee.dataplane.protocol.model_refs import InvalidModelRef, parse_model_ref

    from . import fleet

    try:
        model_ref = parse_model_ref(model_ref).spelled
    except InvalidModelRef as exc:
        raise click.BadParameter(str(exc), param_hint="MODEL_REF") from None
    node = _node(ctx, node_name)
    _run(ctx, lambda keeper, console: fleet.models_download(keeper, node, model_ref, console))


@main.command()
@click.option("--node", "node_name", default="local", show_default=True)
@click.option("--follow", is_flag=True, help="Keep printing new lines until Ctrl+C.")
@click.pass_context
def logs(ctx: click.Context, node_name: str, follow: bool) -> None:
    """NODE's hive log."""
    from . import fleet

    node = _node(ctx, node_name)
    _run(ctx, lambda keeper, console: fleet.logs(keeper, node, follow, console))
