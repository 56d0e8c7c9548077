"""A node's state in one look: its hive, its workers (each asked itself) and its catalog.

A probe never raises: a node's trouble is part of its status, in words (words.py), and a
probe returns within its deadline, so one wedged node delays no other.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from rbee.dataplane.protocol.client import InvalidResponse, RemoteError
from rbee.dataplane.protocol.hive_api import WorkerRow, WorkersList
from rbee.dataplane.protocol.states import SERVING_STATES
from rbee.dataplane.protocol.wire import VERSION, ErrorCode
from rbee.dataplane.protocol.worker_api import WorkerHealth
from rbee.dataplane.protocol.worker_client import WorkerClient

from .inventory_errors import InventoryError
from .node import Node
from .node_access import HIVE_CALL_TIMEOUT_S, NodeAccess, NodeConnections
from .runner import RunnerError
from .ssh_runner import SSHRunner
from .status import HiveState, NodeStatus, WorkerStatus
from .words import (
    auth_failed,
    not_answering,
    not_our_hive,
    restart_hint,
    see_logs,
    version_mismatch,
)
from .worker_registry import WorkerRegistry

NODE_PROBE_TIMEOUT_S = HIVE_CALL_TIMEOUT_S
WORKER_PROBE_TIMEOUT_S = 2.0


def probe_deadline_s(node: Node) -> float:
    """How long probe_node may take: the hive's deadline, plus the SSH handshake's."""
    return NODE_PROBE_TIMEOUT_S + (0.0 if node.is_local else node.connect_timeout_s)


def host_of(node: Node) -> str:
    return "local" if node.is_local else node.host


def _status(node: Node, state: HiveState, problem: str, suggestion: str) -> NodeStatus:
    return NodeStatus(node.name, host_of(node), state, problem=problem, suggestion=suggestion)


def unanswered(node: Node, waited_s: float) -> NodeStatus:
    """The status of a node whose hive left a probe unanswered for `waited_s`."""
    return _status(node, HiveState.NOT_ANSWERING, not_answering(waited_s), restart_hint(node))


async def probe_node(
    node: Node,
    connections: NodeConnections,
    registry: WorkerRegistry | None = None,
    known: NodeStatus | None = None,
    within_s: float | None = None,
) -> NodeStatus:
    """The node's hive state, workers (with each worker's own health) and catalog, within
    probe_deadline_s, or `within_s` when that is sooner (a round over many nodes). Workers
    the registry knows and that answer are marked healthy in it, so that a following infer
    finds them warm.

    `known`: the node's latest status; when it is up, only its workers and free RAM are
    asked again, its version and catalog kept (one call instead of three, for a live view
    that probes often and asks for everything now and then)."""
    deadline_s = probe_deadline_s(node)
    if within_s is not None:
        deadline_s = min(deadline_s, within_s)
    try:
        async with asyncio.timeout(deadline_s):
            return await _probe(node, connections, registry, known)
    except TimeoutError:
        runner = connections.access(node).runner
        if isinstance(runner, SSHRunner) and not runner.connected:  # the hive was not asked
            return _status(
                node,
                HiveState.UNREACHABLE,
                f"SSH: no answer within {deadline_s:g} s",
                f"check that {node.name} is up and reachable from here",
            )
        return unanswered(node, deadline_s)


async def _probe(
    node: Node,
    connections: NodeConnections,
    registry: WorkerRegistry | None,
    known: NodeStatus | None,
) -> NodeStatus:
    try:
        return await _probe_hive(connections.access(node), registry, known)
    except httpx.TimeoutException:
        return unanswered(node, NODE_PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return _status(
            node,
            HiveState.DOWN,
            "the hive does not answer",
            f"start it: `rbee ssh-up {node.name}`",
        )
    except (RunnerError, InventoryError) as exc:
        return _status(
            node,
            HiveState.UNREACHABLE,
            str(exc),
            "check the node's entry in the inventory and that sshd runs there",
        )
    except RemoteError as exc:
        if exc.code == ErrorCode.INVALID_API_KEY:
            auth = auth_failed(node)
            return _status(
                node,
                HiveState.AUTH_FAILED,
                f"{auth.message}: {auth.details[0]}",
                auth.suggestion or "",
            )
        return _status(node, HiveState.DOWN, exc.message, see_logs(node))
    except (ValueError, KeyError, TypeError):  # a field of the wrong type
        return _status(
            node,
            HiveState.DOWN,
            f"Invalid response from rbee-hive on {node.name}",
            see_logs(node),
        )


async def _probe_hive(
    access: NodeAccess, registry: WorkerRegistry | None, known: NodeStatus | None
) -> NodeStatus:
    node = access.node
    async with access.hive(timeout_s=NODE_PROBE_TIMEOUT_S) as hive:
        if known is not None and known.is_up:
            report = await hive.workers_report()
            return await _up(access, registry, known.version, report, known.models)
        try:
            health = await hive.health()
        except InvalidResponse:
            wrong = not_our_hive(node)
            return _status(node, HiveState.DOWN, wrong.message, wrong.suggestion or "")
        if health.version != VERSION:
            mismatch = version_mismatch(node, health.version)
            return NodeStatus(
                node.name,
                host_of(node),
                HiveState.VERSION_MISMATCH,
                health.version,
                problem=mismatch.message,
                suggestion=mismatch.suggestion,
            )
        report, models = await asyncio.gather(hive.workers_report(), hive.models())
    return await _up(access, registry, health.version, report, tuple(m.reference for m in models))


async def _up(
    access: NodeAccess,
    registry: WorkerRegistry | None,
    version: str | None,
    report: WorkersList,
    models: tuple[str, ...],
) -> NodeStatus:
    """An up hive's status: its workers, each asked for its own health."""
    node = access.node
    workers = await asyncio.gather(
        *(_worker_status(access, w, report.idle_timeout_s) for w in report.workers)
    )
    if registry is not None:
        for worker in workers:
            if worker.state in SERVING_STATES and registry.get(worker.worker_id):
                registry.mark_healthy(worker.worker_id, worker.state)
    return NodeStatus(
        node.name,
        host_of(node),
        HiveState.UP,
        version,
        tuple(workers),
        models,
        report.ram_available_mb,
    )


async def _worker_status(
    access: NodeAccess, listed: WorkerRow, idle_timeout_s: float | None
) -> WorkerStatus:
    """The hive's entry, freshened with the worker's own /health when it serves."""
    health: WorkerHealth | None = None
    if listed.state in SERVING_STATES and listed.url:
        # A silent worker keeps the hive's view; the hive's health loop will notice it.
        with contextlib.suppress(httpx.HTTPError, RemoteError, RunnerError, OSError, ValueError):
            async with WorkerClient(
                await access.worker_url(listed.url),
                timeout_s=WORKER_PROBE_TIMEOUT_S,
                http=access.http,
            ) as worker:
                health = await worker.health()
    return WorkerStatus(
        node=access.name,
        worker_id=listed.worker_id,
        model_ref=listed.model_ref,
        state=health.state if health else listed.state,
        slots_busy=health.slots_busy if health else listed.slots_busy,
        slots_total=listed.slots_total,
        url=listed.url,
        last_tokens_per_s=health.last_tokens_per_s if health else None,
        idle_s=health.idle_s if health else None,
        idle_timeout_s=idle_timeout_s,
        error=listed.error,
    )
