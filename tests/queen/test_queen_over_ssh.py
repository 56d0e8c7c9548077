"""The queen in front of a node reached over SSH only: a real sshd on loopback, the node's
hive on its loopback (reached through port forwards), a worker the queen starts there on the
first request, and the `openai` SDK, unchanged, at the queen."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai

from support.operators import node_table
from support.queen_process import sdk, start_queen
from support.sshd import start_sshd

from rbee.control.keeper.events import Unheard
from rbee.control.keeper.inventory import load_inventory
from rbee.control.keeper.keeper import Keeper


def test_chat_and_completions_stream_through_ssh_from_a_worker_the_queen_starts(
    tmp_path: Path, tiny_model: Path
) -> None:
    sshd = start_sshd(tmp_path / "sshd", "alpha")
    inventory_path = tmp_path / "inventory.toml"
    inventory_path.write_text(
        node_table("alpha", sshd, tmp_path / "alpha-hive")
        + f'\n[models.tiny]\nref = "file:{tiny_model}"\nnodes = ["alpha"]\nslots = 2\n'
    )
    inventory = load_inventory(inventory_path)
    alpha = inventory.get("alpha")

    async def hive(up: bool) -> None:
        async with Keeper(inventory) as keeper:
            if up:
                assert "up (pid" in await keeper.hive_up(alpha, Unheard())
            else:
                await keeper.hive_down(alpha, Unheard())

    queen = None
    try:
        asyncio.run(hive(up=True))
        queen = start_queen(inventory_path, tmp_path / "home")
        deadline = time.monotonic() + 30
        while httpx.get(f"{queen.url}/v1/cluster").json()["nodes"] == []:
            assert time.monotonic() < deadline, "the queen never probed alpha"
            time.sleep(0.2)
        client = sdk(queen)
        chunks = list(
            client.completions.create(
                model="tiny", prompt="Once upon a time", max_tokens=6, stream=True
            )
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices)
        chat = client.chat.completions.with_raw_response.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
        )
        assert chat.headers["x-rbee-node"] == "alpha"
        deltas = [c.choices[0].delta.content for c in chat.parse() if c.choices]
        assert any(deltas)
        [worker] = httpx.get(f"{queen.url}/v1/cluster").json()["workers"]
        assert worker["node"] == "alpha" and worker["slots_total"] == 2
        assert worker["in_flight"] == 0
        with openai.OpenAI(base_url=f"{queen.url}/v1", api_key="x", max_retries=0) as other:
            assert [m.id for m in other.models.list().data][0] == "tiny"
    finally:
        if queen is not None:
            queen.stop()
        asyncio.run(hive(up=False))
        sshd.stop()
