"""The whole `rbee` command: the keeper's command line plus `rbee tui`.

The composition root: the keeper's CLI (rbee.control.keeper.command) knows nothing of the
dashboard, so the one place that may import both adds the dashboard's command to it, and the
`rbee` console script points here. Textual loads only when the dashboard runs.
"""

from __future__ import annotations

import click

from rbee.control.keeper.command import inventory_of, main
from rbee.control.keeper.settings import DEFAULT_REFRESH_S
from rbee.control.queen.command import queen

__all__ = ["main"]

main.add_command(queen)


@main.command()
@click.option(
    "--refresh",
    "refresh_s",
    type=click.FloatRange(min=0.2),
    default=DEFAULT_REFRESH_S,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between node refreshes.",
)
@click.pass_context
def tui(ctx: click.Context, refresh_s: float) -> None:
    """The dashboard: nodes, workers, a prompt, the hive's log, and actions on them."""
    from rbee.control.keeper.worker_registry import WorkerRegistry

    from .app import RbeeApp
    from .settings import TuiConfig

    registry = WorkerRegistry()
    try:
        RbeeApp(inventory_of(ctx), registry, TuiConfig(refresh_s=refresh_s)).run()
    finally:
        registry.close()
