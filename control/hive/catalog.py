"""The hive's model catalog: which models this node has and where their files are (SQLite)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rbee.dataplane.protocol.hive_api import ModelEntry

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    reference     TEXT PRIMARY KEY,
    provider      TEXT NOT NULL,
    local_path    TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    downloaded_at TEXT NOT NULL
)
"""
_COLUMNS = "reference, provider, local_path, size_bytes, sha256, downloaded_at"
# SQLite's own result codes for a file that is not (or no longer) a database.
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SIDE_FILES = ("-journal", "-wal", "-shm")


@dataclass(frozen=True)
class CatalogEntry:
    """One model on this node. `reference` is the canonical model reference."""

    reference: str
    provider: str
    local_path: Path
    size_bytes: int
    sha256: str
    downloaded_at: datetime  # UTC

    def model_entry(self) -> ModelEntry:
        """This entry as GET /v1/models lists it."""
        return ModelEntry(
            reference=self.reference,
            provider=self.provider,
            local_path=str(self.local_path),
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            downloaded_at=self.downloaded_at.isoformat(timespec="seconds"),
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


class ModelCatalog:
    """The catalog in one SQLite file.

    One connection, shared under a lock: every call is one short statement, so callers on the
    event loop may call it directly, and a single connection keeps the file open exactly once
    (a connection per call would re-read the schema every time for nothing). A database file
    that SQLite cannot read is moved aside and a new, empty catalog is started: the catalog is
    a cache of what lies on disk, and a hive that refuses to start helps nobody.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._lock = threading.Lock()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode not in _CORRUPT_CODES:
                raise
            self._move_aside(exc)
            self._conn = self._open()

    def get(self, reference: str) -> CatalogEntry | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM models WHERE reference = ?", (reference,)
            ).fetchone()
        return _entry(row) if row else None

    def list(self) -> list[CatalogEntry]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM models ORDER BY reference"
            ).fetchall()
        return [_entry(row) for row in rows]

    def add(self, entry: CatalogEntry) -> None:
        """Adds `entry`, or replaces the entry with the same reference."""
        with self._lock:
            self._conn.execute(
                f"INSERT INTO models ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(reference) DO UPDATE SET provider = excluded.provider, "
                "local_path = excluded.local_path, size_bytes = excluded.size_bytes, "
                "sha256 = excluded.sha256, downloaded_at = excluded.downloaded_at",
                (
                    entry.reference,
                    entry.provider,
                    str(entry.local_path),
                    entry.size_bytes,
                    entry.sha256,
                    entry.downloaded_at.astimezone(UTC).isoformat(),
                ),
            )

    def remove(self, reference: str) -> CatalogEntry | None:
        """Removes the entry and returns it, or None when there was none."""
        with self._lock:
            row = self._conn.execute(
                f"DELETE FROM models WHERE reference = ? RETURNING {_COLUMNS}", (reference,)
            ).fetchone()
        return _entry(row) if row else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _open(self) -> sqlite3.Connection:
        # Autocommit: each call is a single statement, atomic on its own.
        conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        try:
            # A truncated file can open and even answer simple reads; quick_check walks the
            # whole file and reports the damage (or raises) before anything trusts it.
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise _IntegrityCheckFailed("; ".join(problems[:3]))
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, exc: sqlite3.DatabaseError) -> None:
        stamp = utc_now().strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{stamp}")
        self.db_path.replace(aside)
        # A leftover journal would be replayed into the new database: it goes along.
        for suffix in _SIDE_FILES:
            side = self.db_path.with_name(self.db_path.name + suffix)
            if side.exists():
                side.replace(aside.with_name(aside.name + suffix))
        log.warning(
            "model catalog %s is corrupt (%s): moved it to %s and started an empty catalog",
            self.db_path,
            exc,
            aside,
        )


class _IntegrityCheckFailed(sqlite3.DatabaseError):
    sqlite_errorcode = sqlite3.SQLITE_CORRUPT


def _entry(row: tuple[Any, ...]) -> CatalogEntry:
    reference, provider, local_path, size_bytes, sha256, downloaded_at = row
    return CatalogEntry(
        reference=reference,
        provider=provider,
        local_path=Path(local_path),
        size_bytes=size_bytes,
        sha256=sha256,
        downloaded_at=datetime.fromisoformat(downloaded_at),
    )
