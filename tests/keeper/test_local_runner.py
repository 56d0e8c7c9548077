"""LocalRunner (rbee.control.keeper.local_runner): what only the local runner does. The Runner
contract it shares with SSHRunner is tested on both in test_runner.py."""

from __future__ import annotations

from conftest import free_port
from support.runner_checks import arun

from rbee.control.keeper.local_runner import LocalRunner


def test_forward_local_port_is_the_address_itself() -> None:
    """The node is this machine: its addresses need no tunnel."""
    port = free_port()

    async def go() -> tuple[str, int]:
        async with LocalRunner() as local:
            return await local.forward_local_port("127.0.0.1", port)

    assert arun(go()) == ("127.0.0.1", port)
