"""`rbee-hive`: the per-node pool manager's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from rbee.dataplane.plumbing.cli_options import read_key_file, split_addr
from rbee.dataplane.protocol.wire import VERSION

from .settings import API_KEY_ENV, DEFAULT_ADDR, DEFAULT_STATE_DIR, KEY_FILE, HiveSettings

if TYPE_CHECKING:
    from rbee.dataplane.plumbing.pidfile import Holder, PidFile


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="rbee-hive")
def main() -> None:
    """The pool manager of one node: spawns workers, keeps the model catalog."""


@main.command()
@click.option(
    "--addr",
    default=DEFAULT_ADDR,
    show_default=True,
    help="HOST:PORT to listen on. Anything but loopback needs an API key.",
)
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Catalog, downloaded models, worker logs and the pid file.",
)
@click.option(
    "--idle-timeout-s",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Shut down a worker idle this long.",
)
@click.option(
    "--health-interval-s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="How often each worker's /health is checked.",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"File holding the API key (mode 0600). Or set {API_KEY_ENV}.",
)
@click.option(
    "--ram-budget-mb",
    type=click.IntRange(min=1),
    default=None,
    help="Never count on more RAM than this in the spawn preflight.",
)
@click.option(
    "--max-workers",
    type=click.IntRange(min=1),
    default=HiveSettings.max_workers,
    show_default=True,
    help="Refuse a spawn past this many workers.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def daemon(
    addr: str,
    state_dir: str,
    idle_timeout_s: float,
    health_interval_s: float,
    api_key_file: Path | None,
    ram_budget_mb: int | None,
    max_workers: int,
    log_level: str,
) -> None:
    """Run the hive (until SIGTERM: then every worker is stopped and it exits 0)."""
    from rbee.dataplane.plumbing.http import bind
    from rbee.dataplane.plumbing.pidfile import AlreadyRunning

    from .daemon import run_hive

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check is noise
    host, port = split_addr(addr, "--addr")
    settings = HiveSettings(
        host=host,
        port=port,
        state_dir=Path(state_dir).expanduser(),
        api_key=_read_api_key(api_key_file),
        idle_timeout_s=idle_timeout_s,
        health_interval_s=health_interval_s,
        ram_budget_mb=ram_budget_mb,
        max_workers=max_workers,
    )
    if not settings.is_loopback and not settings.api_key:
        raise click.UsageError(
            f"refusing to listen on {host} without an API key: use "
            f"--api-key-file or {API_KEY_ENV} (or listen on 127.0.0.1)"
        )
    try:
        with settings.pid_file.hold():
            try:
                sock = bind(host, port)
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {addr}: {exc.strerror}") from None
            asyncio.run(run_hive(settings, sock))
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--addr", default=DEFAULT_ADDR, show_default=True)
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help=f"Where to find the key rbee made ({KEY_FILE}).",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"The hive's key (mode 0600). Default: ${API_KEY_ENV}, else the key rbee "
    f"made in the state dir ({KEY_FILE}), if any.",
)
def status(addr: str, state_dir: str, api_key_file: Path | None) -> None:
    """Is the hive on this node up, and what runs on it."""
    made = HiveSettings(state_dir=Path(state_dir).expanduser()).key_path
    if api_key_file is None and not os.environ.get(API_KEY_ENV) and made.is_file():
        api_key_file = made
    body = _get(addr, "/v1/workers/list", api_key_file)
    health = _get(addr, "/v1/health", api_key_file)
    click.echo(f"rbee-hive {health['version']} at http://{addr}: {len(body['workers'])} worker(s)")
    for w in body["workers"]:
        click.echo(
            f"  {w['worker_id']}  {w['state']:<8} {w['model_ref']}  {w['url']}  "
            f"slots {w['slots_busy']}/{w['slots_total']}"
        )


@main.command()
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True)
def pid(state_dir: str) -> None:
    """The pid of the hive running with this state dir; exit 3 when none runs.

    Proven by the pid file's lock and recorded start time, never by the pid alone."""
    from rbee.dataplane.plumbing.pidfile import NOT_RUNNING_EXIT

    pid_file, running = _running_hive(state_dir)
    if running.process is None:
        click.echo(pid_file.not_running(running))
        sys.exit(NOT_RUNNING_EXIT)
    click.echo(running.process.pid)


@main.command()
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="How long the hive may take to stop its workers before SIGKILL.",
)
@click.option(
    "--only-pid",
    type=int,
    default=None,
    help="Stop the hive only if it is this process (exit 3 otherwise, as when none runs).",
)
def stop(state_dir: str, timeout_s: float, only_pid: int | None) -> None:
    """Stop the hive running with this state dir: SIGTERM (it stops its workers), SIGKILL
    past --timeout-s. Only a process proven to be that hive is signalled (see `pid`)."""
    from rbee.dataplane.plumbing import pidfile
    from rbee.dataplane.plumbing.cli_options import stop_proven

    pid_file, running = _running_hive(state_dir)
    if running.process is None:
        click.echo(pid_file.not_running(running))
        if only_pid is not None:
            sys.exit(pidfile.NOT_RUNNING_EXIT)
        return
    pid = running.process.pid
    if only_pid is not None and pid != only_pid:
        click.echo(f"rbee-hive (pid {only_pid}) is gone (pid {pid} runs now): nothing stopped")
        sys.exit(pidfile.NOT_RUNNING_EXIT)
    click.echo(stop_proven(running.process, timeout_s, "rbee-hive", "rbee-hive pid"))


def _running_hive(state_dir: str) -> tuple[PidFile, Holder]:
    from rbee.dataplane.plumbing.pidfile import NotProven

    pid_file = HiveSettings(state_dir=Path(state_dir).expanduser()).pid_file
    try:
        return pid_file, pid_file.check()
    except (NotProven, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def models() -> None:
    """The node's model catalog."""


@models.command("list")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_list(state_dir: str, as_json: bool) -> None:
    """Models in the catalog (read from the state dir; the hive need not run)."""
    from .catalog import ModelCatalog

    path = Path(state_dir).expanduser() / "catalog.db"
    entries = ModelCatalog(path).list() if path.exists() else []
    if as_json:
        click.echo(json.dumps([e.model_entry().wire() for e in entries], indent=2))
        return
    if not entries:
        click.echo("No models in the catalog.")
    for e in entries:
        click.echo(f"{e.reference}  {e.size_bytes >> 20} MB  {e.local_path}")


def _read_api_key(path: Path | None) -> str | None:
    if path is None:
        return os.environ.pop(API_KEY_ENV, None) or None
    return read_key_file(path)


def _get(addr: str, path: str, api_key_file: Path | None) -> dict[str, Any]:
    key = _read_api_key(api_key_file)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"http://{addr}{path}", headers=headers, timeout=10)
    except httpx.TransportError:
        raise click.ClickException(
            f"no hive answers at {addr}: start it with `rbee-hive daemon`"
        ) from None
    if response.status_code >= 400:
        raise click.ClickException(response.json().get("error", {}).get("message", response.text))
    answer: dict[str, Any] = response.json()
    return answer
