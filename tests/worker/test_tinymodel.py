"""The tiny GGUF models of tests/support/tinymodel.py load and decode in the real llama.cpp."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from itertools import islice, pairwise

import llama_cpp
import pytest

from support.tinymodel import DEFAULT_CHAT_TEMPLATE, write_corrupt_gguf, write_tiny_gguf


def _load(path: pathlib.Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)


def test_f32_model_generates_full_length_without_stopping(tmp_path: pathlib.Path) -> None:
    llm = _load(write_tiny_gguf(tmp_path / "tiny.gguf"))
    out = llm("Once upon a time", max_tokens=64, temperature=0.0)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 64
    assert out["choices"][0]["text"].isascii()


def test_greedy_output_varies(tmp_path: pathlib.Path) -> None:
    # Tests that compare streamed pieces need text that is not one token repeated.
    llm = _load(write_tiny_gguf(tmp_path / "tiny.gguf"))
    tokens = list(islice(llm.generate(llm.tokenize(b"Once upon a time"), temp=0.0), 128))
    assert all(a != b for a, b in pairwise(tokens))
    assert len(set(tokens[-64:])) >= 8


def test_greedy_output_is_deterministic_per_seed(tmp_path: pathlib.Path) -> None:
    texts = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        llm = _load(write_tiny_gguf(tmp_path / f"{name}.gguf", seed=seed))
        texts.append(llm("hello", max_tokens=16, temperature=0.0)["choices"][0]["text"])
    assert texts[0] == texts[1] != texts[2]


def test_sampling_never_picks_end_of_generation(tmp_path: pathlib.Path) -> None:
    llm = _load(write_tiny_gguf(tmp_path / "tiny.gguf"))
    for seed in range(4):
        out = llm("hello", max_tokens=32, temperature=1.5, seed=seed)
        assert out["choices"][0]["finish_reason"] == "length"


def test_q8_0_model_decodes(tmp_path: pathlib.Path) -> None:
    # Guards the quantised decode path, which crashed here with AMX enabled.
    llm = _load(write_tiny_gguf(tmp_path / "tiny-q8.gguf", quant="q8_0"))
    assert llm.metadata["general.file_type"] == "7"  # LLAMA_FTYPE_MOSTLY_Q8_0
    out = llm("Once upon a time", max_tokens=16, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("template", [DEFAULT_CHAT_TEMPLATE, None])
def test_chat_template_metadata(tmp_path: pathlib.Path, template: str | None) -> None:
    llm = _load(write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=template))
    assert llm.metadata.get("tokenizer.chat_template") == template
    raw = llama_cpp.llama_model_chat_template(llm.model, None)
    assert (raw.decode() if raw else None) == template


def test_chat_completion_runs_to_length(tmp_path: pathlib.Path) -> None:
    llm = _load(write_tiny_gguf(tmp_path / "tiny.gguf"))
    # The template's markers are single control tokens, and llama.cpp treats <|im_end|>
    # as end-of-generation by its text: never_eos must keep the model off it too.
    (im_end,) = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), im_end)
    out = llm.create_chat_completion(
        [{"role": "user", "content": "hello"}], max_tokens=32, temperature=1.0, seed=1
    )
    assert out["choices"][0]["finish_reason"] == "length"


def test_corrupt_file_fails_to_load_cleanly(tmp_path: pathlib.Path) -> None:
    path = write_corrupt_gguf(tmp_path / "corrupt.gguf")
    assert path.read_bytes()[:4] == b"GGUF"
    # A subprocess, so that a crash inside llama.cpp fails this test instead of pytest.
    script = (
        "import sys, llama_cpp\n"
        "try:\n"
        "    llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, verbose=False)\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
        "else:\n"
        "    sys.exit('loaded a corrupt model')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "ValueError" in proc.stdout
