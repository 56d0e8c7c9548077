"""What the daemons' command lines share: a HOST:PORT to listen on, a key file, stopping
the daemon a pid file proves."""

from __future__ import annotations

import stat
from pathlib import Path

import click
import psutil

from . import pidfile


def split_addr(addr: str, param_hint: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise click.BadParameter(f"{addr!r} is not HOST:PORT", param_hint=param_hint)
    return host.strip("[]"), int(port)


def read_key_file(path: Path, param_hint: str = "--api-key-file") -> str:
    """The key in `path`, refused unless only its owner can read it (mode 0600)."""
    path = path.expanduser()
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}", param_hint=param_hint) from None
    if stat.S_IMODE(mode) & 0o077:
        raise click.BadParameter(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it",
            param_hint=param_hint,
        )
    key = path.read_text().strip()
    if not key:
        raise click.BadParameter(f"{path} is empty", param_hint=param_hint)
    return key


def stop_proven(process: psutil.Process, timeout_s: float, daemon: str, see: str) -> str:
    """Stops the daemon its pid file proved `process` to be: SIGTERM, SIGKILL past
    `timeout_s`; the line to print. ClickException when it cannot (`see`: what to run)."""
    pid = process.pid
    try:
        stopped = pidfile.stop(process, timeout_s)
    except psutil.AccessDenied:
        raise click.ClickException(
            f"not allowed to signal {daemon} (pid {pid}): it runs as another user"
        ) from None
    except psutil.TimeoutExpired as exc:
        raise click.ClickException(
            f"{daemon} (pid {pid}) still runs {exc.seconds:g} s after SIGKILL "
            f"(stuck in the kernel?): see `{see}`"
        ) from None
    if stopped:
        return f"{daemon} stopped (pid {pid})"
    return f"{daemon} (pid {pid}) did not stop in {timeout_s:g} s: killed"
