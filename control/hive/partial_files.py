"""Partial downloads: the `.part` files in `<models_dir>/.partial/`, resumed and swept.

One rule (applied by the download manager): a `.part` is kept after a failure that another try
may get past (network, server errors, a canceled download, a stopped hive), so the next try
resumes; it is removed when the failure says its bytes cannot be used or cannot fit (404, not
a GGUF, a sha256 mismatch, a full disk), and when it is older than PARTIAL_MAX_AGE_S (swept at
start and before every download).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _hashlib import HASH

log = logging.getLogger(__name__)

# Partial files not written to for this long are removed, never resumed: the server's file may
# have changed since, and an abandoned download should not hold disk space forever.
PARTIAL_MAX_AGE_S = 7 * 24 * 3600.0


class PartialFile:
    """The `.part` file and the sha256 of exactly the bytes it holds."""

    def __init__(self, path: Path, size: int, hasher: HASH, buffer_bytes: int) -> None:
        self.path = path
        self.size = size
        self._hasher = hasher
        self._buffer_bytes = buffer_bytes
        self._file: IO[bytes] | None = None

    @classmethod
    async def resume(cls, path: Path, buffer_bytes: int) -> PartialFile:
        """Picks up what an earlier run left (hashing it in a thread), to resume from there."""
        if path.is_file():
            hasher = await asyncio.to_thread(hash_file, path)
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


def sweep_partials(partial_dir: Path, max_age_s: float) -> None:
    """Removes partial files not written to for `max_age_s` (see the module docstring)."""
    if not partial_dir.is_dir():
        return
    oldest = time.time() - max_age_s
    for path in partial_dir.glob("*.part"):
        try:
            if path.stat().st_mtime < oldest:
                path.unlink()
                log.info(
                    "removed %s: a partial download untouched for %.0f days",
                    path,
                    max_age_s / 86400,
                )
        except FileNotFoundError:
            pass


def hash_file(path: Path) -> HASH:
    """A sha256 hasher fed with the whole file, to go on feeding or to read the digest of."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256")
