"""`rbee queen`: the cluster's one front door (DESIGN §4 "Queen"). The composition root
(tui/command.py) adds it to the `rbee` command; the keeper's CLI knows nothing of it."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from rbee.control.keeper.command import inventory_of
from rbee.dataplane.plumbing.cli_options import read_key_file, split_addr

from .settings import DEFAULT_LISTEN, QueenSettings


@click.command()
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where applications reach the queen (another address than loopback needs a key).",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The key clients send (Authorization: Bearer), in a file of mode 0600.",
)
@click.option("--log-level", default="info", show_default=True)
@click.pass_context
def queen(ctx: click.Context, listen: str, api_key_file: Path | None, log_level: str) -> None:
    """One OpenAI-compatible URL for the whole cluster: each request goes to a worker of
    its model on any node (until Ctrl+C; hives keep running)."""
    from rbee.dataplane.plumbing.http import bind

    from .service import run_queen

    host, port = split_addr(listen, "--listen")
    settings = QueenSettings(
        host=host,
        port=port,
        api_key=read_key_file(api_key_file) if api_key_file is not None else None,
    )
    if not settings.is_loopback and not settings.api_key:
        raise click.UsageError(
            f"refusing to listen on {host} without an API key: give --api-key-file "
            "(or listen on 127.0.0.1)"
        )
    inventory = inventory_of(ctx)
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # the keeper's CLI configured WARNING before this command ran
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe is noise
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}") from None
    key_file = str(api_key_file.resolve()) if api_key_file is not None else None
    asyncio.run(run_queen(inventory, settings, sock, key_file))
