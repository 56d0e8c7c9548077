"""OpenAI-compatible endpoints, driven by the real `openai` SDK and by plain HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import WorkerProcess


def sdk(worker: WorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{worker.url}/v1", api_key=worker.api_key or "unused", max_retries=0
    )


def test_models_lists_the_loaded_model(shared_worker: WorkerProcess) -> None:
    models = sdk(shared_worker).models.list()
    assert [m.id for m in models.data] == [str(shared_worker.proc.args[2])]


def test_sdk_streams_a_chat_completion(shared_worker: WorkerProcess) -> None:
    chunks = list(
        sdk(shared_worker).chat.completions.create(
            model="anything",
            messages=[{"role": "user", "content": "Tell me a story"}],
            max_tokens=12,
            temperature=0,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_sdk_chat_completion_without_stream(shared_worker: WorkerProcess) -> None:
    answer = sdk(shared_worker).chat.completions.create(
        model="anything",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=6,
        temperature=0,
    )
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 6 and answer.usage.prompt_tokens > 0


def test_sdk_completion_streaming_matches_non_streaming(shared_worker: WorkerProcess) -> None:
    client = sdk(shared_worker)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="x", prompt="Once upon a time", max_tokens=10, temperature=0, stream=True
        )
    )
    whole = client.completions.create(
        model="x", prompt="Once upon a time", max_tokens=10, temperature=0
    )
    assert streamed == whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"


def test_sdk_sees_validation_errors(shared_worker: WorkerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(shared_worker).completions.create(model="x", prompt="hi", max_tokens=0)
    assert "max_tokens" in str(info.value)


def test_chat_rejects_bad_messages(shared_worker: WorkerProcess) -> None:
    r = httpx.post(
        f"{shared_worker.url}/v1/chat/completions",
        headers=shared_worker.headers,
        json={"messages": [{"role": "wizard", "content": "hi"}]},
    )
    assert r.status_code == 400
    assert r.json()["error"]["details"]["field"].startswith("messages")
