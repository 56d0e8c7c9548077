"""Where the running queen is: `$RBEE_HOME/queen.json`, which `rbee queen` writes once it
listens and removes when it stops. `rbee infer --queen`, the dashboard and `rbee queen
status|stop` read it; the queen's key stays in its file (the address names the file only).

Which process is the queen: `$RBEE_HOME/queen.pid`, locked for the queen's whole life
(dataplane/plumbing/pidfile.py). Only the queen holding it writes or removes queen.json, and
an address counts only while a queen holds it: a queen that was killed leaves a file that
names nobody."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rbee.dataplane.plumbing.pidfile import NotProven, PidFile

from .worker_registry import rbee_home

FILE_NAME = "queen.json"
PID_FILE_NAME = "queen.pid"


@dataclass(frozen=True)
class QueenAddress:
    url: str  # http://HOST:PORT, as clients reach it
    api_key_file: str | None = None  # the key clients send, in a 0600 file; None on loopback


def address_path(home: Path | None = None) -> Path:
    return (home or rbee_home()) / FILE_NAME


def queen_pid_file(home: Path | None = None) -> PidFile:
    return PidFile((home or rbee_home()) / PID_FILE_NAME, "rbee queen", "RBEE_HOME")


def read_queen_address(home: Path | None = None) -> QueenAddress | None:
    """The running queen's address; None when no queen runs (or it does not listen yet)."""
    try:
        if queen_pid_file(home).check().process is None:
            return None
    except (NotProven, OSError):  # starting: it writes the address once it listens
        return None
    try:
        data = json.loads(address_path(home).read_text())
        return QueenAddress(url=str(data["url"]), api_key_file=data.get("api_key_file"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_queen_address(address: QueenAddress, home: Path | None = None) -> None:
    path = address_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(address)))
    os.replace(partial, path)  # a reader never sees half a file


def clear_queen_address(home: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        address_path(home).unlink()
