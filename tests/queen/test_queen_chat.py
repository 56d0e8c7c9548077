"""A model's `chat_template` through the queen: the workers it starts use it, and chat from the
`openai` SDK and from `rbee infer --queen --chat` is rendered with it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx

from conftest import BIN
from support.hive_process import start_hive
from support.inventories import local_node, write_inventory
from support.queen_process import sdk, start_queen

from rbee.control.keeper.worker_registry import WorkerRegistry


def test_the_queen_starts_workers_with_the_models_chat_template(
    tmp_path: Path, tiny_model_no_template: Path
) -> None:
    model = tmp_path / "base.gguf"  # a file no other test's worker holds
    shutil.copy(tiny_model_no_template, model)
    hive = start_hive(tmp_path / "hive", "--idle-timeout-s", "600")
    port = int(hive.url.rsplit(":", 1)[1])
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("local", port, hive.state_dir)
        + f'[models.chat]\nref = "file:{model}"\nchat_template = "llama3"\n',
    )
    home = tmp_path / "home"
    queen = start_queen(inventory.path, home)
    try:
        answer = sdk(queen).chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            temperature=0,
        )
        registry = WorkerRegistry(home / "workers.db")
        try:
            [worker] = registry.list()
        finally:
            registry.close()
        health = httpx.get(f"{worker.url}/health").json()
        assert health["chat_template"] == "llama3 (override)"

        clean = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
        cli = subprocess.run(
            [str(BIN / "rbee"), "infer", "--queen", "--chat", "--model", "chat"]
            + ["--max-tokens", "6", "--temperature", "0", "hello"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**clean, "RBEE_HOME": str(home), "RBEE_INVENTORY": str(inventory.path)},
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.rstrip("\n") == answer.choices[0].message.content
    finally:
        queen.stop()
        hive.stop()
