from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from support.tinymodel import write_tiny_gguf

from rbee.dataplane.plumbing.gguf_file import (
    ModelFileError,
    check_model_ref,
    read_model_info,
    resolve_model_path,
)


def test_reads_architecture_and_layers(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", n_layers=3)
    info = read_model_info(path)
    assert (info.architecture, info.layers_total) == ("llama", 3)
    assert info.size_bytes == path.stat().st_size


@pytest.mark.parametrize(
    "content", [b"", b"GGUF", b"not a model at all" * 10, b"GGUF\x03\x00\x00\x00" + b"\xff" * 40]
)
def test_unreadable_files_raise_model_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="bad.gguf is not a readable GGUF model"):
        read_model_info(path)


def test_file_refs_and_plain_paths_resolve(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    assert resolve_model_path(f"file:{path}") == path
    assert resolve_model_path(str(path)) == path
    check_model_ref(str(path))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("file:/no/such.gguf", "no such model file"),
        ("pkg:unknown", "unknown bundled model"),
        ("hf:org/repo", "through the hive"),
    ],
)
def test_bad_refs(ref: str, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        check_model_ref(ref)


def test_reads_what_the_ram_estimate_needs(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", n_layers=3, n_embd=64, n_ctx_train=8192)
    info = read_model_info(path)
    assert info.context_length == 8192
    assert info.kv_heads == (2, 2, 2)  # the tiny model's grouped-query attention
    assert (info.key_length, info.value_length, info.embedding_length) == (16, 16, 64)
    assert info.vocab_size > 256
    assert info.kv_values_per_token == 3 * 2 * (16 + 16)


@pytest.mark.parametrize("keep", [0.6, 0.9, 300_000])
def test_a_truncated_file_is_refused(tmp_path: Path, keep: float) -> None:
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()  # about 900 kB
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: int(len(whole) * keep) if keep < 1 else int(keep)])
    with pytest.raises(
        ModelFileError,
        match=r"cut.gguf is truncated: tensor '.+' ends at byte "
        rf"{len(whole)} but the file has",
    ):
        read_model_info(cut)


def test_every_cut_is_refused_and_the_whole_file_accepted(tmp_path: Path) -> None:
    whole = write_tiny_gguf(tmp_path / "whole.gguf", n_layers=1, n_embd=8).read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in range(0, len(whole), len(whole) // 97):  # inside the header, tensor infos, data
        cut.write_bytes(whole[:size])
        with pytest.raises(ModelFileError, match="cut.gguf is (not a readable GGUF|truncated)"):
            read_model_info(cut)
    cut.write_bytes(whole)
    assert read_model_info(cut).size_bytes == len(whole)


@pytest.mark.bundled
def test_the_bundled_model_is_read_and_checked_fast(tmp_path: Path) -> None:
    """Its 262k-token vocabulary made gguf's GGUFReader take 22 s."""
    path = resolve_model_path("pkg:gemma3-270m")
    started = time.perf_counter()
    info = read_model_info(path)
    assert time.perf_counter() - started < 0.5
    assert (info.architecture, info.context_length, info.vocab_size) == ("gemma3", 32768, 262144)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in (int(len(data) * 0.6), 300_000):  # inside the tensor data, inside the vocabulary
        cut.write_bytes(data[:size])
        started = time.perf_counter()
        with pytest.raises(ModelFileError, match="cut.gguf is (not a readable GGUF|truncated)"):
            read_model_info(cut)
        assert time.perf_counter() - started < 0.5


def test_per_layer_kv_heads_are_read_from_an_array(tmp_path: Path) -> None:
    path = tmp_path / "mixed.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(3)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv([2, 1, 4])  # some architectures vary it by layer
    writer.add_tensor("token_embd.weight", np.zeros((10, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_model_info(path)
    assert info.kv_heads == (2, 1, 4) and info.context_length is None
    assert info.kv_values_per_token == 7 * (16 + 16)
