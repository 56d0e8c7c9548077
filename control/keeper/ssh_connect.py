"""How an SSH connection to a node is opened: asyncssh's options (explicit, so the connection
does not depend on who runs the keeper), no more handshakes at once per host than its sshd
accepts, and retries for the handshakes a loaded sshd drops. Failures come out as
`SSHConnectError` (ssh_errors.py)."""

from __future__ import annotations

import asyncio
import weakref

import asyncssh

from .ssh_errors import (
    CONNECT_FAILURES,
    DROPPED_HANDSHAKE,
    connect_error,
    missing_file_error,
)

# OpenSSH's default `MaxStartups 10:30:100` starts dropping connections past 10 simultaneous
# unauthenticated connections, so no more than this many handshakes run at once to one host:port
# from this process, however many runners are connecting.
MAX_HANDSHAKES_PER_HOST = 8
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# Notices a dead node on long-lived connections (dashboard, log following, port forwards).
DEFAULT_KEEPALIVE_INTERVAL_S = 15.0
DEFAULT_KEEPALIVE_COUNT_MAX = 3
# Pre-authentication resets (an sshd shedding load under MaxStartups) are retried this often.
_HANDSHAKE_RETRIES = 2

# Per event loop (asyncio primitives belong to one loop; tests run many), per host:port.
_handshake_slots: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]
] = weakref.WeakKeyDictionary()


def _handshake_slot(host: str, port: int) -> asyncio.Semaphore:
    per_loop = _handshake_slots.setdefault(asyncio.get_running_loop(), {})
    key = (host.lower(), port)
    if key not in per_loop:
        per_loop[key] = asyncio.Semaphore(MAX_HANDSHAKES_PER_HOST)
    return per_loop[key]


async def open_connection(
    host: str,
    *,
    port: int | None,
    shown_port: int,
    username: str | None,
    identity_file: str | None,
    known_hosts: str,
    connect_timeout_s: float,
    use_ssh_config: bool,
    keepalive_interval_s: float,
) -> asyncssh.SSHClientConnection:
    """A new, authenticated connection to `host`. Raises SSHConnectError.

    `port`, `username` and `identity_file` are passed only when set, so that ~/.ssh/config
    (with `use_ssh_config`) can supply them for a host alias; without a port it is the config's
    or 22. `shown_port` is the port messages name and handshakes are counted under: `port`, or
    the one an earlier connection turned out to use. `known_hosts` and `identity_file` are
    paths with `~` already expanded.
    """
    missing = missing_file_error(host, shown_port, username, identity_file, known_hosts)
    if missing is not None:
        raise missing
    options: dict[str, object] = {
        "known_hosts": known_hosts,  # a path: never None, which would disable checks
        "connect_timeout": connect_timeout_s,
        "keepalive_interval": keepalive_interval_s,
        "keepalive_count_max": DEFAULT_KEEPALIVE_COUNT_MAX,
        # `()` = asyncssh's default: ~/.ssh/config if readable; `[]` = no config file.
        "config": () if use_ssh_config else [],
    }
    if port is not None:
        options["port"] = port
    if username:
        options["username"] = username
    if identity_file:
        options["client_keys"] = [identity_file]
    attempt = 0
    while True:
        try:
            async with _handshake_slot(host, shown_port):
                return await asyncssh.connect(host, **options)
        except CONNECT_FAILURES as e:
            if isinstance(e, DROPPED_HANDSHAKE) and attempt < _HANDSHAKE_RETRIES:
                attempt += 1
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            raise connect_error(
                e,
                host=host,
                port=shown_port,
                username=username,
                identity_file=identity_file,
                known_hosts=known_hosts,
                connect_timeout_s=connect_timeout_s,
            ) from None
