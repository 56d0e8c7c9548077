"""One resumable HTTP attempt: a GET (ranged when a partial file exists) streamed into the
partial file, with the answer's status, `Content-Range` and length checked and a full disk
told apart from other failures. The download manager retries the attempts."""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable

import httpx

from rbee.dataplane.protocol.wire import ErrorCode

from .download_progress import Download, DownloadError, ProgressReporter
from .partial_files import PartialFile

log = logging.getLogger(__name__)

# A stalled connection counts as dropped after this long without a byte, then resumes.
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(Exception):
    """The download does not fit in the models directory's free space."""

    def __init__(self, needed: int | None, written: int) -> None:
        super().__init__(needed, written)
        self.needed = needed  # bytes still to write, when the server said the size
        self.written = written  # bytes of the file on disk (or buffered) so far


class Retryable(Exception):
    """One attempt failed in a way another attempt may fix (network, 5xx, short body)."""


async def fetch_attempt(
    client: httpx.AsyncClient,
    url: str,
    partial: PartialFile,
    download: Download,
    free_bytes: Callable[[], int],
) -> int:
    """One GET, resuming from the partial file; returns the file's verified size.

    `free_bytes` tells the space left where the partial file is, checked against the size the
    server announces before any byte is written.
    """
    offset = partial.size
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    total: int | None = None
    try:
        try:
            async with client.stream("GET", url, headers=headers) as response:
                total = _begin(response, offset, partial, download.ref)
                if total is not None and total - partial.size > free_bytes():
                    raise DiskFull(total - partial.size, partial.size)
                progress = ProgressReporter(download, total, partial.size)
                # Chunks are written as they arrive (the file buffers chunk_bytes): what
                # was received before a drop is kept, so the next attempt resumes there.
                async for chunk in response.aiter_bytes():
                    partial.write(chunk)
                    progress.report(partial.size)
        finally:
            partial.close()  # flushes: may hit a full disk too
    except httpx.TransportError as exc:
        raise Retryable(str(exc) or type(exc).__name__) from None
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise DiskFull(total - partial.size if total is not None else None, partial.size) from None
    if total is not None and partial.size != total:
        if partial.size > total:
            partial.truncate()
        raise Retryable(f"got {partial.size} of {total} bytes")
    return partial.size


def _begin(response: httpx.Response, offset: int, partial: PartialFile, ref: str) -> int | None:
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
        raise Retryable("the server refused to resume (416); starting again")
    if status in (408, 429) or status >= 500:
        raise Retryable(f"the server answered {status} {response.reason_phrase}")
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != offset:
            partial.truncate()
            raise Retryable("the server resumed at the wrong offset; starting again")
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
