"""Reaching a node's hive and workers (DESIGN §4 "Reaching a node"): one way for every node.

A node is reached through its runner: the local node directly, another node
over one SSH connection. A hive bound to the node's loopback (the default) and its workers
are reached through local port forwards on that connection; a node that listens on a
reachable address (or this machine) is reached directly. The node's key is read once, and
its hive and workers are asked through one HTTP connection pool, kept while the access is:
a pool per call cost a CA bundle load and a new connection (an SSH channel) each time, the
most of a live view's CPU at many nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httpx

from rbee.dataplane.protocol.client import tls_context
from rbee.dataplane.protocol.hive_client import HiveClient
from rbee.dataplane.protocol.wire import HTTP_IDLE_CLIENT_S

from .attempts import connect_over_ssh
from .local_runner import LocalRunner
from .node import Node
from .runner import Runner
from .ssh_runner import SSHRunner

HIVE_CALL_TIMEOUT_S = 5.0  # each call the keeper makes to a hive (long ones carry their own)


def runner_for(node: Node) -> Runner:
    """The node's runner (see Node.passed_ssh_keys for what it passes)."""
    if node.is_local:
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


class NodeAccess:
    """One node's way in: its runner, its hive's and workers' URLs, and its key.

    `key_variables` names every environment variable the inventory reads keys from: a
    process the keeper starts on this machine gets none of them."""

    def __init__(self, node: Node, key_variables: frozenset[str] = frozenset()) -> None:
        self.node = node
        self.name = node.name
        self.runner = runner_for(node)
        self.key_variables = key_variables
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """The node's connection pool (its hive's and workers' connections), opened when
        first needed, closed with the access; every call passes its own deadline."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=HIVE_CALL_TIMEOUT_S,
                verify=tls_context(),
                limits=httpx.Limits(keepalive_expiry=HTTP_IDLE_CLIENT_S),
            )
        return self._http

    @functools.cached_property
    def hive_key(self) -> str | None:
        """Read once, when first needed: stopping a hive needs no key (InventoryError when
        the inventory points at a key that is not there)."""
        return self.node.api_key()

    async def hive_url(self) -> str:
        if self.node.direct:
            return self.node.hive_url
        host, port = await self.runner.forward_local_port(self.node.listen, self.node.hive_port)
        return f"http://{host}:{port}"

    async def worker_url(self, url: str) -> str:
        """A URL the hive reported for one of its workers, as this machine reaches it."""
        if self.node.is_local:
            return url
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

    @contextlib.asynccontextmanager
    async def hive(self, timeout_s: float = HIVE_CALL_TIMEOUT_S) -> AsyncIterator[HiveClient]:
        """A client of the node's hive; what goes wrong is raised as is."""
        async with HiveClient(
            await self.hive_url(),
            self.hive_key,
            timeout_s=timeout_s,
            node=self.name,
            http=self.http,
        ) as hive:
            yield hive

    async def connect(self, say: Callable[[str], None]) -> None:
        """Opens an SSH node's connection with EC1's attempts, reporting each (a command a
        person waits on); without it, the first use connects with one try."""
        await connect_over_ssh(self.runner, self.node, say)

    async def aclose(self) -> None:
        http, self._http = self._http, None
        try:
            if http is not None:
                await http.aclose()
        finally:
            await self.runner.close()


class NodeConnections:
    """One way in per node, kept across calls: for an SSH node one connection whose port
    forwards are reused (the runner reconnects by itself when it dies). The dashboard probes
    every few seconds and the queen routes every request; a handshake each time would be
    slow and fill the nodes' sshd logs."""

    def __init__(self, key_variables: frozenset[str] = frozenset()) -> None:
        self._access: dict[str, NodeAccess] = {}
        self._key_variables = key_variables
        self._closed = False

    def access(self, node: Node) -> NodeAccess:
        if self._closed:
            # A connection opened now would never be closed.
            raise RuntimeError("the keeper's connections are closed")
        if node.name not in self._access:
            self._access[node.name] = NodeAccess(node, self._key_variables)
        return self._access[node.name]

    async def aclose(self) -> None:
        """Closes every node's connection at once; one that fails to close stops no other."""
        self._closed = True
        accesses, self._access = list(self._access.values()), {}
        await asyncio.gather(*(access.aclose() for access in accesses), return_exceptions=True)
