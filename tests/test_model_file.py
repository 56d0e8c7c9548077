from __future__ import annotations

from pathlib import Path

import pytest

from rbee.dataplane.model_file import (
    ModelFileError,
    check_model_ref,
    read_model_info,
    resolve_model_path,
)
from tinymodel import write_tiny_gguf


def test_reads_architecture_and_layers(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", n_layers=3)
    info = read_model_info(path)
    assert (info.architecture, info.layers_total) == ("llama", 3)
    assert info.size_bytes == path.stat().st_size


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a model at all" * 10,
                                     b"GGUF\x03\x00\x00\x00" + b"\xff" * 40])
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


@pytest.mark.parametrize(("ref", "message"), [
    ("file:/no/such.gguf", "no such model file"),
    ("pkg:unknown", "unknown bundled model"),
    ("hf:org/repo", "through the hive"),
])
def test_bad_refs(ref: str, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        check_model_ref(ref)
