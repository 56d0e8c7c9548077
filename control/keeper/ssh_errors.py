"""Why a node could not be reached over SSH, in the words a person acts on: `SSHConnectError`,
and the mapping from what asyncssh and the OS raise (and from missing key files) to it.

Host keys are always verified against a known_hosts file; asyncssh refuses unknown and changed
keys, and so do we: the message tells which it is and what to do about it. `rbee deploy`
(paramiko) builds the same messages from `ssh_hint` and `host_key_error`.
"""

from __future__ import annotations

import os
import shlex
import socket
from typing import Literal

import asyncssh

from .runner import RunnerError

ConnectErrorKind = Literal[
    "host_key", "auth", "refused", "timeout", "unreachable", "lost", "config"
]

# What `asyncssh.connect` raises when the node (or the way to it) is at fault; `connect_error`
# says what each means. Anything else is a bug here and propagates as it is.
ConnectFailure = asyncssh.DisconnectError | asyncssh.KeyImportError | OSError
CONNECT_FAILURES = (asyncssh.DisconnectError, asyncssh.KeyImportError, OSError)
# An sshd under load (MaxStartups) drops handshakes early like this; a retry usually works.
DROPPED_HANDSHAKE = (ConnectionResetError, asyncssh.ConnectionLost)


class SSHConnectError(RunnerError):
    """Could not reach a node over SSH (or lost the connection). `kind` says why; the message
    names host:port and what to do."""

    def __init__(self, kind: ConnectErrorKind, host: str, port: int, message: str) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        super().__init__(message)

    @property
    def worth_retrying(self) -> bool:
        """The node may answer a moment later (EC1's attempts): its sshd refused or was silent,
        or the network failed. A refused host key or login will not change by retrying."""
        return self.kind in ("refused", "timeout", "unreachable")


def ssh_label(host: str, port: int, username: str | None) -> str:
    """An SSH node as messages name it: `user@host:port`, or `host:port` without a user."""
    where = f"{host}:{port}"
    return f"{username}@{where}" if username else where


def ssh_hint(
    host: str, port: int, username: str | None, identity_file: str | None, known_hosts: str
) -> str:
    """The OpenSSH command a person runs to check and accept a node's host key."""
    parts = ["ssh"]
    if identity_file:
        parts += ["-i", identity_file]
    if port != 22:
        parts += ["-p", str(port)]
    if known_hosts != os.path.expanduser("~/.ssh/known_hosts"):
        parts += ["-o", f"UserKnownHostsFile={known_hosts}"]
    parts.append(f"{username}@{host}" if username else host)
    return shlex.join(parts)


def host_key_error(host: str, port: int, known_hosts: str, hint: str) -> SSHConnectError:
    """A refused host key, told apart as "never seen" or "changed": the advice differs (accept
    vs. remove the old key). Shared by the asyncssh runner and `rbee deploy` (paramiko)."""
    known = False
    try:
        keys = asyncssh.read_known_hosts(known_hosts).match(host, "", port if port != 22 else None)
        known = bool(keys[0] or keys[1])
    except (OSError, ValueError, asyncssh.Error):
        known = True  # unsure: give the full advice
    where = f"{host}:{port}"
    if not known:
        return SSHConnectError(
            "host_key",
            host,
            port,
            f"Host key verification failed for {where}: the key is unknown (no entry in "
            f"{known_hosts}). Connect once with `{hint}` to check and accept it.",
        )
    entry = f"[{host}]:{port}" if port != 22 else host
    return SSHConnectError(
        "host_key",
        host,
        port,
        f"Host key verification failed for {where}: the key is unknown or has changed. "
        "If the node was reinstalled, remove its old key with "
        f"`ssh-keygen -R {shlex.quote(entry)} -f {shlex.quote(known_hosts)}` and "
        f"connect once with ssh (`{hint}`) to accept the new one.",
    )


def missing_file_error(
    host: str, port: int, username: str | None, identity_file: str | None, known_hosts: str
) -> SSHConnectError | None:
    """The error for a known_hosts or identity file that does not exist, if one does not: told
    before connecting, as asyncssh would raise a bare FileNotFoundError (an OSError, easily
    mistaken for a network problem)."""
    if not os.path.isfile(known_hosts):
        hint = ssh_hint(host, port, username, identity_file, known_hosts)
        return SSHConnectError(
            "host_key",
            host,
            port,
            f"Host key verification failed for {host}:{port}: known_hosts file "
            f"{known_hosts} does not exist. Connect once with "
            f"`{hint}` to check and accept the node's key.",
        )
    if identity_file and not os.path.isfile(identity_file):
        return SSHConnectError(
            "config",
            host,
            port,
            f"identity_file {identity_file} for {host}:{port} does not exist",
        )
    return None


def connect_error(
    e: ConnectFailure,
    *,
    host: str,
    port: int,
    username: str | None,
    identity_file: str | None,
    known_hosts: str,
    connect_timeout_s: float,
) -> SSHConnectError:
    """What a failed `asyncssh.connect` means and what to do about it."""
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        hint = ssh_hint(host, port, username, identity_file, known_hosts)
        return host_key_error(host, port, known_hosts, hint)
    label = ssh_label(host, port, username)
    if isinstance(e, asyncssh.PermissionDenied):
        who = username or "the default user"
        keys = (
            f"identity_file {identity_file}"
            if identity_file
            else "the default keys (~/.ssh/id_*) and ssh-agent"
        )
        return SSHConnectError(
            "auth",
            host,
            port,
            f"Authentication failed for {label}: the node did not accept {keys} for "
            f"{who} ({e.reason}). Check the node's user and identity_file in the inventory and "
            f"that the public key is in that user's ~/.ssh/authorized_keys on the node.",
        )
    if isinstance(e, asyncssh.KeyImportError):
        return SSHConnectError(
            "auth",
            host,
            port,
            f"Cannot use identity_file {identity_file} for {label}: {e}. "
            "If the key has a passphrase, add it to ssh-agent and leave identity_file "
            "out of the inventory.",
        )
    if isinstance(e, DROPPED_HANDSHAKE):
        return SSHConnectError(
            "lost",
            host,
            port,
            f"SSH connection to {host}:{port} was closed during the "
            f"handshake ({_reason(e)}). Is sshd overloaded (MaxStartups) or is "
            "something other than sshd on that port?",
        )
    if isinstance(e, asyncssh.DisconnectError):
        return SSHConnectError(
            "lost",
            host,
            port,
            f"SSH server at {host}:{port} disconnected: {_reason(e)}",
        )
    if isinstance(e, ConnectionRefusedError):
        return SSHConnectError(
            "refused",
            host,
            port,
            f"Connection refused by {host}:{port}: is sshd running on the node "
            "and is the port in the inventory right?",
        )
    if isinstance(e, TimeoutError):
        return SSHConnectError(
            "timeout",
            host,
            port,
            f"Timed out after {connect_timeout_s:g} s connecting to "
            f"{host}:{port}: is the node up and reachable from here?",
        )
    if isinstance(e, socket.gaierror):
        return SSHConnectError(
            "unreachable",
            host,
            port,
            f"Cannot resolve host {host!r} (for {host}:{port}): {e.strerror or e}",
        )
    return SSHConnectError(
        "unreachable",
        host,
        port,
        f"Cannot reach {host}:{port}: {e.strerror or e}",
    )


def lost_connection(host: str, port: int, e: BaseException) -> SSHConnectError:
    """An open connection failed under a command, a file transfer or a port forward."""
    return SSHConnectError(
        "lost",
        host,
        port,
        f"Lost the SSH connection to {host}:{port}: {_reason(e)}",
    )


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or e or type(e).__name__)
