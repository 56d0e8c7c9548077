"""Command-line values the daemons share: a HOST:PORT to listen on, a key file."""

from __future__ import annotations

import stat
from pathlib import Path

import click


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
