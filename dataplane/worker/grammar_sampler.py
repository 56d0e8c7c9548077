"""Sampling under a grammar, the way llama.cpp's common sampler does it (common/sampling.cpp).

The request's own sampler chain picks a token from every candidate; the grammar checks that
one token; only when the grammar refuses it does the grammar filter every candidate, and the
chain picks again from those it allows. Filtering is the expensive part (the grammar decodes
each token of the vocabulary: about 150 ms a token on gemma3's 262k-token vocabulary, on this
machine), checking one token is cheap, and most tokens of a model that follows the format pass.

The draw stays exact: a token t the grammar allows comes out of the first draw with
probability p(t), or of the redraw, taken from p restricted to allowed tokens, with
(1 - P(allowed)) * p(t) / P(allowed); together p(t) / P(allowed), the same as filtering first.
The chain accepts a token only once it is final, so samplers that remember what was
generated (repetition penalties) never see a refused one.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarError(ValueError):
    """llama.cpp could not parse the grammar."""


class GrammarSampler:
    """One request's grammar and the candidate buffers its resampling needs (engine thread)."""

    def __init__(self, vocab: Any, grammar: str) -> None:
        self._grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not self._grammar:
            raise GrammarError("llama.cpp could not parse the grammar made from the request")
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._ids = np.arange(self._n_vocab, dtype=np.int32)
        self._data = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
        pointer = ctypes.cast(self._data.ctypes.data, llama_cpp.llama_token_data_p)
        self._candidates = llama_cpp.llama_token_data_array(pointer, self._n_vocab, -1, False)
        self._one = llama_cpp.llama_token_data(0, 1.0, 0.0)
        self._just_one = llama_cpp.llama_token_data_array(ctypes.pointer(self._one), 1, -1, False)
        self.resampled = 0  # how many tokens needed the full filter

    def sample(self, chain: Any, ctx: Any, index: int) -> int | None:
        """The next token at batch position `index`, drawn by `chain` within the grammar;
        None when no token of the vocabulary continues it."""
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,)
        )
        token = self._draw(chain, logits, filtered=False)
        if not self._allows(token):
            self.resampled += 1
            token = self._draw(chain, logits, filtered=True)
            if token is None:
                return None
        assert token is not None
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self._grammar)

    def _draw(self, chain: Any, logits: np.ndarray[Any, Any], *, filtered: bool) -> int | None:
        data, candidates = self._data, self._candidates
        data["id"] = self._ids
        data["logit"] = logits
        data["p"] = 0.0
        candidates.size = self._n_vocab
        candidates.selected = -1
        candidates.sorted = False
        if filtered:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(candidates))
        chosen = data[candidates.selected]
        if filtered and math.isinf(chosen["logit"]):
            return None  # every candidate was filtered out
        return int(chosen["id"])

    def _allows(self, token: int | None) -> bool:
        if token is None:
            return False
        self._one.id = llama_cpp.llama_token(token)
        self._one.logit = 1.0
        self._just_one.size = 1
        self._just_one.selected = -1
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._just_one))
        return not math.isinf(self._one.logit)
