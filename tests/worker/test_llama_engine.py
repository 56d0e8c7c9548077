"""The continuously batched engine (llama_engine.py).

Exact text is not batch-invariant (the batch's shape changes kernel rounding), so these tests
compare what is: first tokens, lengths, stop reasons, and seeds within the same batch.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import LONG_CTX, WorkerProcess, start_long_stream, start_worker
from support.engine import running_engine, texts_together
from support.tinymodel import write_tiny_gguf

from rbee.dataplane.worker import llama_engine
from rbee.dataplane.worker.engine import (
    DoneEvent,
    ErrorEvent,
    Event,
    Generation,
    SamplingParams,
    TokenEvent,
)
from rbee.dataplane.worker.llama_engine import LlamaEngine

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def four_slot_worker(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    worker = start_worker(
        tiny_model,
        tmp_path_factory.mktemp("four-slots"),
        args=("--slots", "4", "--ctx-size", str(LONG_CTX), "--batch-size", "64"),
    )
    yield worker
    worker.stop()


def complete(worker: WorkerProcess, prompt: str = PROMPT, **body: object) -> dict:
    r = httpx.post(
        f"{worker.url}/v1/inference",
        timeout=60,
        json={"prompt": prompt, "stream": False, "temperature": 0, **body},
    )
    assert r.status_code == 200, r.text
    return r.json()


def first_token(worker: WorkerProcess, prompt: str) -> str:
    with (
        httpx.Client(base_url=worker.url, timeout=60) as client,
        client.stream(
            "POST", "/v1/inference", json={"prompt": prompt, "max_tokens": 1, "temperature": 0}
        ) as r,
    ):
        for line in r.iter_lines():
            if '"type": "token"' in line:
                return json.loads(line.removeprefix("data: "))["token"]
    raise AssertionError("no token")


def test_four_concurrent_streams_agree_with_one_on_the_invariants(
    four_slot_worker: WorkerProcess,
) -> None:
    alone = first_token(four_slot_worker, PROMPT)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: complete(four_slot_worker, max_tokens=48), range(4)))
    for answer in answers:
        assert answer["total_tokens"] == 48 and answer["stop_reason"] == "max_tokens"
    with ThreadPoolExecutor(4) as pool:
        firsts = list(pool.map(lambda _: first_token(four_slot_worker, PROMPT), range(4)))
    assert firsts == [alone] * 4


def test_a_request_arriving_mid_generation_starts_at_once(four_slot_worker: WorkerProcess) -> None:
    running, long_result = threading.Event(), {}
    thread = start_long_stream(four_slot_worker, "req-long-1", running, long_result)
    assert running.wait(10)
    short = complete(four_slot_worker, "hello there", max_tokens=16)
    still_running = "events" not in long_result
    httpx.delete(f"{four_slot_worker.url}/v1/inference/req-long-1")
    thread.join(30)
    assert short["total_tokens"] == 16
    # the short answer came back while the 8192-token stream was still going: it did not wait
    assert still_running, "the long stream ended before the short request"


def test_prompt_prefilled_in_chunks_next_to_a_running_stream(
    four_slot_worker: WorkerProcess,
) -> None:
    long_prompt = "the little bird saw the old king near the river " * 60  # > 64-token batches
    alone = first_token(four_slot_worker, long_prompt)
    running, other_result = threading.Event(), {}
    thread = start_long_stream(four_slot_worker, "req-other-1", running, other_result)
    assert running.wait(10)
    together = first_token(four_slot_worker, long_prompt)
    httpx.delete(f"{four_slot_worker.url}/v1/inference/req-other-1")
    thread.join(30)
    assert together == alone


def test_freed_kv_cells_leave_no_trace(four_slot_worker: WorkerProcess) -> None:
    before = complete(four_slot_worker, max_tokens=24)["text"]
    # fill every slot with a long stream, cancel them all, then ask again
    ids = [f"req-fill-{i}" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(complete, four_slot_worker, max_tokens=600, request_id=i) for i in ids
        ]
        time.sleep(0.3)
        for request_id in ids:
            httpx.delete(f"{four_slot_worker.url}/v1/inference/{request_id}")
        for future in futures:
            assert future.result()["stop_reason"] in ("canceled", "max_tokens")
    assert complete(four_slot_worker, max_tokens=24)["text"] == before


def test_fifth_stream_on_four_slots_gets_503(four_slot_worker: WorkerProcess) -> None:
    started = threading.Barrier(5)
    ids = [f"req-full-{i}" for i in range(4)]

    def hold(request_id: str) -> None:
        with (
            httpx.Client(base_url=four_slot_worker.url, timeout=60) as client,
            client.stream(
                "POST",
                "/v1/inference",
                json={"prompt": PROMPT, "max_tokens": 8192, "request_id": request_id},
            ) as r,
        ):
            lines = r.iter_lines()
            next(line for line in lines if '"type": "token"' in line)
            started.wait()
            for _ in lines:
                pass

    threads = [threading.Thread(target=hold, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    started.wait(10)
    r = httpx.post(f"{four_slot_worker.url}/v1/inference", json={"prompt": "x"})
    for request_id in ids:
        httpx.delete(f"{four_slot_worker.url}/v1/inference/{request_id}")
    for t in threads:
        t.join(30)
    assert r.status_code == 503
    assert r.json()["error"]["details"] == {"slots_total": 4, "slots_busy": 4}


def test_seeds_reproduce_within_the_same_batch(tiny_model: Path) -> None:
    """Four sampled requests decoded together, twice: each seed gives the same text."""
    params = [
        SamplingParams(max_tokens=40, temperature=1.1, top_k=50, top_p=0.95, seed=seed)
        for seed in (1, 2, 3, 4)
    ]

    async def main() -> None:
        async with running_engine(tiny_model, slots=4) as engine:
            first = await texts_together(engine, PROMPT, params)
            second = await texts_together(engine, PROMPT, params)
        assert first == second
        assert all(done.total_tokens == 40 for _text, done in first)
        assert len({text for text, _done in first}) == 4  # different seeds, different samples

    asyncio.run(main())


def greedy_text(model: Path, *, threads: int, extra_bufts: bool) -> str:
    async def main() -> str:
        async with running_engine(
            model, slots=1, threads=threads, extra_bufts=extra_bufts
        ) as engine:
            [(text, done)] = await texts_together(
                engine, PROMPT, [SamplingParams(max_tokens=32, temperature=0)]
            )
        assert done.total_tokens == 32
        return text

    return asyncio.run(main())


def test_repacked_weights_decode_alike_on_one_thread_and_on_the_two_thread_pool(
    tmp_path: Path,
) -> None:
    # --extra-bufts repacks q4_0 weights (AVX2). The pool's second thread must run the very ggml
    # that llama.cpp uses: a second copy of libggml-cpu computed repacked matmuls as plain q4_0
    # and gave NaN logits: the two-thread run produced no text at all.
    model = write_tiny_gguf(tmp_path / "q4_0.gguf", quant="q4_0")
    one = greedy_text(model, threads=1, extra_bufts=True)
    two = greedy_text(model, threads=2, extra_bufts=True)
    assert len(set(one.split())) > 3  # a real answer, not one token repeated
    assert two == one


def test_the_greedy_fast_path_answers_as_llama_cpps_greedy_sampler(tiny_model: Path) -> None:
    """Plain greedy takes the argmax itself; a zero logit bias sends the same request through
    a llama.cpp sampler chain ending in its greedy sampler."""
    plain = SamplingParams(max_tokens=40, temperature=0)
    chained = SamplingParams(max_tokens=40, temperature=0, logit_bias=((5, 0.0),))

    async def main() -> None:
        async with running_engine(tiny_model, slots=2) as engine:
            [(fast, _), (chain, _)] = await texts_together(engine, PROMPT, [plain, chained])
        assert fast == chain

    asyncio.run(main())


# Histories of a few prefill chunks (running_engine's batch size is 64 tokens): the cache
# reuses whole chunks only.
HISTORY = (
    "Once upon a time a fox lived by the river and every morning the fox went out to look "
    "for bread and cheese in the village where the old baker lived with his cat. " * 3
)
OTHER_HISTORY = (
    "Twelve sailors set out from the harbour in a small boat to find the island that the "
    "old maps showed far beyond the last lighthouse on the windy cape of the north. " * 3
)
GREEDY = SamplingParams(max_tokens=12, temperature=0)


async def answer(engine: LlamaEngine, prompt: str) -> tuple[str, DoneEvent]:
    [(text, done)] = await texts_together(engine, prompt, [GREEDY])
    return text, done


def test_a_prompt_that_extends_an_earlier_one_reuses_its_cells_and_answers_the_same(
    tiny_model: Path,
) -> None:
    """The second turn of a chat: the history's KV cells are reused, and the answer is the
    one a fresh slot gives."""

    async def main() -> None:
        async with running_engine(tiny_model, slots=1, ctx_size=512) as engine:
            first, first_done = await answer(engine, HISTORY)
            second_prompt = f"{HISTORY}{first} and then the fox"
            second, second_done = await answer(engine, second_prompt)
            n_history = len(await engine.tokenize(HISTORY, add_special=True))
        async with running_engine(tiny_model, slots=1, ctx_size=512) as fresh:
            alone, alone_done = await answer(fresh, second_prompt)
        assert first_done.cached_tokens == 0 and alone_done.cached_tokens == 0
        assert second_done.cached_tokens == n_history // 64 * 64 > 0  # whole chunks
        assert second == alone

    asyncio.run(main())


def test_a_new_prompt_takes_the_least_recently_used_slot(tiny_model: Path) -> None:
    async def main() -> None:
        async with running_engine(tiny_model, slots=2, ctx_size=512) as engine:
            await answer(engine, HISTORY)  # slot 0
            await answer(engine, OTHER_HISTORY)  # slot 1: the other one was used last
            _, again = await answer(engine, HISTORY + " again")  # slot 0, reused
            assert again.cached_tokens > 0
            await answer(engine, "Three cats sat on a wall in the sun")  # evicts slot 1
            _, kept = await answer(engine, HISTORY + " once more")
            _, evicted = await answer(engine, OTHER_HISTORY + " again")
        assert evicted.cached_tokens == 0
        assert kept.cached_tokens > 0

    asyncio.run(main())


def test_requests_said_to_be_arriving_delay_a_prefill_only_briefly(tiny_model: Path) -> None:
    """An arrival count that never comes down (a handler stuck before submitting) costs a
    prefill at most the gathering bound."""

    async def main() -> None:
        async with running_engine(tiny_model, slots=2) as engine:
            engine.arriving = 1
            started = time.monotonic()
            _, done = await answer(engine, PROMPT)
            assert done.total_tokens == GREEDY.max_tokens
            assert time.monotonic() - started < 5

    asyncio.run(main())


async def first_tokens_in_order(engine: LlamaEngine, pauses: list[float]) -> list[str]:
    """Requests "a", "b", ... each submitted the pause after the one before: whose tokens
    reached the event loop in what order, up to the last one's first token."""
    loop = asyncio.get_running_loop()
    tokens = await engine.tokenize(PROMPT, add_special=True)
    order: list[str] = []
    names = "abcdefgh"[: len(pauses) + 1]
    gens = [Generation(name, tokens, GREEDY, loop) for name in names]
    for gen in gens:
        heard = gen.deliver

        def recorded(event: Event, name: str = gen.request_id, heard: Callable = heard) -> None:
            if isinstance(event, TokenEvent):
                order.append(name)
            heard(event)

        gen.deliver = recorded  # type: ignore[method-assign]
    engine.submit(gens[0])
    for pause, gen in zip(pauses, gens[1:], strict=True):
        await asyncio.sleep(pause)
        engine.submit(gen)
    for gen in gens:
        await gen.finished.wait()
    return order[: order.index(names[-1]) + 1]


def test_after_overlapping_requests_a_close_follower_shares_the_first_prefill(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once requests have overlapped, one that comes a moment after another (not yet being
    read when the first step starts) is prefilled with it: its first token comes with the
    first one's, not a step later."""
    monkeypatch.setattr(llama_engine, "GATHER_LINGER_S", 1.0)  # ample on a loaded machine
    monkeypatch.setattr(llama_engine, "GATHER_MAX_S", 10.0)

    async def main() -> None:
        async with running_engine(tiny_model, slots=3) as engine:
            await texts_together(engine, PROMPT, [GREEDY, GREEDY])  # overlapping
            assert await first_tokens_in_order(engine, [0.05]) == ["a", "b"]
            # Each newcomer restarts the wait: a burst longer than one linger is one step.
            assert await first_tokens_in_order(engine, [0.6, 0.6]) == ["a", "b", "c"]

    asyncio.run(main())


def test_a_lone_users_request_does_not_linger(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that never overlapped: the first step starts at once, and a request that
    comes later joins the next step."""
    monkeypatch.setattr(llama_engine, "GATHER_LINGER_S", 30.0)
    monkeypatch.setattr(llama_engine, "GATHER_MAX_S", 30.0)

    async def main() -> None:
        async with running_engine(tiny_model, slots=2) as engine:
            started = time.monotonic()
            await answer(engine, PROMPT)
            assert time.monotonic() - started < 10
            assert (await first_tokens_in_order(engine, [0.5]))[:2] == ["a", "a"]

    asyncio.run(main())


def test_a_sampler_that_cannot_be_built_fails_its_request_only(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = llama_engine._make_sampler

    def failing(params: SamplingParams, n_vocab: int, prompt: list[int]) -> object:
        if params.seed == 13:
            raise RuntimeError("no sampler")
        return built(params, n_vocab, prompt)

    monkeypatch.setattr(llama_engine, "_make_sampler", failing)

    async def main() -> None:
        async with running_engine(tiny_model, slots=2) as engine:
            loop = asyncio.get_running_loop()
            tokens = await engine.tokenize(PROMPT, add_special=True)
            for grammar in (None, 'root ::= "a"'):
                params = SamplingParams(max_tokens=4, seed=13, grammar=grammar)
                doomed = Generation("doomed", tokens, params, loop)
                engine.submit(doomed)
                await asyncio.wait_for(doomed.finished.wait(), 30)
                assert isinstance(doomed.terminal, ErrorEvent)
            # The engine goes on, with both its slots.
            for _text, done in await texts_together(engine, PROMPT, [GREEDY, GREEDY]):
                assert done.total_tokens == GREEDY.max_tokens

    asyncio.run(main())


@pytest.mark.parametrize(
    ("free", "running", "chosen"),
    [
        ([0, 2, 3], [], 2),  # nothing runs: the slot used longest ago
        ([0, 2, 3], [1], 2),  # next to the running one, and used longest ago of those
        ([0, 3], [1], 0),  # next to the running one, though 3 was used longer ago
        ([1, 3], [0, 2], 1),  # the gap first
        ([3], [0], 3),  # no slot keeps the ids consecutive: the one there is
    ],
)
def test_a_slot_is_placed_to_keep_running_ids_consecutive_then_by_lru(
    free: list[int], running: list[int], chosen: int
) -> None:
    last_used = [5, 9, 1, 2]  # per slot: when its last request ended
    assert llama_engine._placed_slot(free, running, last_used) == chosen
