"""The real bundled model (pkg:gemma3-270m, Q4_K_M): a quantised decode on this machine's build."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.bundled


def test_bundled_model_generates_a_short_answer(spawn_worker) -> None:
    worker = spawn_worker("pkg:gemma3-270m", "--ctx-size", "512")
    with worker.client() as client:
        r = client.post(
            "/v1/inference",
            json={
                "prompt": "Monday, Tuesday, Wednesday,",
                "max_tokens": 8,
                "temperature": 0,
                "stream": False,
            },
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        # A broken build (the AMX crash, or garbage from a bad quantised kernel) cannot
        # continue the week; the real model does.
        assert answer["text"].startswith(" Thursday, Friday")
        # A base model without a chat template chats through Gemma's turn format.
        health = client.get("/health").json()
        [model] = client.get("/v1/models").json()["data"]
    assert health["chat_template"] == model["chat_template"] == "gemma (fallback)"
    sdk = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0)
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What colour is the sky?"},
    ]
    whole = sdk.chat.completions.create(
        model="pkg:gemma3-270m", messages=messages, max_tokens=12, temperature=0
    )
    chunks = list(
        sdk.chat.completions.create(
            model="pkg:gemma3-270m", messages=messages, max_tokens=12, temperature=0, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert whole.choices[0].message.content == streamed
    assert streamed.strip()
    # Gemma's turn markers are special tokens: they never show in the answer.
    assert "<start_of_turn>" not in streamed and "<end_of_turn>" not in streamed
    # system, user, the turns' markers: the prompt holds the whole turn format
    assert whole.usage.prompt_tokens > 15
    assert worker.stop() == 0
