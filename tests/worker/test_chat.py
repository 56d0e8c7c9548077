"""Chat templates: the model's own, the fallback by architecture, an override; what the worker
says it uses, and chat through the native API's `messages`."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from conftest import WorkerProcess
from support.tinymodel import write_tiny_gguf

from rbee.dataplane.protocol.chat_templates import CHAT_TEMPLATE_NAMES, serves_template
from rbee.dataplane.worker.chat import BUILTIN_TEMPLATES, choose_template, render_chat

CONVERSATION = [
    {"role": "system", "content": " Be brief. "},
    {"role": "user", "content": "Hi\n"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Name a colour"},
]


def render(name: str, messages: list[dict[str, str]] = CONVERSATION) -> str:
    return render_chat(BUILTIN_TEMPLATES[name].source, messages, bos_token="", eos_token="")


def test_gemma_folds_the_system_message_into_the_first_user_turn() -> None:
    # llama.cpp's format: trimmed turns, "model" for the assistant, no system turn.
    assert render("gemma") == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nName a colour<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert render("gemma", [{"role": "user", "content": "Hi"}]) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_chatml_and_llama3_as_llama_cpp_writes_them() -> None:
    assert render("chatml", CONVERSATION[1:2]) == (
        "<|im_start|>user\nHi\n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render("llama3", CONVERSATION[:2]) == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_the_model_template_wins_unless_overridden() -> None:
    own = choose_template("{{ messages }}", "gemma3", None)
    assert (own.source, own.in_use, own.stops) == ("{{ messages }}", "model", ())
    fallback = choose_template(None, "gemma3", None)
    assert (fallback.in_use, fallback.stops) == ("gemma (fallback)", ("<end_of_turn>",))
    assert choose_template(None, "llama", None).in_use == "chatml (fallback)"
    assert choose_template(None, "qwen2", None).stops == ("<|im_end|>",)
    override = choose_template("{{ messages }}", "gemma3", "llama3")
    assert (override.in_use, override.stops) == ("llama3 (override)", ("<|eot_id|>",))
    assert tuple(BUILTIN_TEMPLATES) == CHAT_TEMPLATE_NAMES


def test_a_worker_serves_a_template_override_only_to_who_asks_for_it() -> None:
    assert serves_template("gemma (fallback)", None)
    assert serves_template("model", None)
    assert not serves_template("chatml (override)", None)
    assert serves_template("chatml (override)", "chatml")
    assert not serves_template("gemma (fallback)", "gemma")


def sdk(worker: WorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0)


def template_of(worker: WorkerProcess) -> tuple[str, str]:
    """What /health and /v1/models say."""
    health = httpx.get(f"{worker.url}/health").json()["chat_template"]
    [model] = httpx.get(f"{worker.url}/v1/models").json()["data"]
    return health, model["chat_template"]


@pytest.fixture(scope="module")
def ending_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama model without a template that may end its turn (<|im_end|> is in its vocab)."""
    return write_tiny_gguf(
        tmp_path_factory.mktemp("chat") / "ends.gguf", chat_template=None, never_eos=False
    )


def test_a_model_without_template_chats_through_chatml(spawn_worker, ending_model: Path) -> None:
    worker = spawn_worker(ending_model)
    assert template_of(worker) == ("chatml (fallback)", "chatml (fallback)")
    answer = sdk(worker).chat.completions.create(
        model=worker.model_id,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=2000,
        temperature=0,
    )
    # The end of its turn ends the answer, and the marker is no part of it.
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens < 2000
    content = answer.choices[0].message.content
    assert content and "<|im_end|>" not in content and "<|im_start|>" not in content


def test_a_model_keeps_its_own_template_and_an_override_replaces_it(
    spawn_worker, tiny_model: Path
) -> None:
    own = spawn_worker(tiny_model)
    assert template_of(own) == ("model", "model")
    overridden = spawn_worker(tiny_model, "--chat-template", "gemma")
    assert template_of(overridden) == ("gemma (override)", "gemma (override)")
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    # The same model, the same words: the gemma turn markers are not in this vocabulary, so
    # they take many more tokens than ChatML's.
    ours = httpx.post(f"{own.url}/v1/chat/completions", json=body).json()
    theirs = httpx.post(f"{overridden.url}/v1/chat/completions", json=body).json()
    assert theirs["usage"]["prompt_tokens"] > ours["usage"]["prompt_tokens"] + 10


def test_an_unknown_template_name_is_refused_with_the_known_ones(
    spawn_worker, tiny_model: Path
) -> None:
    with pytest.raises(AssertionError) as info:
        spawn_worker(tiny_model, "--chat-template", "vicuna")
    assert "'vicuna' is not one of 'chatml', 'gemma', 'llama3'" in str(info.value)


def test_native_inference_renders_messages_as_chat_does(shared_worker: WorkerProcess) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    with shared_worker.client() as client:
        native = client.post(
            "/v1/inference",
            json={"messages": messages, "max_tokens": 8, "temperature": 0, "stream": False},
        )
        chat = client.post(
            "/v1/chat/completions",
            json={"messages": messages, "max_tokens": 8, "temperature": 0},
        )
        both = client.post(
            "/v1/inference", json={"prompt": "hi", "messages": messages, "stream": False}
        )
        neither = client.post("/v1/inference", json={"max_tokens": 8, "stream": False})
    assert native.status_code == 200, native.text
    assert native.json()["text"] == chat.json()["choices"][0]["message"]["content"]
    for refused in (both, neither):
        assert refused.status_code == 400
        assert 'give either "prompt" or "messages"' in refused.json()["error"]["message"]
