"""Log-probabilities from logits, and handing them out with the text a stream releases."""

from __future__ import annotations

import numpy as np
import pytest

from rbee.dataplane.worker.logprobs import LogprobAligner, TokenLogprob, log_softmax_top


@pytest.mark.parametrize("spread", [0.5, 3.0, 20.0])
@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_log_softmax_top_matches_the_definition(spread: float, k: int) -> None:
    logits = np.random.default_rng(7).normal(0, spread, 3000).astype(np.float32)
    exact = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    chosen, best = log_softmax_top(logits, 42, k)
    assert chosen == pytest.approx(exact[42], abs=1e-4) and chosen <= 0
    order = np.argsort(-logits)[:k]
    assert [i for i, _ in best] == list(order)
    assert [v for _, v in best] == pytest.approx(list(exact[order]), abs=1e-4)


def entry(text: str) -> TokenLogprob:
    return TokenLogprob(text, text.encode(), -1.0, ())


def test_entries_go_out_once_their_text_is_released() -> None:
    aligner = LogprobAligner()
    for text in ("Once", " up", "on"):
        aligner.add(entry(text))
    assert aligner.release(2) == ()  # a stop string holds the rest back
    assert [e.token for e in aligner.release(3)] == ["Once"]
    assert [e.token for e in aligner.release(4)] == [" up", "on"]


def test_a_cut_keeps_the_text_before_it() -> None:
    aligner = LogprobAligner()
    for text in ("Hello", " wor", "ld", "!"):
        aligner.add(entry(text))
    released = aligner.release(7)  # the answer stops at "Hello w|orld"
    cut = aligner.cut()
    assert [e.token for e in released + cut] == ["Hello", " w"]
    assert aligner.release(5) == ()


def test_a_split_character_is_completed_by_the_next_token() -> None:
    aligner = LogprobAligner()
    aligner.add(TokenLogprob("", b"\xe2\x82", -0.5, ()))
    aligner.add(TokenLogprob("€", b"\xac", -0.1, ()))
    assert [e.token for e in aligner.release(1)] == ["", "€"]


def test_an_unfinished_character_at_the_end_goes_to_the_last_token() -> None:
    aligner = LogprobAligner()
    aligner.add(entry("a"))
    aligner.add(TokenLogprob("", b"\xe2", -0.5, ()))
    aligner.append_text("\ufffd")
    assert "".join(e.token for e in aligner.release(2)) == "a\ufffd"
