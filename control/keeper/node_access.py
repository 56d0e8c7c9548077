"""Reaching a node's hive and workers (DESIGN §4 "Reaching a node").

The local node (`ssh = false`) is reached directly, and the keeper starts its hive itself
when it is not running; other nodes are reached over SSH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from rbee.control.hive.settings import API_KEY_ENV as HIVE_KEY_ENV
from rbee.dataplane.protocol.hive_api import HiveHealth

from .attempts import connect_over_ssh
from .console import ActionableError
from .local_runner import LocalRunner
from .node import Node
from .runner import Runner
from .ssh_runner import SSHRunner

HIVE_START_TIMEOUT_S = 20.0


class LocalNodeAccess:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self._url = node.hive_url
        self.hive_address = self._url.removeprefix("http://")
        self.key_source = node.api_key_source or (
            "no key is configured for this node (api_key_env or api_key_file in the inventory)"
        )
        self.hive_key = node.api_key()

    async def hive_url(self) -> str:
        return self._url

    async def worker_url(self, url: str) -> str:
        return url

    async def start_hive(self) -> str | None:
        """Starts `rbee-hive daemon` on this machine unless this installation's answers; what
        it did, in one line (None: nothing). A hive of another installation, or of a deleted
        one, is restarted from this one (stopped only as `rbee ssh-down` does)."""
        hive_bin = Path(self.node.rbee_path).expanduser() / "rbee-hive"
        url = await self.hive_url()
        said = f"Started the hive on {self.name}."
        health = await _health(url)
        found = health.executable if health is not None else None
        if health is not None and (found is None or _same_file(found, hive_bin)):
            return None  # ours (or a hive that does not say: left as it is)
        if not hive_bin.is_file():
            raise ActionableError(
                f"rbee is not installed on {self.name}: there is no {hive_bin}",
                suggestion=f"set rbee_path for node {self.name} in {self.node.inventory_path} "
                "to the folder holding rbee-hive",
            )
        if found is not None:
            await self._stop_foreign_hive(found, health.pid if health else None)
            gone = "" if os.path.exists(found) else " (deleted)"
            said = f"Restarted the hive on {self.name}: it ran from {found}{gone}."
        state_dir = Path(self.node.state_dir).expanduser()
        state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(hive_bin),
            "daemon",
            "--addr",
            f"{self.node.listen}:{self.node.hive_port}",
            "--state-dir",
            str(state_dir),
            "--idle-timeout-s",
            f"{self.node.idle_timeout_s:g}",
        ]
        # The hive reads its key from a 0600 file: a process's first environment stays
        # readable in /proc/PID/environ, so neither the key nor the variable holding it goes
        # into the hive's.
        key_file = self.node.api_key_file or self.node.local_key_file
        if self.node.api_key_env:
            await LocalRunner().write_file(str(key_file), (self.hive_key or "").encode())
        argv += ["--api-key-file", str(key_file)]
        env = {
            k: v for k, v in os.environ.items() if k not in (self.node.api_key_env, HIVE_KEY_ENV)
        }
        with open(state_dir / "hive.log", "ab") as log:
            # Its own session: the hive outlives this command and ignores its Ctrl+C.
            hive = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = asyncio.get_running_loop().time() + HIVE_START_TIMEOUT_S
        while await _health(url) is None:
            if hive.poll() is not None or asyncio.get_running_loop().time() > deadline:
                break  # the preflight that follows says what is wrong
            await asyncio.sleep(0.1)
        return said

    async def _stop_foreign_hive(self, found: str, answering_pid: object) -> None:
        """Stops the hive of another installation that answers on our port, if it is the one
        holding our state dir (proven on the node, as `rbee ssh-down` does): the hive that
        answered must be the one the pid file proves, or ours would be stopped instead."""
        # Imported here: hive_control reaches nodes through this module.
        from .hive_control import hive_down, running_hive_pid

        async with runner_for(self.node) as runner:
            if await running_hive_pid(self.node, runner) != answering_pid:
                raise ActionableError(
                    f"a hive from another installation answers on {self.hive_address}",
                    f"it runs from {found}, with a state dir other than {self.node.state_dir}",
                    suggestion=f"stop it, or give node {self.name} another hive_port in "
                    f"{self.node.inventory_path}",
                )
            await hive_down(self.node, runner, lambda _line: None)


async def _health(url: str) -> HiveHealth | None:
    """The hive's health answer; None when nothing (or something else) answers at once."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            response = await client.get(f"{url}/v1/health")
            if response.status_code != 200:
                return None
            return HiveHealth.model_validate_json(response.content)
    except (httpx.HTTPError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def _same_file(path: str, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # deleted (or unreadable): not the same
        return False


def runner_for(node: Node) -> Runner:
    """The node's runner (see Node.passed_ssh_keys for what it passes)."""
    if not node.ssh:
        return LocalRunner()
    explicit = node.passed_ssh_keys
    return SSHRunner(
        node.host,
        port=node.port if "port" in explicit else None,
        username=node.user if "user" in explicit else None,
        identity_file=str(node.identity_file) if node.identity_file else None,
        known_hosts=str(node.known_hosts),
        connect_timeout_s=node.connect_timeout_s,
        use_ssh_config=node.use_ssh_config,
    )


class SSHNodeAccess:
    """A node reached over SSH. A hive bound to the node's loopback (the default) and its
    workers are reached through local port forwards on the node's SSH connection; a node
    that listens on a reachable address is reached directly."""

    def __init__(self, node: Node, runner: Runner) -> None:
        self.node = node
        self.runner = runner
        self.name = node.name
        self.hive_address = f"{node.host}:{node.hive_port}"
        self.key_source = node.api_key_source or (
            "no key is configured for this node (api_key_env or api_key_file in the inventory)"
        )
        self.hive_key = node.api_key()

    async def hive_url(self) -> str:
        if self.node.direct:
            return self.node.hive_url
        host, port = await self.runner.forward_local_port(self.node.listen, self.node.hive_port)
        return f"http://{host}:{port}"

    async def worker_url(self, url: str) -> str:
        parts = urlsplit(url)
        if self.node.direct:
            if parts.hostname in ("0.0.0.0", "::"):  # bound to every address: use the node's
                host = f"[{self.node.host}]" if ":" in self.node.host else self.node.host
                return f"http://{host}:{parts.port}"
            return url
        host, port = await self.runner.forward_local_port(
            parts.hostname or "127.0.0.1", parts.port or 80
        )
        return f"http://{host}:{port}"

    async def start_hive(self) -> str | None:
        return None  # `rbee ssh-up NODE` starts a remote hive, never `rbee infer`


@contextlib.asynccontextmanager
async def open_node(
    node: Node, say: Callable[[str], None] | None = None
) -> AsyncIterator[LocalNodeAccess | SSHNodeAccess]:
    """The node's access for one command; an SSH node's connection closes with it. With `say`,
    connecting makes EC1's attempts and reports each (a command a person waits on); without,
    one try (probes, which report a node's trouble as its state)."""
    if node.is_local:
        yield LocalNodeAccess(node)
        return
    runner = runner_for(node)
    if say is not None:
        await connect_over_ssh(runner, node, say)
    async with runner:
        yield SSHNodeAccess(node, runner)
