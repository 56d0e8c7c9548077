"""`rbee deploy NODE…`: install rbee on nodes over fabric (paramiko), without Ansible.

The steps are install_plan's, the same `rbee ssh-up` runs over asyncssh. Host keys are verified
against the node's known_hosts only: fabric's default policy accepts unknown keys, so the client
gets paramiko's RejectPolicy, and no other known_hosts file is read. With an identity_file, only
that key is offered (no ssh-agent, no ~/.ssh/id_*), as OpenSSH's IdentitiesOnly does; without
one, paramiko's defaults (agent, ~/.ssh/id_*) apply. ~/.ssh/config is read only when the node's
`use_ssh_config` is true, as for every other keeper command.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import shlex
from collections.abc import Sequence

import fabric
import invoke
import paramiko

from .install_plan import Installer, Say
from .node import Node
from .runner import CommandResult, CommandTimeout, RunnerError
from .ssh_errors import SSHConnectError, host_key_error, ssh_hint
from .words import ActionableError


class FabricTransport:
    """install_plan's Transport over one fabric Connection (blocking calls run in a thread)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.label = f"{node.user}@{node.host}:{node.port}"
        config = fabric.Config(lazy=True, overrides={"load_ssh_configs": node.use_ssh_config})
        if node.use_ssh_config:
            config.load_ssh_config()
        connect_kwargs: dict[str, object] = {}
        if node.identity_file:
            connect_kwargs.update(
                key_filename=[str(node.identity_file)], look_for_keys=False, allow_agent=False
            )
        explicit = node.passed_ssh_keys
        self.conn = fabric.Connection(
            node.host,
            user=node.user if "user" in explicit else None,
            port=node.port if "port" in explicit else None,
            config=config,
            connect_timeout=max(1, round(node.connect_timeout_s)),
            connect_kwargs=connect_kwargs,
        )
        self.conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self._home: str | None = None

    def _connect(self) -> None:
        node = self.node
        known_hosts = str(node.known_hosts)
        hint = ssh_hint(
            node.host,
            node.port,
            node.user,
            str(node.identity_file) if node.identity_file else None,
            known_hosts,
        )
        if node.identity_file and not node.identity_file.is_file():
            # Checked here: paramiko would raise a bare FileNotFoundError mid-handshake.
            raise SSHConnectError(
                "config",
                node.host,
                node.port,
                f"identity_file {node.identity_file} for {node.name} does not "
                f"exist (in {node.inventory_path})",
            )
        try:
            self.conn.client.load_system_host_keys(known_hosts)  # read-only: never written
        except OSError:
            raise SSHConnectError(
                "host_key",
                node.host,
                node.port,
                f"Host key verification failed for {node.host}:{node.port}: known_hosts file "
                f"{known_hosts} cannot be read. Connect once with `{hint}` to check and accept "
                "the node's key.",
            ) from None
        try:
            self.conn.open()
        except paramiko.BadHostKeyException:
            raise host_key_error(node.host, node.port, known_hosts, hint) from None
        except paramiko.AuthenticationException as e:
            raise SSHConnectError(
                "auth",
                node.host,
                node.port,
                f"Authentication failed for {self.label} ({e}). Check the node's user and "
                "identity_file in the inventory and that the public key is in that user's "
                "~/.ssh/authorized_keys on the node.",
            ) from None
        except paramiko.SSHException as e:
            if "known_hosts" in str(e):  # RejectPolicy: the key is not in known_hosts
                raise host_key_error(node.host, node.port, known_hosts, hint) from None
            raise SSHConnectError(
                "lost", node.host, node.port, f"SSH to {node.host}:{node.port} failed: {e}"
            ) from None
        except TimeoutError:
            raise SSHConnectError(
                "timeout",
                node.host,
                node.port,
                f"Timed out connecting to {node.host}:{node.port}: is the node up and reachable "
                "from here?",
            ) from None
        except OSError as e:  # refused, unreachable, unresolvable
            raise SSHConnectError(
                "unreachable",
                node.host,
                node.port,
                f"Cannot reach {node.host}:{node.port}: {e.strerror or e}",
            ) from None

    def _run(self, command: str, timeout_s: float) -> CommandResult:
        if not self.conn.is_connected:
            self._connect()
        try:
            result = self.conn.run(
                command, hide=True, warn=True, in_stream=False, timeout=timeout_s
            )
        except invoke.exceptions.CommandTimedOut:
            raise CommandTimeout(self.label, command, timeout_s) from None
        return CommandResult(result.return_code, result.stdout, result.stderr)

    def _upload(self, data: bytes, remote: str, mode: int) -> None:
        parent = posixpath.dirname(remote)
        # 0700 like the asyncssh runner's write_file: the folder may hold the hive's key.
        made = self._run(f"mkdir -p -m 700 {shlex.quote(parent)}", 30)
        if not made.ok:
            raise RunnerError(f"{self.label}: cannot create {parent}: {made.stderr.strip()}")
        sftp = self.conn.sftp()
        tmp = posixpath.join(
            parent, f".{posixpath.basename(remote)}.rbee-tmp-{secrets.token_hex(6)}"
        )
        try:
            with sftp.open(tmp, "wx") as f:  # exclusive: never a looser file left by others
                f.chmod(mode)  # before any byte is written: the node's umask must not matter
                f.write(data)
            sftp.posix_rename(tmp, remote)
        except OSError as e:
            with contextlib.suppress(OSError):
                sftp.remove(tmp)
            raise RunnerError(f"{self.label}: cannot write {remote}: {e}") from None

    async def home(self) -> str:
        if self._home is None:
            result = await asyncio.to_thread(self._run, 'printf %s "$HOME"', 30)
            self._home = result.stdout.strip() or "/"
        return self._home

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        return await asyncio.to_thread(self._run, shlex.join(argv), timeout_s)

    async def upload(self, data: bytes, remote: str, *, mode: int, timeout_s: float) -> None:
        await asyncio.wait_for(asyncio.to_thread(self._upload, data, remote, mode), timeout_s)

    def close(self) -> None:
        self.conn.close()


async def deploy(node: Node, installer: Installer, say: Say) -> str:
    """Installs rbee on one node over fabric; the line to print."""
    if node.is_local:
        raise ActionableError(
            f"{node.name} is this machine (ssh = false): nothing to deploy",
            suggestion="`make install` installs rbee here",
        )
    transport = FabricTransport(node)
    try:
        say(f"{node.name}: connecting to {transport.label} (fabric)")
        await installer.install(node, transport, say)
    finally:
        await asyncio.to_thread(transport.close)
    return f"{node.name}: rbee installed in {posixpath.dirname(node.rbee_path)}"
