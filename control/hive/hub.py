"""The Hugging Face hub behind `hf:` references: which file, its URL, its request headers and
the sha256 the hub publishes for it, through huggingface_hub; its errors in rbee's words."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # not in __all__

from rbee.dataplane.protocol.model_refs import ModelRef
from rbee.dataplane.protocol.wire import ErrorCode

from .download_progress import DownloadError

_MAX_FILES_NAMED = 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubFile:
    """Where to download an `hf:` reference's file from, and what it must hash to."""

    url: str
    headers: dict[str, str]  # the hub's user agent, and the user's token if one is configured
    sha256: str | None  # the hub's LFS sha256, when the file has one


async def resolve_hub_file(model: ModelRef) -> HubFile:
    """The file an `hf:` reference names (or the repository's only .gguf); DownloadError if
    the hub has no such file or cannot be asked."""
    url = await _hub_url(model)
    # The hub's user agent, and the user's token if one is configured (gated repos).
    headers = build_hf_headers()
    return HubFile(url, headers, await _hub_sha256(model, url, headers))


async def _hub_url(model: ModelRef) -> str:
    assert model.repo_id is not None
    # huggingface_hub reads HF_ENDPOINT once, at import; read it at call time instead so
    # the endpoint can be set (or changed) after the hive has started.
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    filename = model.filename or await _single_gguf(model.repo_id, endpoint)
    return hf_hub_url(model.repo_id, filename, endpoint=endpoint)


async def _hub_sha256(model: ModelRef, url: str, headers: dict[str, str]) -> str | None:
    """The sha256 the hub publishes for an LFS file (its `X-Linked-Etag`), if it has one.

    A file kept in git itself (no LFS) has only a git sha1 as its etag: nothing to check.
    """
    try:
        metadata = await asyncio.to_thread(get_hf_file_metadata, url, headers=headers)
    except Exception as exc:  # huggingface_hub's own HTTP client raises its own types
        raise _hub_failure(
            exc,
            f"{model.ref}: not found at {url}",
            f"{model.ref}: asking the hub for the file's checksum",
        ) from None
    etag = (metadata.etag or "").lower()
    return etag if _SHA256_HEX.fullmatch(etag) else None


async def _single_gguf(repo_id: str, endpoint: str) -> str:
    try:
        files = await asyncio.to_thread(HfApi(endpoint=endpoint).list_repo_files, repo_id)
    except Exception as exc:  # huggingface_hub's own HTTP client raises its own types
        raise _hub_failure(
            exc,
            f"hf:{repo_id}: no such repository at {endpoint}",
            f"hf:{repo_id}: listing the repository",
        ) from None
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if not ggufs:
        raise DownloadError(
            ErrorCode.MODEL_NOT_FOUND,
            f"hf:{repo_id} has no .gguf file (files: {_names(files)})",
        )
    raise DownloadError(
        ErrorCode.INVALID_REQUEST,
        f"hf:{repo_id} has {len(ggufs)} .gguf files; name one as hf:{repo_id}:FILE "
        f"(files: {_names(ggufs)})",
    )


def _hub_failure(exc: Exception, not_found: str, doing: str) -> DownloadError:
    """An error of huggingface_hub's in rbee's words. The hub answers 401 as well as 404 for
    what does not exist (it will not say whether a private repository does)."""
    response = exc.response if isinstance(exc, HfHubHTTPError) else None
    if response is not None and response.status_code in (401, 404):
        return DownloadError(ErrorCode.MODEL_NOT_FOUND, not_found)
    first_line = (str(exc) or type(exc).__name__).splitlines()[0]
    return DownloadError(ErrorCode.DOWNLOAD_FAILED, f"{doing} failed: {first_line}")


def _names(files: list[str]) -> str:
    shown = ", ".join(files[:_MAX_FILES_NAMED])
    return shown + (
        f" and {len(files) - _MAX_FILES_NAMED} more" if len(files) > _MAX_FILES_NAMED else ""
    )
