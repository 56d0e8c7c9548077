"""EC1's connection attempts (SPEC test-001), one rule for a hive and for a node's sshd.

Three tries, 200 ms then 400 ms apart, each announced as `Attempt n: Connecting to HOST:PORT...
(timeout Ts)`; after the third, `Cannot connect to HOST:PORT after 3 attempts` and what to
check. Only failures that another try may get past are retried: a refused host key or login,
or something other than a hive answering, ends at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from .node import Node
from .runner import Runner
from .ssh_errors import SSHConnectError
from .ssh_runner import SSHRunner
from .words import ActionableError

T = TypeVar("T")
ATTEMPTS = 3
_BACKOFF = wait_exponential(multiplier=0.2)  # 200 ms after the first try, 400 ms after the second
ATTEMPT_STEP = "Attempt"  # each try is said `Attempt N: Connecting to …`


async def connect_attempts(
    connect: Callable[[], Awaitable[T]],
    *,
    address: str,
    timeout_s: float,
    say: Callable[[str], None],
    retry_if: Callable[[BaseException], bool],
) -> T:
    """`connect()`'s result; the last error once ATTEMPTS tries failed with errors `retry_if`
    accepts, any other error at once."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=_BACKOFF,
        retry=retry_if_exception(retry_if),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            say(
                f"{ATTEMPT_STEP} {attempt.retry_state.attempt_number}: Connecting to {address}... "
                f"(timeout {timeout_s:g}s)"
            )
            return await connect()
    raise AssertionError("tenacity ends with a result or the last error")


def cannot_connect(address: str, *details: str, suggestion: str) -> ActionableError:
    return ActionableError(
        f"Cannot connect to {address} after {ATTEMPTS} attempts", *details, suggestion=suggestion
    )


async def connect_over_ssh(runner: Runner, node: Node, say: Callable[[str], None]) -> None:
    """Opens an SSH node's connection with EC1's attempts (nothing to do for a local runner).

    Raises ActionableError after the last attempt; SSHConnectError at once for what retrying
    cannot fix (host key, login, a missing file)."""
    if not isinstance(runner, SSHRunner) or runner.connected:
        return  # nothing to open (a kept connection is used as it is)
    address = f"{runner.host}:{runner.port}"
    try:
        await connect_attempts(
            runner.connect,
            address=address,
            timeout_s=runner.connect_timeout_s,
            say=say,
            retry_if=lambda e: isinstance(e, SSHConnectError) and e.worth_retrying,
        )
    except SSHConnectError as exc:
        # From exc: `rbee ssh-up`'s summary names the kind (fleet_progress.short_reason).
        if not exc.worth_retrying:
            raise
        if exc.kind == "refused":
            raise cannot_connect(
                address,
                "SSH: the connection was refused",
                suggestion=f"Check if sshd is running on {node.name} (port {runner.port})",
            ) from exc
        if exc.kind == "timeout":
            raise cannot_connect(
                address,
                f"SSH: no answer within {runner.connect_timeout_s:g} s",
                suggestion=f"Check if {node.name} is up and reachable from here",
            ) from exc
        raise cannot_connect(
            address,
            f"SSH: {exc}",
            suggestion=f"Check the host of {node.name} in {node.inventory_path}",
        ) from exc
