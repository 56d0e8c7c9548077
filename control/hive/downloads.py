"""Model provisioning: bundled and local models registered in place, remote ones downloaded.

Every reference ends in the catalog with a local path, a size and a sha256, and only once its
file reads as a whole GGUF (every tensor inside the file). Remote files (`https://`, `hf:`)
stream into `<models_dir>/.partial/`, resume with `Range` after a dropped connection, are
retried with exponential backoff (tenacity) and are moved into place atomically once their
size (and the expected sha256, when known) is verified. A download runs in its own task; any
number of clients follow it through `Download.events()` (DESIGN §4's progress events).

Partial files, one rule: a `.part` is kept after a failure that another try may get past
(network, server errors, a canceled download, a stopped hive), so the next try resumes; it is
removed when the failure says its bytes cannot be used or cannot fit (404, not a GGUF, a
sha256 mismatch, a full disk), and when it is older than PARTIAL_MAX_AGE_S (checked at start
and before every download).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from rbee.dataplane.plumbing.gguf_file import (
    ModelFileError,
    ModelInfo,
    read_model_info,
    resolve_model_path,
)
from rbee.dataplane.protocol.hive_api import (
    DownloadComplete,
    DownloadEvent,
    DownloadFailed,
    DownloadProgress,
    DownloadRetrying,
)
from rbee.dataplane.protocol.model_refs import ModelRef, local_filename, parse_model_ref
from rbee.dataplane.protocol.wire import ApiError, ErrorCode, ErrorInfo

from .catalog import CatalogEntry, ModelCatalog, utc_now

log = logging.getLogger(__name__)

_PROGRESS_INTERVAL_S = 0.1
_PROGRESS_FRACTION = 0.01
_MAX_BACKOFF_S = 60.0  # only reached with many more attempts than the default 6
# A stalled connection counts as dropped after this long without a byte, then resumes.
_HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_MAX_FILES_NAMED = 20
_DOWNLOADED = frozenset({"https", "hf"})  # providers whose files this hive wrote
# Partial files not written to for this long are removed, never resumed: the server's file may
# have changed since, and an abandoned download should not hold disk space forever.
PARTIAL_MAX_AGE_S = 7 * 24 * 3600.0
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
A = TypeVar("A")
R = TypeVar("R")


class DownloadState(StrEnum):
    DOWNLOADING = "downloading"
    COMPLETE = "complete"
    FAILED = "failed"


class DownloadError(ApiError):
    """Provisioning failed; `code` is MODEL_NOT_FOUND, DOWNLOAD_FAILED or INVALID_REQUEST."""


class _DiskFull(Exception):
    """The download does not fit in the models directory's free space."""

    def __init__(self, needed: int | None, written: int) -> None:
        super().__init__(needed, written)
        self.needed = needed  # bytes still to write, when the server said the size
        self.written = written  # bytes of the file on disk (or buffered) so far


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix (network, 5xx, short body)."""


class Download:
    """One model being provisioned, shared by every client that asked for it."""

    def __init__(self, ref: str) -> None:
        self.id = f"dl-{secrets.token_hex(8)}"
        self.ref = ref
        self.state = DownloadState.DOWNLOADING
        self.entry: CatalogEntry | None = None
        self.error: DownloadError | None = None
        self._latest: DownloadEvent | None = None
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def local_path(self) -> Path | None:
        return self.entry.local_path if self.entry else None

    async def events(self) -> AsyncIterator[DownloadEvent]:
        """The latest progress event, then each update, ending with the one terminal event.

        Stages: `downloading` (bytes_downloaded, bytes_total or None, speed_mbps in MB/s),
        `retrying` (attempt, attempts, delay_ms, error: before each new attempt), then
        `complete` (local_path) or `failed` (error: {code, message}). A slow subscriber skips
        intermediate progress (it always gets the latest), never the terminal event.
        """
        seen = 0
        while True:
            if self._version == seen:
                await self._changed.wait()
                continue
            event, seen = self._latest, self._version
            assert event is not None
            yield event
            if isinstance(event, DownloadComplete | DownloadFailed):
                return

    async def wait(self) -> CatalogEntry:
        """The catalog entry once provisioned; DownloadError if it failed."""
        async for _ in self.events():
            pass
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        return self.entry

    def _publish(self, event: DownloadEvent) -> None:
        self._latest = event
        self._version += 1
        # Waiters hold the old Event, which is set; later waiters get the fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    def _progress(self, done: int, total: int | None, speed_mbps: float) -> None:
        self._publish(
            DownloadProgress(
                bytes_downloaded=done, bytes_total=total, speed_mbps=round(speed_mbps, 2)
            )
        )

    def _retrying(self, attempt: int, attempts: int, delay_ms: int, error: str) -> None:
        self._publish(
            DownloadRetrying(attempt=attempt, attempts=attempts, delay_ms=delay_ms, error=error)
        )

    def _complete(self, entry: CatalogEntry) -> None:
        self.entry, self.state = entry, DownloadState.COMPLETE
        self._publish(DownloadComplete(local_path=str(entry.local_path)))

    def _fail(self, error: DownloadError) -> None:
        self.error, self.state = error, DownloadState.FAILED
        self._publish(DownloadFailed(error=ErrorInfo(code=error.code, message=error.message)))


class DownloadManager:
    """Starts downloads, deduplicates them by reference and keeps the catalog up to date."""

    def __init__(
        self,
        catalog: ModelCatalog,
        models_dir: Path,
        *,
        attempts: int = 6,
        backoff_s: float = 0.1,
        chunk_bytes: int = 1 << 20,
        partial_max_age_s: float = PARTIAL_MAX_AGE_S,
    ) -> None:
        self.catalog = catalog
        self.models_dir = models_dir
        self._partial_dir = models_dir / ".partial"
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._chunk_bytes = chunk_bytes
        self._partial_max_age_s = partial_max_age_s
        self._by_id: dict[str, Download] = {}
        self._active: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep_partials()

    def start(self, ref: str) -> Download:
        """Provisions `ref` in the background; InvalidModelRef if `ref` is not acceptable.

        A model already in the catalog gives a Download that is already complete; a model
        already being provisioned gives that same Download.
        """
        model = parse_model_ref(ref)
        if (active := self._active.get(model.ref)) is not None:
            return active
        download = Download(model.ref)
        self._by_id[download.id] = download
        if (entry := self._cached(model.ref)) is not None:
            try:
                _verify_sha256(
                    model.ref,
                    entry.sha256,
                    model.sha256,
                    "the reference's #sha256",
                    catalogued=True,
                )
            except DownloadError as exc:
                download._fail(exc)
            else:
                download._complete(entry)
            return download
        self._active[model.ref] = download
        task = asyncio.create_task(self._run(download, model), name=f"download {download.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download

    def get(self, download_id: str) -> Download | None:
        return self._by_id.get(download_id)

    async def ensure(self, ref: str) -> CatalogEntry:
        """The model's catalog entry, provisioning it first if needed; DownloadError if not."""
        entry = await self.start(ref).wait()
        # A download already under way for the same file may have had no #sha256 to check.
        model = parse_model_ref(ref)
        _verify_sha256(
            model.ref, entry.sha256, model.sha256, "the reference's #sha256", catalogued=True
        )
        return entry

    async def remove(self, ref: str) -> CatalogEntry | None:
        """Drops `ref` from the catalog; deletes its file only if this hive downloaded it.

        Decided by the entry's provider: an `https:` or `hf:` file is the hive's own; a
        `file:` or `pkg:` model's file belongs to someone else and stays, even when it lies
        inside the models directory (it may be another entry's download).
        """
        entry = self.catalog.remove(parse_model_ref(ref).ref)
        if (
            entry is not None
            and entry.provider in _DOWNLOADED
            and entry.local_path.resolve().is_relative_to(self.models_dir.resolve())
        ):
            await asyncio.to_thread(entry.local_path.unlink, missing_ok=True)
            log.info("removed %s (%s)", entry.reference, entry.local_path)
        elif entry is not None:
            log.info("forgot %s; its file %s stays", entry.reference, entry.local_path)
        return entry

    async def model_info(self, entry: CatalogEntry) -> ModelInfo:
        """The GGUF metadata of a catalogued model; DownloadError if the file broke since."""
        return await _model_file(read_model_info, entry.local_path, ErrorCode.DOWNLOAD_FAILED)

    async def aclose(self) -> None:
        """Cancels running downloads; their partial files stay, to be resumed next time."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _cached(self, ref: str) -> CatalogEntry | None:
        entry = self.catalog.get(ref)
        if entry is not None and not entry.local_path.is_file():
            log.warning(
                "%s: catalog entry's file %s is gone; provisioning it again", ref, entry.local_path
            )
            self.catalog.remove(ref)
            return None
        return entry

    async def _run(self, download: Download, model: ModelRef) -> None:
        started = time.monotonic()
        log.info("provisioning %s (%s)", model.ref, download.id)
        try:
            entry = await self._provision(download, model)
            self.catalog.add(entry)
        except DownloadError as exc:
            log.warning("%s: %s", model.ref, exc.message)
            download._fail(exc)
        except asyncio.CancelledError:
            download._fail(DownloadError(ErrorCode.DOWNLOAD_FAILED, "the download was canceled"))
            raise
        except Exception as exc:  # the subscribers must hear of it, whatever it is
            log.exception("%s: provisioning failed unexpectedly", model.ref)
            download._fail(DownloadError(ErrorCode.DOWNLOAD_FAILED, f"unexpected error: {exc}"))
        else:
            log.info(
                "%s ready at %s (%d bytes, %.1f s)",
                model.ref,
                entry.local_path,
                entry.size_bytes,
                time.monotonic() - started,
            )
            download._complete(entry)
        finally:
            self._active.pop(model.ref, None)

    async def _provision(self, download: Download, model: ModelRef) -> CatalogEntry:
        match model.provider:
            case "pkg":
                path = await _model_file(resolve_model_path, model.ref, ErrorCode.MODEL_NOT_FOUND)
                return await self._register_in_place(model, path)
            case "file":
                assert model.path is not None
                if not model.path.is_file():
                    raise DownloadError(ErrorCode.MODEL_NOT_FOUND, f"{model.path}: no such file")
                return await self._register_in_place(model, model.path)
            case "https":
                assert model.url is not None
                return await self._download(
                    download, model, model.url, {}, (model.sha256, "the reference's #sha256")
                )
            case "hf":
                url = await self._hub_url(model)
                # The hub's user agent, and the user's token if one is configured (gated repos).
                headers = build_hf_headers()
                return await self._download(
                    download,
                    model,
                    url,
                    headers,
                    (await self._hub_sha256(model, url, headers), "the hub's LFS sha256"),
                )

    async def _register_in_place(self, model: ModelRef, path: Path) -> CatalogEntry:
        info = await _model_file(read_model_info, path, ErrorCode.DOWNLOAD_FAILED)
        digest = await asyncio.to_thread(_sha256_of, path)
        return CatalogEntry(model.ref, model.provider, path, info.size_bytes, digest, utc_now())

    async def _hub_url(self, model: ModelRef) -> str:
        assert model.repo_id is not None
        # huggingface_hub reads HF_ENDPOINT once, at import; read it at call time instead so
        # the endpoint can be set (or changed) after the hive has started.
        endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
        filename = model.filename or await self._single_gguf(model.repo_id, endpoint)
        return hf_hub_url(model.repo_id, filename, endpoint=endpoint)

    async def _hub_sha256(self, model: ModelRef, url: str, headers: dict[str, str]) -> str | None:
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

    async def _single_gguf(self, repo_id: str, endpoint: str) -> str:
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

    async def _download(
        self,
        download: Download,
        model: ModelRef,
        url: str,
        headers: dict[str, str],
        expected: tuple[str | None, str],
    ) -> CatalogEntry:
        """Downloads into the partial file, verifies it, moves it into place.

        `expected` is the sha256 the file must have (or None) and where that value came from.
        """
        name = local_filename(model)
        self._partial_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._sweep_partials)
        partial = await _PartialFile.resume(self._partial_dir / f"{name}.part", self._chunk_bytes)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_s, exp_base=2, max=_MAX_BACKOFF_S),
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._before_sleep(download),
            reraise=True,
        )
        size = 0
        try:
            async with httpx.AsyncClient(
                timeout=_HTTP_TIMEOUT, follow_redirects=True, headers=headers
            ) as client:
                async for attempt in retrying:
                    with attempt:
                        size = await self._attempt(client, url, partial, download)
            _verify_sha256(model.ref, partial.sha256(), *expected)
            await _model_file(read_model_info, partial.path, ErrorCode.DOWNLOAD_FAILED)
        except _Retryable as exc:
            # Kept: the next try resumes where this one stopped.
            log.info(
                "%s: keeping %d bytes in %s to resume from", model.ref, partial.size, partial.path
            )
            raise DownloadError(
                ErrorCode.DOWNLOAD_FAILED,
                f"Failed to download model after {self._attempts} attempts: {exc}",
            ) from None
        except _DiskFull as exc:
            error = self._no_space(model.ref, exc)
            partial.discard()  # a partial on a full disk only blocks other downloads
            raise error from None
        except DownloadError:
            partial.discard()
            raise
        await asyncio.to_thread(_fsync, partial.path)
        final = self.models_dir / name
        os.replace(partial.path, final)
        return CatalogEntry(model.ref, model.provider, final, size, partial.sha256(), utc_now())

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, partial: _PartialFile, download: Download
    ) -> int:
        """One GET, resuming from the partial file; returns the file's verified size."""
        offset = partial.size
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        total: int | None = None
        try:
            try:
                async with client.stream("GET", url, headers=headers) as response:
                    total = _begin(response, offset, partial, download.ref)
                    if total is not None and total - partial.size > self._free_bytes():
                        raise _DiskFull(total - partial.size, partial.size)
                    progress = _Progress(download, total, partial.size)
                    # Chunks are written as they arrive (the file buffers chunk_bytes): what
                    # was received before a drop is kept, so the next attempt resumes there.
                    async for chunk in response.aiter_bytes():
                        partial.write(chunk)
                        progress.report(partial.size)
            finally:
                partial.close()  # flushes: may hit a full disk too
        except httpx.TransportError as exc:
            raise _Retryable(str(exc) or type(exc).__name__) from None
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise _DiskFull(
                total - partial.size if total is not None else None, partial.size
            ) from None
        if total is not None and partial.size != total:
            if partial.size > total:
                partial.truncate()
            raise _Retryable(f"got {partial.size} of {total} bytes")
        return partial.size

    def _free_bytes(self) -> int:
        return shutil.disk_usage(self._partial_dir).free

    def _no_space(self, ref: str, full: _DiskFull) -> DownloadError:
        free = self._free_bytes()
        need = (
            f"needs {full.needed:,} more bytes"
            if full.needed is not None
            else f"filled the disk after {full.written:,} bytes"
        )
        return DownloadError(
            ErrorCode.DOWNLOAD_FAILED,
            f"Not enough disk space for {ref}: it {need}, {self.models_dir} has {free:,} "
            "bytes free; free some space (or delete models) and try again",
            details={
                "needed_bytes": full.needed,
                "free_bytes": free,
                "models_dir": str(self.models_dir),
            },
        )

    def _sweep_partials(self) -> None:
        """Removes partial files older than the age limit (see the module docstring)."""
        if not self._partial_dir.is_dir():
            return
        oldest = time.time() - self._partial_max_age_s
        for path in self._partial_dir.glob("*.part"):
            try:
                if path.stat().st_mtime < oldest:
                    path.unlink()
                    log.info(
                        "removed %s: a partial download untouched for %.0f days",
                        path,
                        self._partial_max_age_s / 86400,
                    )
            except FileNotFoundError:
                pass

    def _before_sleep(self, download: Download) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            delay_ms = round((state.next_action.sleep if state.next_action else 0) * 1000)
            attempt = state.attempt_number + 1
            log.warning(
                "Retrying download (attempt %d/%d)... delay %dms: %s: %s",
                attempt,
                self._attempts,
                delay_ms,
                download.ref,
                error,
            )
            download._retrying(attempt, self._attempts, delay_ms, str(error))

        return before_sleep


def _begin(response: httpx.Response, offset: int, partial: _PartialFile, ref: str) -> int | None:
    """Checks the answer to a (ranged when offset > 0) GET and readies the partial file.

    Returns the whole file's size when the server says it.
    """
    status = response.status_code
    if status == 404:
        raise DownloadError(
            ErrorCode.MODEL_NOT_FOUND, f"{ref}: not found (404 from {response.url})"
        )
    if status == 416:  # our partial file is longer than the server's: start again
        partial.truncate()
        raise _Retryable("the server refused to resume (416); starting again")
    if status in (408, 429) or status >= 500:
        raise _Retryable(f"the server answered {status} {response.reason_phrase}")
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != offset:
            partial.truncate()
            raise _Retryable("the server resumed at the wrong offset; starting again")
        partial.open_for_append()
        return int(match[3]) if match[3] != "*" else None
    if status == 200:
        if offset:
            log.info("%s: the server ignored Range; downloading from byte 0", ref)
            partial.truncate()
        partial.open_for_append()
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None
    raise DownloadError(
        ErrorCode.DOWNLOAD_FAILED, f"{ref}: the server answered {status} {response.reason_phrase}"
    )


class _Progress:
    """Publishes progress at most every 100 ms or 1 % of the file, whichever comes first."""

    def __init__(self, download: Download, total: int | None, start_size: int) -> None:
        self._download = download
        self._total = total
        self._start_size = start_size
        self._started = self._last_time = time.monotonic()
        self._last_size = start_size
        download._progress(start_size, total, 0.0)

    def report(self, size: int) -> None:
        now = time.monotonic()
        step = self._total * _PROGRESS_FRACTION if self._total else None
        if now - self._last_time < _PROGRESS_INTERVAL_S and (
            step is None or size - self._last_size < step
        ):
            return
        self._last_time, self._last_size = now, size
        speed_mbps = (size - self._start_size) / 1e6 / max(now - self._started, 1e-6)
        self._download._progress(size, self._total, speed_mbps)


class _PartialFile:
    """The `.part` file and the sha256 of exactly the bytes it holds."""

    def __init__(self, path: Path, size: int, hasher: Any, buffer_bytes: int) -> None:
        self.path = path
        self.size = size
        self._hasher = hasher
        self._buffer_bytes = buffer_bytes
        self._file: IO[bytes] | None = None

    @classmethod
    async def resume(cls, path: Path, buffer_bytes: int) -> _PartialFile:
        """Picks up what an earlier run left (hashing it in a thread), to resume from there."""
        if path.is_file():
            hasher = await asyncio.to_thread(_hash_file, path)
            log.info("resuming %s from byte %d", path.name, path.stat().st_size)
            return cls(path, path.stat().st_size, hasher, buffer_bytes)
        return cls(path, 0, hashlib.sha256(), buffer_bytes)

    def open_for_append(self) -> None:
        self._file = self.path.open("ab", buffering=self._buffer_bytes)

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._hasher.update(data)
        self.size += len(data)

    def truncate(self) -> None:
        self.close()
        self.path.write_bytes(b"")
        self.size, self._hasher = 0, hashlib.sha256()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()  # closed even when its last flush fails (a full disk)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def sha256(self) -> str:
        return self._hasher.hexdigest()


async def _model_file(func: Callable[[A], R], arg: A, code: ErrorCode) -> R:
    """Runs a gguf_file function in a thread; its ModelFileError becomes a DownloadError."""
    try:
        return await asyncio.to_thread(func, arg)
    except ModelFileError as exc:
        raise DownloadError(code, str(exc)) from None


def _hub_failure(exc: Exception, not_found: str, doing: str) -> DownloadError:
    """An error of huggingface_hub's in rbee's words. The hub answers 401 as well as 404 for
    what does not exist (it will not say whether a private repository does)."""
    response = exc.response if isinstance(exc, HfHubHTTPError) else None
    if response is not None and response.status_code in (401, 404):
        return DownloadError(ErrorCode.MODEL_NOT_FOUND, not_found)
    first_line = (str(exc) or type(exc).__name__).splitlines()[0]
    return DownloadError(ErrorCode.DOWNLOAD_FAILED, f"{doing} failed: {first_line}")


def _verify_sha256(
    ref: str, actual: str, expected: str | None, source: str, *, catalogued: bool = False
) -> None:
    if expected is None or actual == expected:
        return
    where = "is in the catalog with sha256 " if catalogued else "downloaded with sha256 "
    then = (
        f"; delete it (DELETE /v1/models/{ref}) to download it again"
        if catalogued
        else "; the file was not kept"
    )
    raise DownloadError(
        ErrorCode.DOWNLOAD_FAILED,
        f"Checksum mismatch for {ref}: it {where}{actual}, but {source} is {expected}{then}",
        details={"expected_sha256": expected, "actual_sha256": actual},
    )


def _hash_file(path: Path) -> Any:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256")


def _sha256_of(path: Path) -> str:
    return _hash_file(path).hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _names(files: list[str]) -> str:
    shown = ", ".join(files[:_MAX_FILES_NAMED])
    return shown + (
        f" and {len(files) - _MAX_FILES_NAMED} more" if len(files) > _MAX_FILES_NAMED else ""
    )
