"""The real bundled model (pkg:gemma3-270m, Q4_K_M): a quantised decode on this machine's build."""

from __future__ import annotations

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
        # a base model without a chat template: a clear 400 pointing to /v1/completions
        chat = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    assert chat.status_code == 400
    assert "/v1/completions" in chat.json()["error"]["message"]
    assert worker.stop() == 0
