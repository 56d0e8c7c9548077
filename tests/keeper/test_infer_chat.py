"""`rbee infer --chat`: the prompt as one user message in the worker's chat template, and the
inventory's `chat_template` for the workers plain infer starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import BIN
from support.operators import make_keeper


def test_chat_renders_the_prompt_with_the_inventorys_template(
    tmp_path: Path, tiny_model_no_template: Path
) -> None:
    keeper = make_keeper(tmp_path, tiny_model_no_template)
    plain_inventory = keeper.inventory.read_text()
    keeper.inventory.write_text(
        plain_inventory
        + f'\n[models.tiny]\nref = "file:{tiny_model_no_template}"\nchat_template = "gemma"\n'
    )
    args = ("--chat", "hello", "--max-tokens", "6", "--temperature", "0")
    try:
        chat = keeper.infer(*args)
        assert chat.returncode == 0, chat.stderr
        [worker] = keeper.registered()
        url, headers = worker["url"], {"Authorization": f"Bearer {worker['api_key']}"}
        health = httpx.get(f"{url}/health").json()
        assert health["chat_template"] == "gemma (override)"
        # The answer is the worker's own answer to the same conversation over the OpenAI API.
        same = httpx.post(
            f"{url}/v1/chat/completions",
            headers=headers,
            json={
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 6,
                "temperature": 0,
            },
            timeout=30,
        ).json()
        assert chat.stdout.rstrip("\n") == same["choices"][0]["message"]["content"]
        plain = keeper.infer("hello", "--max-tokens", "6", "--temperature", "0")
        assert plain.returncode == 0, plain.stderr
        assert "starting new worker" not in plain.stderr  # the warm worker
        assert plain.stdout != chat.stdout  # a text to continue, not a turn to answer

        # Without the inventory's template, that warm worker is not the one asked for.
        keeper.inventory.write_text(plain_inventory)
        fallback = keeper.infer(*args)
        assert fallback.returncode == 0, fallback.stderr
        assert "No idle worker with this chat template, starting new worker..." in (fallback.stderr)
        newest = max(keeper.registered(), key=lambda w: w["created_at"])
        assert httpx.get(f"{newest['url']}/health").json()["chat_template"] == ("chatml (fallback)")
    finally:
        keeper.stop_hive()


@pytest.mark.bundled
def test_chat_with_the_bundled_model_through_its_fallback(tmp_path: Path, tiny_model: Path) -> None:
    """The default setup: `rbee infer --chat` on pkg:gemma3-270m, which has no template."""
    keeper = make_keeper(tmp_path, tiny_model)
    try:
        result = subprocess.run(
            [str(BIN / "rbee"), "infer", "--chat", "--max-tokens", "8", "--temperature", "0"]
            + ["What colour is the sky?"],
            capture_output=True,
            text=True,
            timeout=300,
            env=keeper.env(),
        )
        assert result.returncode == 0, result.stderr
        [worker] = keeper.registered()
        assert worker["model_ref"] == "pkg:gemma3-270m"
        health = httpx.get(f"{worker['url']}/health").json()
    finally:
        keeper.stop_hive()
    assert health["chat_template"] == "gemma (fallback)"
    assert result.stdout.strip()
    assert "<end_of_turn>" not in result.stdout and "<start_of_turn>" not in result.stdout
