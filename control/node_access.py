"""Reaching a node's hive and workers (DESIGN §4 "Reaching a node").

The local node (`ssh = false`) is reached directly, and the keeper starts its hive itself
when it is not running.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx

from rbee.control.hive.config import API_KEY_ENV as HIVE_KEY_ENV

from .console import ActionableError
from .inventory import Node

HIVE_START_TIMEOUT_S = 20.0


class LocalNodeAccess:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self._url = node.hive_url
        self.hive_address = self._url.removeprefix("http://")
        self.key_source = node.api_key_source or (
            "no key is configured for this node (api_key_env or api_key_file in the inventory)")
        self.hive_key = node.api_key()

    async def hive_url(self) -> str:
        return self._url

    async def worker_url(self, url: str) -> str:
        return url

    async def start_hive(self) -> bool:
        """Starts `rbee-hive daemon` on this machine unless one already answers."""
        url = await self.hive_url()
        if await _answers(url):
            return False
        state_dir = Path(self.node.state_dir).expanduser()
        state_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(Path(self.node.rbee_path).expanduser() / "rbee-hive"), "daemon",
                "--addr", f"{self.node.listen}:{self.node.hive_port}",
                "--state-dir", str(state_dir)]
        env = dict(os.environ)
        if self.node.api_key_file:
            argv += ["--api-key-file", str(self.node.api_key_file)]
        elif self.hive_key:
            env[HIVE_KEY_ENV] = self.hive_key  # a local child: the environment is private
        if not Path(argv[0]).is_file():
            raise ActionableError(
                f"rbee is not installed on {self.name}: there is no {argv[0]}",
                suggestion=f"set rbee_path for node {self.name} in {self.node.inventory_path} "
                           "to the folder holding rbee-hive")
        with open(state_dir / "hive.log", "ab") as log:
            # Its own session: the hive outlives this command and ignores its Ctrl+C.
            hive = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True)
        deadline = asyncio.get_running_loop().time() + HIVE_START_TIMEOUT_S
        while not await _answers(url):
            if hive.poll() is not None or asyncio.get_running_loop().time() > deadline:
                break  # the preflight that follows says what is wrong
            await asyncio.sleep(0.1)
        return True


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(f"{url}/v1/health")).status_code == 200
    except httpx.HTTPError:
        return False
