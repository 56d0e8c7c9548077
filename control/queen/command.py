"""`rbee queen`: the cluster's one front door (DESIGN §4 "Queen"). The composition root
(tui/command.py) adds it to the `rbee` command; the keeper's CLI knows nothing of it.

`rbee queen` runs it in the foreground; `rbee queen start` runs it in the background (its
log in $RBEE_HOME/queen.log), `status` and `stop` find it by its pid file, as `rbee-hive pid`
and `stop` find a hive: a process is the queen only when it holds the file's lock and has
the start time recorded there.

Like the keeper's commands, these import what they run (httpx, psutil, the queen) when they
run, so that `rbee --help` stays quick."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from rbee.control.keeper.command import inventory_of

from .settings import (
    DEFAULT_LISTEN,
    LOG_FILE,
    START_TIMEOUT_S,
    STATUS_TIMEOUT_S,
    STOP_TIMEOUT_S,
    QueenSettings,
)

if TYPE_CHECKING:
    import subprocess

    from rbee.control.keeper.queen_address import QueenAddress
    from rbee.dataplane.plumbing import pidfile

F = TypeVar("F", bound=Callable[..., Any])
_LOG_TAIL_LINES = 15


def _serve_options(command: F) -> F:
    """The options of a queen that serves, in the foreground or the background alike."""
    for option in reversed(
        [
            click.option(
                "--listen",
                default=DEFAULT_LISTEN,
                show_default=True,
                metavar="HOST:PORT",
                help="Where applications reach the queen (another address than loopback "
                "needs a key).",
            ),
            click.option(
                "--api-key-file",
                type=click.Path(path_type=Path, dir_okay=False),
                default=None,
                help="The key clients send (Authorization: Bearer), in a file of mode 0600.",
            ),
            click.option(
                "--stop-hives",
                is_flag=True,
                help="At exit, stop the hives this queen started (others keep running).",
            ),
            click.option(
                "--log-level",
                type=click.Choice(["debug", "info", "warning", "error"]),
                default="info",
                show_default=True,
            ),
        ]
    ):
        command = option(command)
    return command


@click.group(invoke_without_command=True)
@_serve_options
@click.pass_context
def queen(
    ctx: click.Context, listen: str, api_key_file: Path | None, stop_hives: bool, log_level: str
) -> None:
    """One OpenAI-compatible URL for the whole cluster: each request goes to a worker of
    its model on any node. Without a command: runs in the foreground until Ctrl+C,
    starting the hives it needs (they keep running unless --stop-hives)."""
    if ctx.invoked_subcommand is not None:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("listen", "api_key_file", "stop_hives", "log_level")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)} before `{ctx.invoked_subcommand}` would be ignored:\n"
                f"give it after (rbee queen {ctx.invoked_subcommand} {given[0]} …)"
            )
        return
    import asyncio
    import logging

    from rbee.control.keeper.queen_address import clear_queen_address, queen_pid_file
    from rbee.dataplane.plumbing import pidfile
    from rbee.dataplane.plumbing.http import bind

    from .service import run_queen

    settings = _settings(listen, api_key_file, stop_hives)
    inventory = inventory_of(ctx)
    logging.basicConfig(  # forced: `rbee` set up warnings-only logging for the keeper
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for chatty in ("httpx", "asyncssh"):  # a line per probe is noise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    key_file = str(api_key_file.resolve()) if api_key_file is not None else None
    try:
        with queen_pid_file().hold():
            clear_queen_address()  # a killed queen's, naming nobody: only the holder may
            try:
                sock = bind(settings.host, settings.port)
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}") from None
            asyncio.run(run_queen(inventory, settings, sock, key_file))
    except pidfile.AlreadyRunning as exc:
        raise click.ClickException(f"{exc}\n(see `rbee queen status`)") from None


def _settings(listen: str, api_key_file: Path | None, stop_hives: bool) -> QueenSettings:
    from rbee.dataplane.plumbing.cli_options import read_key_file, split_addr

    host, port = split_addr(listen, "--listen")
    settings = QueenSettings(
        host=host,
        port=port,
        api_key=read_key_file(api_key_file) if api_key_file is not None else None,
        stop_hives=stop_hives,
    )
    if not settings.is_loopback and not settings.api_key:
        raise click.UsageError(
            f"refusing to listen on {host} without an API key: give --api-key-file "
            "(or listen on 127.0.0.1)"
        )
    return settings


@queen.command()
@_serve_options
@click.pass_context
def start(
    ctx: click.Context, listen: str, api_key_file: Path | None, stop_hives: bool, log_level: str
) -> None:
    """Run the queen in the background (its log: $RBEE_HOME/queen.log) and wait until it
    answers; `rbee queen stop` stops it."""
    import subprocess

    from rbee.control.keeper.worker_registry import rbee_home

    _settings(listen, api_key_file, stop_hives)  # a mistake is said here, not in the log
    inventory = inventory_of(ctx)
    running = _running_queen()
    if running.process is not None:
        raise click.ClickException(
            f"a queen already runs (pid {running.process.pid}): see `rbee queen status`"
        )
    script = Path(sys.argv[0]).resolve()
    if not script.is_file():
        raise click.ClickException(f"cannot find the rbee command to start ({sys.argv[0]})")
    argv = [sys.executable, str(script), "--inventory", str(inventory.path.resolve()), "queen"]
    argv += ["--listen", listen, "--log-level", log_level]
    if api_key_file is not None:
        argv += ["--api-key-file", str(api_key_file.resolve())]
    if stop_hives:
        argv.append("--stop-hives")
    log_path = rbee_home() / LOG_FILE
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log_start = log.tell()
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    url = _wait_serving(child, START_TIMEOUT_S)
    if url is None:
        if child.poll() is None:  # ours (not yet reaped: its pid is not reused): not left half up
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:  # wedged before its signal handler ran
                child.kill()
                child.wait()
            why = f"did not answer within {START_TIMEOUT_S:g} s"
        else:
            why = f"exited with status {child.returncode}"
        raise click.ClickException(
            f"the queen {why}; the end of {log_path}:\n{_tail(log_path, log_start)}"
        )
    click.echo(f"rbee queen running at {url} (pid {child.pid})")
    click.echo(f"log: {log_path}")


def _wait_serving(child: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """The queen's URL once `child` holds the pid file and answers /health; None when it
    exited or the deadline passed."""
    import httpx

    from rbee.control.keeper.queen_address import queen_pid_file, read_queen_address
    from rbee.dataplane.plumbing import pidfile

    deadline = time.monotonic() + timeout_s
    while child.poll() is None and time.monotonic() < deadline:
        address = read_queen_address()
        try:
            holder = queen_pid_file().check().process
        except pidfile.NotProven:
            holder = None
        if address is not None and holder is not None and holder.pid == child.pid:
            try:
                if httpx.get(f"{address.url}/health", timeout=1.0).status_code == 200:
                    return address.url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    return None


def _tail(path: Path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(nothing)"


@queen.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def status(output: str) -> None:
    """Is a queen running, where, and what it sees; exit 3 when none runs."""
    import psutil

    from rbee.control.keeper.queen_address import read_queen_address
    from rbee.control.keeper.worker_registry import rbee_home
    from rbee.dataplane.plumbing import pidfile

    running = _running_queen()
    if running.process is None:
        if output == "json":
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("no queen runs (start one with `rbee queen start`)")
        sys.exit(pidfile.NOT_RUNNING_EXIT)
    process = running.process
    address = read_queen_address()
    try:
        started = process.create_time()
    except psutil.NoSuchProcess:  # it stopped just now
        started = time.time()
    report: dict[str, Any] = {
        "running": True,
        "pid": process.pid,
        "uptime_s": round(time.time() - started, 1),
        "url": address.url if address else None,
        "log": str(rbee_home() / LOG_FILE),
    }
    problem = _ask(address, report) if address else "it is starting"
    report["problem"] = problem
    if output == "json":
        click.echo(json.dumps(report))
    else:
        click.echo(_status_text(report))
    if problem:
        sys.exit(1)


def _ask(address: QueenAddress, report: dict[str, Any]) -> str | None:
    """Fills `report` from the queen's /health and /v1/cluster; what went wrong, if any."""
    import asyncio

    import httpx

    from rbee.control.keeper.queen_status import queen_call_failure, queen_client
    from rbee.control.keeper.words import ActionableError
    from rbee.dataplane.protocol.client import InvalidResponse, RemoteError
    from rbee.dataplane.protocol.queen_api import ClusterReport, QueenHealth

    async def ask() -> tuple[QueenHealth, ClusterReport]:
        async with queen_client(address, timeout_s=STATUS_TIMEOUT_S) as client:
            return await client.health(), await client.cluster()

    try:
        health, cluster = asyncio.run(ask())
    except ActionableError as exc:
        return exc.message
    except InvalidResponse:
        return f"what answers at {address.url} is not a queen"
    except (httpx.HTTPError, httpx.InvalidURL, RemoteError) as exc:
        return queen_call_failure(address.url, exc).message
    report["version"] = health.version
    report["nodes"] = {node.name: node.state for node in cluster.nodes}
    report["nodes_up"] = sum(node.state == "up" for node in cluster.nodes)
    report["workers"] = len(cluster.workers)
    report["queued"] = sum(cluster.queued.values())
    return None


def _status_text(report: dict[str, Any]) -> str:
    version = f" {report['version']}" if "version" in report else ""
    up = _duration(report["uptime_s"])
    lines = [f"rbee queen{version} running (pid {report['pid']}, up {up})"]
    if report["url"]:
        lines.append(f"  url:     {report['url']}")
    if report["problem"]:
        lines.append("  problem:")
        lines += textwrap.wrap(
            report["problem"], width=80, initial_indent="    ", subsequent_indent="    "
        )
    else:
        lines.append(f"  nodes:   {report['nodes_up']} of {len(report['nodes'])} up")
        lines.append(f"  workers: {report['workers']}, requests queued: {report['queued']}")
    lines.append(f"  log:     {report['log']}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@queen.command()
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0),
    default=STOP_TIMEOUT_S,
    show_default=True,
    help="How long the queen may take to stop (its streams, then --stop-hives) before SIGKILL.",
)
def stop(timeout_s: float) -> None:
    """Stop the running queen: SIGTERM, SIGKILL past --timeout-s. Only a process proven to
    be the queen (by its pid file) is signalled."""
    from rbee.control.keeper.queen_address import queen_pid_file
    from rbee.dataplane.plumbing.cli_options import stop_proven

    running = _running_queen()
    if running.process is None:
        click.echo(queen_pid_file().not_running(running))
        return
    click.echo(stop_proven(running.process, timeout_s, "rbee queen", "rbee queen status"))


def _running_queen() -> pidfile.Holder:
    from rbee.control.keeper.queen_address import queen_pid_file
    from rbee.dataplane.plumbing import pidfile

    try:
        return queen_pid_file().check()
    except (pidfile.NotProven, OSError) as exc:
        raise click.ClickException(str(exc)) from None
