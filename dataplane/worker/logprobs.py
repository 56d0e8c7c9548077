"""Log-probabilities of generated tokens, as OpenAI's `logprobs` report them.

Computed on the engine thread from the logits llama.cpp already holds for the sampled position
(a log-softmax over the whole vocabulary, before any penalty, bias or temperature: the model's
own distribution), only for requests that ask.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NEAR_TOP = 8.0  # logits this close to the best: probability ratios down to e^-8 (3e-4)


@dataclass(frozen=True)
class TopLogprob:
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: `token` is the text it added to the answer (empty for a token that
    ends inside a UTF-8 character, whose text the next token completes), `bytes` its own."""

    token: str
    bytes: bytes
    logprob: float
    top: tuple[TopLogprob, ...]


def log_softmax_top(
    logits: npt.NDArray[np.float32], token: int, k: int
) -> tuple[float, list[tuple[int, float]]]:
    """`token`'s log-probability, and the `k` likeliest tokens with theirs, best first."""
    top = float(logits.max())
    log_sum = top + float(np.log(np.exp(logits - top, dtype=np.float32).sum(dtype=np.float64)))
    chosen = min(float(logits[token]) - log_sum, 0.0)
    if k <= 0:
        return chosen, []
    # The likeliest k are among the few near the top, when at least k are: one comparison
    # pass, cheaper than partitioning the whole vocabulary (measured: about half the time).
    best = np.flatnonzero(logits >= top - NEAR_TOP)
    if len(best) < k:
        best = np.argpartition(logits, -k)[-k:]
    best = best[np.argsort(logits[best])[::-1][:k]]
    return chosen, [(int(i), min(float(logits[i]) - log_sum, 0.0)) for i in best]


class LogprobAligner:
    """Hands each token's entry out with the text the stream releases.

    Stop strings hold text back and cut it: an entry goes out once its whole text has been
    released; at a stop, the token the cut falls in keeps only the text before the cut, and
    the tokens after it are dropped, so the entries' texts always concatenate to the answer.
    """

    def __init__(self) -> None:
        self._pending: deque[TokenLogprob] = deque()
        self._released = 0  # characters of the first pending entry already released

    def add(self, entry: TokenLogprob) -> None:
        self._pending.append(entry)

    def append_text(self, text: str) -> None:
        """Text the decoder gave at the end (an incomplete character's replacement) belongs
        to the last token."""
        if text and self._pending:
            last = self._pending.pop()
            self._pending.append(dataclasses.replace(last, token=last.token + text))

    def release(self, n_chars: int) -> tuple[TokenLogprob, ...]:
        """The entries whose text the `n_chars` just released completes."""
        out: list[TokenLogprob] = []
        pending = self._pending
        while pending and self._released + n_chars >= len(pending[0].token):
            n_chars -= len(pending[0].token) - self._released
            self._released = 0
            out.append(pending.popleft())
        if pending:
            self._released += n_chars
        return tuple(out)

    def cut(self) -> tuple[TokenLogprob, ...]:
        """The stream stopped: the token the cut falls in, with its released text only."""
        head = self._pending[0] if self._pending and self._released else None
        self._pending.clear()
        if head is None:
            return ()
        partial = dataclasses.replace(head, token=head.token[: self._released])
        self._released = 0
        return (partial,)
