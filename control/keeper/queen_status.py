"""The running queen as the keeper sees it: where it listens, its clients' way in, and what
it is doing (its queues, the requests it routed to each node), for the dashboard.

A probe never raises: a queen that does not answer is part of its status, in words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx

from rbee.dataplane.plumbing.cli_options import read_key_file
from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.queen_client import QueenClient

from .queen_address import QueenAddress
from .words import (
    ActionableError,
    queen_failure,
    queen_key_unreadable,
    queen_not_answering,
    queen_unreachable,
)

QUEEN_CALL_TIMEOUT_S = 5.0  # each call to the queen but a stream (which has the silence limit)


@dataclass(frozen=True)
class QueenStatus:
    url: str
    queued: dict[str, int] = field(default_factory=dict)  # model reference → requests waiting
    routed: dict[str, int] = field(default_factory=dict)  # node → requests sent there
    workers: int = 0  # of the nodes that are up
    problem: str | None = None  # in words, when it did not answer as a queen does


def queen_client(address: QueenAddress, *, timeout_s: float = QUEEN_CALL_TIMEOUT_S) -> QueenClient:
    """A client of the queen at `address`, with its key when it has one (read from its
    0600 file). ActionableError when the key cannot be read."""
    key = None
    if address.api_key_file is not None:
        try:
            key = read_key_file(Path(address.api_key_file))
        except click.BadParameter as exc:
            raise queen_key_unreadable(exc.message) from None
    return QueenClient(address.url, key, timeout_s=timeout_s)


def queen_call_failure(url: str, exc: Exception) -> ActionableError:
    """What went wrong in a call to the queen, in words."""
    if isinstance(exc, httpx.TimeoutException):
        return queen_not_answering(url, QUEEN_CALL_TIMEOUT_S)
    if isinstance(exc, RemoteError):
        return queen_failure(exc.code, exc.message, status=exc.status, retry_after=exc.retry_after)
    return queen_unreachable(url)  # refused, cut, or queen.json naming no URL


async def probe_queen(address: QueenAddress) -> QueenStatus:
    """What the queen at `address` is doing, within QUEEN_CALL_TIMEOUT_S."""
    try:
        async with queen_client(address) as client:
            report = await client.cluster()
    except ActionableError as exc:
        return QueenStatus(address.url, problem=exc.message)
    except (httpx.HTTPError, httpx.InvalidURL, RemoteError) as exc:
        return QueenStatus(address.url, problem=queen_call_failure(address.url, exc).message)
    return QueenStatus(
        address.url,
        queued=dict(report.queued),
        routed={node.name: node.routed for node in report.nodes},
        workers=len(report.workers),
    )
