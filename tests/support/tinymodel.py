"""Tiny, real GGUF models for tests.

Tests of the worker, hive and control plane need a model that the real llama.cpp
loads and decodes, but the bundled model is ~250 MB and slow to load, and tests may
not touch the network. ``write_tiny_gguf`` writes a llama-architecture model with
random weights (under 1 MB) in tens of milliseconds; llama.cpp loads it in about
10 ms and decodes on the order of 1000 tokens/s on a CPU, so every test can build its own.

The output is gibberish ASCII, but it is deterministic per ``seed`` and, by default,
the model can never pick an end-of-generation token, so a request for N tokens yields
exactly N tokens (finish_reason "length") under greedy decoding and sampling alike.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

_N_HEAD = 4
_N_HEAD_KV = 2  # fewer KV heads than query heads: exercises grouped-query attention
# q4_0: the type llama.cpp repacks into its CPU_REPACK buffers on AVX2 (use_extra_bufts).
_QUANT_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}

# Words whose pieces make ordinary English prompts tokenize into few tokens.
_WORDS = (  # noqa: SIM905  the word list reads as prose, not 170 quoted items
    "the a an and or but if then so of to in on at by for with from up down out over "
    "under is are was were be been being have has had do does did will would can could "
    "should may might must i you he she it we they me him her us them my your his its "
    "our their this that these those what which who whom whose when where why how all "
    "any both each few more most other some such no not only own same than too very "
    "just now once upon time story hello world tell me about write poem story count "
    "one two three four five six seven eight nine ten day night sun moon star sky sea "
    "tree bird cat dog man woman child king queen house road river city little big old "
    "new good bad long short happy sad yes please thank thanks answer question model "
    "test bee hive worker token say said go went come came see saw know knew think make"
).split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """Return (tokens, scores, token types) of a SentencePiece-style ("llama") vocab."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    # Byte fallback: any text tokenizes, however few word pieces the vocab has.
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    # llama.cpp's SPM tokenizer builds a piece only by merging two pieces that are
    # themselves in the vocab, so every prefix of a word piece must be present.
    chars = [*_LETTERS, *_LETTERS.upper(), *"0123456789.,!?'"]
    pieces = dict.fromkeys(["▁", *chars, *(f"▁{c}" for c in chars)])
    for word in _WORDS:
        for end in range(2, len(word) + 2):
            pieces[("▁" + word)[:end]] = None
    tokens += list(pieces)
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # The template's markers as single control tokens, as in real ChatML models.
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [gguf.TokenType.CONTROL] * 2
    # Higher score merges first; earlier (shorter, commoner) pieces win, as in real vocabs.
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0, 0.0]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: pathlib.Path,
    *,
    n_layers: int = 2,
    n_embd: int = 64,
    n_ctx_train: int = 4096,
    quant: str = "f32",
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    never_eos: bool = True,
    seed: int = 0,
) -> pathlib.Path:
    """Write a random-weight llama GGUF model to ``path`` and return ``path``.

    ``quant`` is "f32", "q8_0" or "q4_0" (2-D weight matrices quantised, norms stay f32).
    The model only ever generates word pieces (never byte, control or unknown tokens),
    so its text is plain ASCII. With ``never_eos`` it cannot generate the
    end-of-generation tokens ``</s>`` and ``<|im_end|>`` either, so generation stops
    only at ``max_tokens`` or a stop string, greedy or sampled.
    """
    if quant not in _QUANT_TYPES:
        raise ValueError(f"quant must be one of {sorted(_QUANT_TYPES)}, not {quant!r}")
    # Q8_0 and Q4_0 pack rows in blocks of 32; RoPE needs an even head dimension.
    multiple = 2 * _N_HEAD if quant == "f32" else 32
    if n_embd % multiple:
        raise ValueError(f"n_embd must be a multiple of {multiple} for quant={quant!r}")
    path = pathlib.Path(path)
    tokens, scores, types = _vocab()
    n_vocab, n_ff, head_dim = len(tokens), 4 * n_embd, n_embd // _N_HEAD
    eog_ids = [EOS_ID, tokens.index("<|im_end|>")]
    # Never generated: random byte tokens give invalid UTF-8, on which llama-cpp-python
    # overruns max_tokens while it waits for the rest of a character.
    banned = [i for i, t in enumerate(types) if t != gguf.TokenType.NORMAL and i not in eog_ids]
    if never_eos:
        banned += eog_ids
    rng = np.random.default_rng(seed)

    def normal(rows: int, cols: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=(rows, cols)).astype(np.float32)

    # numpy shapes are (out, in); gguf reverses them into ggml's (ne0=in, ne1=out).
    # Layer weights are scaled like a standard init so every layer changes the residual
    # stream noticeably: the next token then depends on the context, not just the last token.
    tensors: dict[str, np.ndarray] = {}
    token_embd = normal(n_vocab, n_embd, 1.0)
    # Dimension 0 of the residual stream is a constant 1 that no layer writes to (row 0
    # of attn_output and ffn_down is zero), so after the final RMS norm it is always
    # positive. output.weight column 0 then acts as a per-token logit bias.
    token_embd[:, 0] = 1.0
    tensors["token_embd.weight"] = token_embd
    for i in range(n_layers):
        attn_output = normal(n_embd, n_embd, n_embd**-0.5)
        attn_output[0] = 0.0
        ffn_down = normal(n_embd, n_ff, n_ff**-0.5)
        ffn_down[0] = 0.0
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(n_embd, dtype=np.float32),
            f"blk.{i}.attn_q.weight": normal(n_embd, n_embd, n_embd**-0.5),
            f"blk.{i}.attn_k.weight": normal(_N_HEAD_KV * head_dim, n_embd, n_embd**-0.5),
            f"blk.{i}.attn_v.weight": normal(_N_HEAD_KV * head_dim, n_embd, n_embd**-0.5),
            f"blk.{i}.attn_output.weight": attn_output,
            f"blk.{i}.ffn_norm.weight": np.ones(n_embd, dtype=np.float32),
            f"blk.{i}.ffn_gate.weight": normal(n_ff, n_embd, n_embd**-0.5),
            f"blk.{i}.ffn_up.weight": normal(n_ff, n_embd, n_embd**-0.5),
            f"blk.{i}.ffn_down.weight": ffn_down,
        }
    tensors["output_norm.weight"] = np.ones(n_embd, dtype=np.float32)
    # Subtracting a little of the embedding lowers each token's logit right after itself,
    # which rules out the one-token loops ("yyyy...") that random models fall into.
    output = normal(n_vocab, n_embd, 0.5) - 0.25 * token_embd
    # A zero row alone gives logit 0, which sampling can still pick; a large negative
    # weight on the always-positive dimension 0 keeps these tokens far below the rest.
    output[banned] = 0.0
    output[banned, 0] = -100.0
    tensors["output.weight"] = output

    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("rbee-tiny-test")
    writer.add_file_type(_FILE_TYPES[quant])
    if quant != "f32":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(_N_HEAD)
    writer.add_head_count_kv(_N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, tensor in tensors.items():
        if tensor.ndim == 2 and quant != "f32":
            writer.add_tensor(
                name,
                gguf.quants.quantize(tensor, _QUANT_TYPES[quant]),
                raw_dtype=_QUANT_TYPES[quant],
            )
        else:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_corrupt_gguf(path: pathlib.Path) -> pathlib.Path:
    """Write a GGUF file cut off inside its metadata, like an interrupted download.

    It starts with the real magic and header, so it passes a magic-number check, but
    llama.cpp fails to read its key-value pairs and refuses to load it.
    """
    path = write_tiny_gguf(pathlib.Path(path))
    with path.open("r+b") as f:
        f.truncate(1024)  # the vocab alone takes >10 kB, so this cuts inside metadata
    return path
