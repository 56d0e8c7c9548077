"""An operator's setup for running `rbee` as a person does: an inventory, an RBEE_HOME, the
console script in a subprocess. `Keeper`: one local node; `Operator`: any inventory (fake
nodes behind sshd, with `node_table`)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import BIN, free_port
from support.sshd import FakeNode
from support.terminal import OnTerminal

from rbee.control.hive.settings import KEY_FILE


@dataclass
class Keeper:
    """An operator's setup: an inventory with one local node, its own RBEE_HOME."""

    home: Path
    inventory: Path
    port: int
    state_dir: Path
    model: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
        return {**env, "RBEE_HOME": str(self.home), "RBEE_INVENTORY": str(self.inventory), **extra}

    def argv(self, *args: str) -> list[str]:
        return [str(BIN / "rbee"), "infer", "--model", f"file:{self.model}", *args]

    def infer(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=120, env=self.env(**env)
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )

    @property
    def hive_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hive_headers(self) -> dict[str, str]:
        """The key rbee made for the local hive it started (none is configured)."""
        return {"Authorization": f"Bearer {(self.state_dir / KEY_FILE).read_text().strip()}"}

    def registered(self) -> list[dict]:
        with sqlite3.connect(self.home / "workers.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM workers")]

    def stop_hive(self) -> None:
        pid_file = self.state_dir / "hive.pid"
        if pid_file.exists() and pid_file.read_text().strip():
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)


def make_keeper(
    tmp_path: Path, model: Path, *, rbee_path: Path = BIN, node_extra: str = ""
) -> Keeper:
    port = free_port()
    state_dir = tmp_path / "hive-state"
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        f"[defaults]\nhive_port = {port}\n\n[nodes.local]\nssh = false\n"
        f'rbee_path = "{rbee_path}"\nstate_dir = "{state_dir}"\n{node_extra}'
    )
    return Keeper(tmp_path / "rbee-home", inventory, port, state_dir, model)


def node_table(name: str, node: FakeNode, state_dir: Path, *, rbee_path: Path = BIN) -> str:
    entry = node.inventory_entry()
    lines = [f"[nodes.{name}]"]
    lines += [
        f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
        for key, value in entry.items()
    ]
    lines += [
        f'rbee_path = "{rbee_path}"',
        f'state_dir = "{state_dir}"',
        f"hive_port = {free_port()}",
        "use_ssh_config = false",
    ]
    return "\n".join(lines) + "\n"


class Operator:
    def __init__(self, tmp: Path, inventory_text: str) -> None:
        self.home = tmp / "rbee-home"
        self.inventory = tmp / "inventory.toml"
        self.inventory.write_text(inventory_text)

    @staticmethod
    def registered_in(home: Path) -> list[dict]:
        with sqlite3.connect(home / "workers.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM workers")]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
        return {**env, "RBEE_HOME": str(self.home), "RBEE_INVENTORY": str(self.inventory), **extra}

    def rbee(
        self, *args: str, timeout: float = 120, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "rbee"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**extra_env),
        )

    def popen(self, *args: str, **extra_env: str) -> subprocess.Popen[str]:
        """`rbee ARGS` started, its stdout and stderr piped."""
        return subprocess.Popen(
            [str(BIN / "rbee"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**extra_env),
        )

    def on_terminal(self, *args: str, columns: int = 80) -> OnTerminal:
        """`rbee ARGS` started on a terminal `columns` wide."""
        return OnTerminal([str(BIN / "rbee"), *args], self.env(), columns)
