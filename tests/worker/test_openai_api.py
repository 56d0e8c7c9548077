"""OpenAI-compatible endpoints, driven by the real `openai` SDK and by plain HTTP."""

from __future__ import annotations

from pathlib import Path

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
    assert [m.id for m in models.data] == [shared_worker.model_id]


def test_sdk_streams_a_chat_completion(shared_worker: WorkerProcess) -> None:
    chunks = list(
        sdk(shared_worker).chat.completions.create(
            model=shared_worker.model_id,
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
        model=shared_worker.model_id,
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
            model=shared_worker.model_id,
            prompt="Once upon a time",
            max_tokens=10,
            temperature=0,
            stream=True,
        )
    )
    whole = client.completions.create(
        model=shared_worker.model_id, prompt="Once upon a time", max_tokens=10, temperature=0
    )
    assert streamed == whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"


def test_sdk_sees_validation_errors(shared_worker: WorkerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(shared_worker).completions.create(
            model=shared_worker.model_id, prompt="hi", max_tokens=0
        )
    assert "max_tokens" in str(info.value)


def test_chat_rejects_bad_messages(shared_worker: WorkerProcess) -> None:
    r = httpx.post(
        f"{shared_worker.url}/v1/chat/completions",
        headers=shared_worker.headers,
        json={"messages": [{"role": "wizard", "content": "hi"}]},
    )
    assert r.status_code == 400
    assert r.json()["error"]["details"]["field"].startswith("messages")


def test_the_model_is_named_by_its_id_its_file_or_not_at_all(
    spawn_worker, tiny_model: Path
) -> None:
    """--model-id (the hive passes the model's reference) names the model everywhere; a request
    may name it so, by its file, or not at all; any other name is OpenAI's 404."""
    ref = "https://models.example/tiny.gguf"
    worker = spawn_worker(tiny_model, "--model-id", ref)
    client = sdk(worker)
    assert [m.id for m in client.models.list().data] == [ref]
    for name in (ref, str(tiny_model), f"file:{tiny_model}"):
        answer = client.completions.create(model=name, prompt="Once", max_tokens=2)
        assert answer.model == ref
        chunks = list(
            client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, stream=True
            )
        )
        assert {c.model for c in chunks} == {ref}
    unnamed = httpx.post(f"{worker.url}/v1/completions", json={"prompt": "Once", "max_tokens": 2})
    assert unnamed.status_code == 200 and unnamed.json()["model"] == ref
    assert httpx.get(f"{worker.url}/health").json()["model_ref"] == ref
    native = httpx.post(
        f"{worker.url}/v1/inference", json={"prompt": "Once", "max_tokens": 2, "stream": False}
    )
    assert native.json()["model"] == ref

    for endpoint, body in (
        (client.completions.create, {"prompt": "Once"}),
        (client.chat.completions.create, {"messages": [{"role": "user", "content": "Hi"}]}),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            endpoint(model="gpt-4o", max_tokens=2, **body)
        error = info.value.body
        assert error["code"] == "MODEL_NOT_FOUND" and error["details"]["served"] == ref
        assert "'gpt-4o' is not served here" in error["message"] and ref in error["message"]


def test_a_prompt_may_be_token_ids_or_a_list_of_one(shared_worker: WorkerProcess) -> None:
    client = sdk(shared_worker)

    def greedy(prompt: object) -> openai.types.Completion:
        return client.completions.create(
            model=shared_worker.model_id, prompt=prompt, max_tokens=6, temperature=0
        )

    text = greedy("Once upon a time").choices[0].text
    assert greedy(["Once upon a time"]).choices[0].text == text
    ids = greedy([5, 6, 7])
    assert ids.usage.prompt_tokens == 3 and ids.choices[0].text
    assert greedy([[5, 6, 7]]).choices[0].text == ids.choices[0].text


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        (["Once", "Twice"], "2 prompts in one request: this server answers one prompt per"),
        ([[5, 6], [7]], "send each in a request of its own"),
        ([], "the list is empty"),
        ("", "the prompt is empty"),
        ([5, "six"], "a list of token ids (integers ≥ 0)"),
        ({"text": "Once"}, "give the prompt as a string"),
        ([10**9], "token id 1000000000 is not one of this model's (0 to"),
    ],
)
def test_prompts_that_cannot_be_served_are_said_plainly(
    shared_worker: WorkerProcess, prompt: object, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(shared_worker).completions.create(
            model=shared_worker.model_id,
            prompt=prompt,
            max_tokens=2,  # type: ignore[arg-type]
        )
    error = info.value.body
    assert error["code"] == "INVALID_REQUEST" and error["details"]["field"] == "prompt"
    assert says in error["message"] and "constrained" not in error["message"]
