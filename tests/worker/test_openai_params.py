"""OpenAI request parameters on a real worker, through the unchanged `openai` SDK: each one works
as OpenAI documents it or gets a 400 naming it (docs/openai.md)."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest

from conftest import WorkerProcess
from support.tinymodel import _vocab

PROMPT = "Once upon a time"
CHAT = [{"role": "user", "content": "Tell me a story"}]
TOOL = {"type": "function", "function": {"name": "story", "parameters": {"type": "object"}}}


def sdk(worker: WorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{worker.url}/v1", api_key=worker.api_key or "unused", max_retries=0
    )


def complete(worker: WorkerProcess, **kwargs: Any) -> str:
    answer = sdk(worker).completions.create(
        model=worker.model_id, prompt=PROMPT, max_tokens=48, temperature=0, **kwargs
    )
    return answer.choices[0].text


def token_id(text: str) -> int:
    """The tiny model's id for a token's text (its pieces spell a space as ▁)."""
    return _vocab()[0].index(text.replace(" ", "▁"))


# ----------------------------------------------------------------- stream_options


def test_usage_chunk_arrives_last_in_a_chat_stream(shared_worker: WorkerProcess) -> None:
    chunks = list(
        sdk(shared_worker).chat.completions.create(
            model=shared_worker.model_id,
            messages=CHAT,
            max_tokens=7,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 7
    assert last.usage.total_tokens == last.usage.prompt_tokens + 7
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"


def test_usage_chunk_in_a_completion_stream(shared_worker: WorkerProcess) -> None:
    chunks = list(
        sdk(shared_worker).completions.create(
            model=shared_worker.model_id,
            prompt=PROMPT,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_no_usage_chunk_unless_asked(shared_worker: WorkerProcess) -> None:
    chunks = list(
        sdk(shared_worker).completions.create(
            model=shared_worker.model_id, prompt=PROMPT, max_tokens=3, stream=True
        )
    )
    assert all(c.choices for c in chunks)


# ----------------------------------------------------------------- logprobs


def test_chat_logprobs_concatenate_to_the_content(shared_worker: WorkerProcess) -> None:
    answer = sdk(shared_worker).chat.completions.create(
        model=shared_worker.model_id,
        messages=CHAT,
        max_tokens=16,
        logprobs=True,
        top_logprobs=3,
        seed=5,
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == 16
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    for token in content:
        assert token.logprob <= 0
        assert bytes(token.bytes).decode() == token.token
        tops = [t.logprob for t in token.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0


def test_chat_logprobs_streamed(shared_worker: WorkerProcess) -> None:
    chunks = list(
        sdk(shared_worker).chat.completions.create(
            model=shared_worker.model_id,
            messages=CHAT,
            max_tokens=12,
            temperature=0,
            logprobs=True,
            stream=True,
        )
    )
    tokens = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(tokens) == 12 and "".join(t.token for t in tokens) == text
    assert all(t.logprob <= 0 and t.top_logprobs == [] for t in tokens)


def test_greedy_token_is_the_likeliest(shared_worker: WorkerProcess) -> None:
    answer = sdk(shared_worker).chat.completions.create(
        model=shared_worker.model_id,
        messages=CHAT,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
    )
    for token in answer.choices[0].logprobs.content:
        assert token.top_logprobs[0].token == token.token
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)


def test_completion_logprobs_in_the_legacy_shape(shared_worker: WorkerProcess) -> None:
    answer = sdk(shared_worker).completions.create(
        model=shared_worker.model_id, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=2
    )
    choice = answer.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 10
    assert all(p <= 0 for p in lp.token_logprobs)
    spans = zip(lp.text_offset, lp.tokens, strict=True)
    assert [choice.text[o : o + len(t)] for o, t in spans] == lp.tokens
    # The two likeliest, and the sampled token (the likeliest here: greedy).
    tops = zip(lp.top_logprobs, lp.tokens, strict=True)
    assert all(len(top) == 2 and token in top for top, token in tops)


def test_completion_logprobs_streamed_match_the_whole(shared_worker: WorkerProcess) -> None:
    client = sdk(shared_worker)
    kwargs: Any = {
        "model": shared_worker.model_id,
        "prompt": PROMPT,
        "max_tokens": 10,
        "temperature": 0,
    }
    whole = client.completions.create(**kwargs, logprobs=1).choices[0].logprobs
    chunks = list(client.completions.create(**kwargs, logprobs=1, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for lp in streamed for t in lp.tokens] == whole.tokens
    assert [o for lp in streamed for o in lp.text_offset] == whole.text_offset


def test_logprobs_with_a_stop_string_end_at_the_stop(shared_worker: WorkerProcess) -> None:
    full = complete(shared_worker)
    stop = full[11:14]  # likely inside a token: the cut token keeps its text before the stop
    answer = sdk(shared_worker).completions.create(
        model=shared_worker.model_id,
        prompt=PROMPT,
        max_tokens=48,
        temperature=0,
        logprobs=0,
        stop=[stop],
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.text == full[: full.index(stop)]
    assert "".join(choice.logprobs.tokens) == choice.text


# ----------------------------------------------------------------- penalties and bias


@pytest.mark.parametrize(
    "penalty",
    [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repeat_penalty": 1.5}],
    ids=["frequency", "presence", "repeat"],
)
def test_penalties_change_greedy_output(shared_worker: WorkerProcess, penalty: dict) -> None:
    plain = complete(shared_worker)
    extra = {k: v for k, v in penalty.items() if k.startswith("repeat")}
    standard = {k: v for k, v in penalty.items() if not k.startswith("repeat")}
    penalised = complete(shared_worker, extra_body=extra, **standard)
    assert penalised != plain
    assert complete(shared_worker, extra_body=extra, **standard) == penalised  # still greedy


def test_logit_bias_forces_a_token(shared_worker: WorkerProcess) -> None:
    text = complete(shared_worker, logit_bias={str(token_id(" hello")): 100})
    assert text == " hello" * 48


def test_logit_bias_forbids_a_token(shared_worker: WorkerProcess) -> None:
    answer = sdk(shared_worker).completions.create(
        model=shared_worker.model_id, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0
    )
    first = answer.choices[0].logprobs.tokens[0]
    banned = sdk(shared_worker).completions.create(
        model=shared_worker.model_id,
        prompt=PROMPT,
        max_tokens=6,
        temperature=0,
        logprobs=0,
        logit_bias={str(token_id(first)): -100},
    )
    assert first not in banned.choices[0].logprobs.tokens


def test_concurrent_requests_keep_their_own_penalties(shared_worker: WorkerProcess) -> None:
    settings: list[dict[str, Any]] = [
        {"frequency_penalty": 2.0},
        {"extra_body": {"repeat_penalty": 1.3}, "logit_bias": {str(token_id(" the")): 5}},
    ]
    alone = [complete(shared_worker, **s) for s in settings]
    together: list[str] = ["", ""]

    def run(i: int) -> None:
        together[i] = complete(shared_worker, **settings[i])

    for _ in range(2):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert together == alone


# ----------------------------------------------------------------- echo


def test_echo_puts_the_prompt_first(shared_worker: WorkerProcess) -> None:
    plain = complete(shared_worker)
    assert complete(shared_worker, echo=True) == PROMPT + plain
    chunks = list(
        sdk(shared_worker).completions.create(
            model=shared_worker.model_id,
            prompt=PROMPT,
            max_tokens=48,
            temperature=0,
            echo=True,
            stream=True,
        )
    )
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + plain


def test_echo_of_token_ids_is_refused(shared_worker: WorkerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(shared_worker).completions.create(
            model=shared_worker.model_id, prompt=[5, 6, 7], max_tokens=2, echo=True
        )
    assert "echo" in info.value.message


# ----------------------------------------------------------------- said out loud


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("n", {"n": 2}),
        ("best_of", {"best_of": 3}),
        ("suffix", {"suffix": "The end."}),
        ("echo", {"echo": True, "logprobs": 1}),
        ("logprobs", {"logprobs": 6}),
        ("stream_options", {"stream_options": {"include_usage": True}}),
        ("frequency_penalty", {"frequency_penalty": 2.5}),
        ("logit_bias", {"logit_bias": {"12": 101}}),
        ("logit_bias", {"logit_bias": {"9999999": 1}}),
        ("logit_bias", {"logit_bias": {"hello": 1}}),
        ("mirostat", {"extra_body": {"mirostat": 2}}),
    ],
)
def test_completions_say_no_naming_the_field(
    shared_worker: WorkerProcess, field: str, kwargs: dict
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(shared_worker).completions.create(
            model=shared_worker.model_id, prompt=PROMPT, max_tokens=2, **kwargs
        )
    assert info.value.status_code == 400
    assert field in info.value.message


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("top_logprobs", {"top_logprobs": 2}),
        ("top_logprobs", {"logprobs": True, "top_logprobs": 21}),
        ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
        ("modalities", {"modalities": ["text", "audio"]}),
        ("reasoning_effort", {"reasoning_effort": "low"}),
        ("logprobs", {"logprobs": True, "tools": [TOOL], "tool_choice": "required"}),
        ("n", {"n": 3}),
    ],
)
def test_chat_says_no_naming_the_field(
    shared_worker: WorkerProcess, field: str, kwargs: dict
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(shared_worker).chat.completions.create(
            model=shared_worker.model_id, messages=CHAT, max_tokens=2, **kwargs
        )
    assert field in info.value.message


def test_metadata_fields_are_accepted(shared_worker: WorkerProcess) -> None:
    answer = sdk(shared_worker).chat.completions.create(
        model=shared_worker.model_id,
        messages=CHAT,
        max_tokens=2,
        user="someone",
        metadata={"team": "docs"},
        store=False,
        n=1,
        modalities=["text"],
    )
    assert answer.usage.completion_tokens == 2
