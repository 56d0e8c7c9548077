"""Model provisioning: bundled and local models registered in place, remote ones downloaded.

Every reference ends in the catalog with a local path, a size and a sha256, and only once its
file reads as a whole GGUF (every tensor inside the file). Remote files (`https://`, `hf:`
through hub.py) stream into `<models_dir>/.partial/` (partial_files.py: when a partial file is
kept or removed), resume with `Range` after a dropped connection (http_fetch.py), are retried
with exponential backoff (tenacity) and are moved into place atomically once their size (and
the expected sha256, when known) is verified. A download runs in its own task; any number of
clients follow it through `Download.events()` (download_progress.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
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
from rbee.dataplane.protocol.model_refs import ModelRef, local_filename, parse_model_ref
from rbee.dataplane.protocol.wire import ErrorCode

from .catalog import CatalogEntry, ModelCatalog, utc_now
from .download_progress import Download, DownloadError
from .http_fetch import HTTP_TIMEOUT, DiskFull, Retryable, fetch_attempt
from .hub import resolve_hub_file
from .partial_files import PARTIAL_MAX_AGE_S, PartialFile, hash_file, sweep_partials

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 60.0  # only reached with many more attempts than the default 6
_DOWNLOADED = frozenset({"https", "hf"})  # providers whose files this hive wrote
A = TypeVar("A")
R = TypeVar("R")


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
        sweep_partials(self._partial_dir, self._partial_max_age_s)

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
                download.fail(exc)
            else:
                download.complete(entry)
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
            download.fail(exc)
        except asyncio.CancelledError:
            download.fail(DownloadError(ErrorCode.DOWNLOAD_FAILED, "the download was canceled"))
            raise
        except Exception as exc:  # the subscribers must hear of it, whatever it is
            log.exception("%s: provisioning failed unexpectedly", model.ref)
            download.fail(DownloadError(ErrorCode.DOWNLOAD_FAILED, f"unexpected error: {exc}"))
        else:
            log.info(
                "%s ready at %s (%d bytes, %.1f s)",
                model.ref,
                entry.local_path,
                entry.size_bytes,
                time.monotonic() - started,
            )
            download.complete(entry)
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
                hub_file = await resolve_hub_file(model)
                return await self._download(
                    download,
                    model,
                    hub_file.url,
                    hub_file.headers,
                    (hub_file.sha256, "the hub's LFS sha256"),
                )

    async def _register_in_place(self, model: ModelRef, path: Path) -> CatalogEntry:
        info = await _model_file(read_model_info, path, ErrorCode.DOWNLOAD_FAILED)
        digest = await asyncio.to_thread(_sha256_of, path)
        return CatalogEntry(model.ref, model.provider, path, info.size_bytes, digest, utc_now())

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
        await asyncio.to_thread(sweep_partials, self._partial_dir, self._partial_max_age_s)
        partial = await PartialFile.resume(self._partial_dir / f"{name}.part", self._chunk_bytes)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_s, exp_base=2, max=_MAX_BACKOFF_S),
            retry=retry_if_exception_type(Retryable),
            before_sleep=self._before_sleep(download),
            reraise=True,
        )
        size = 0
        try:
            async with httpx.AsyncClient(
                timeout=HTTP_TIMEOUT, follow_redirects=True, headers=headers
            ) as client:
                async for attempt in retrying:
                    with attempt:
                        size = await fetch_attempt(client, url, partial, download, self._free_bytes)
            _verify_sha256(model.ref, partial.sha256(), *expected)
            await _model_file(read_model_info, partial.path, ErrorCode.DOWNLOAD_FAILED)
        except Retryable as exc:
            # Kept: the next try resumes where this one stopped.
            log.info(
                "%s: keeping %d bytes in %s to resume from", model.ref, partial.size, partial.path
            )
            raise DownloadError(
                ErrorCode.DOWNLOAD_FAILED,
                f"Failed to download model after {self._attempts} attempts: {exc}",
            ) from None
        except DiskFull as exc:
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

    def _free_bytes(self) -> int:
        return shutil.disk_usage(self._partial_dir).free

    def _no_space(self, ref: str, full: DiskFull) -> DownloadError:
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
            download.retrying(attempt, self._attempts, delay_ms, str(error))

        return before_sleep


async def _model_file(func: Callable[[A], R], arg: A, code: ErrorCode) -> R:
    """Runs a gguf_file function in a thread; its ModelFileError becomes a DownloadError."""
    try:
        return await asyncio.to_thread(func, arg)
    except ModelFileError as exc:
        raise DownloadError(code, str(exc)) from None


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


def _sha256_of(path: Path) -> str:
    return hash_file(path).hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())
