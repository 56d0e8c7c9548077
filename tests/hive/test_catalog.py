"""The hive's model catalog (control/hive/catalog.py) on real SQLite files."""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rbee.control.hive.catalog import CatalogEntry, ModelCatalog


def entry(ref: str = "hf:org/repo:tiny.gguf", **changes: object) -> CatalogEntry:
    fields: dict[str, object] = {
        "reference": ref,
        "provider": ref.split(":", 1)[0],
        "local_path": Path("/models") / ref.replace(":", "/").rsplit("/", 1)[-1],
        "size_bytes": 1234,
        "sha256": "ab" * 32,
        "downloaded_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    return CatalogEntry(**(fields | changes))  # type: ignore[arg-type]


def test_round_trip_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "state" / "catalog.db"  # the directory is created
    catalog = ModelCatalog(db)
    first, second = entry("hf:org/repo:b.gguf"), entry("file:/m/a.gguf", provider="file")
    catalog.add(first)
    catalog.add(second)
    catalog.close()

    reopened = ModelCatalog(db)
    assert reopened.get("hf:org/repo:b.gguf") == first
    assert reopened.get("hf:org/missing") is None
    assert reopened.list() == [second, first]  # ordered by reference
    assert first.model_entry().wire() == {
        "reference": "hf:org/repo:b.gguf",
        "provider": "hf",
        "local_path": "/models/b.gguf",
        "size_bytes": 1234,
        "sha256": "ab" * 32,
        "downloaded_at": "2025-01-02T03:04:05+00:00",
    }


def test_add_replaces_the_entry_with_the_same_reference(tmp_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "catalog.db")
    catalog.add(entry())
    newer = entry(size_bytes=99, sha256="cd" * 32, local_path=Path("/elsewhere/tiny.gguf"))
    catalog.add(newer)
    assert catalog.list() == [newer]


def test_remove_returns_what_it_removed(tmp_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "catalog.db")
    catalog.add(entry())
    assert catalog.remove("hf:org/repo:tiny.gguf") == entry()
    assert catalog.remove("hf:org/repo:tiny.gguf") is None
    assert catalog.list() == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_database_is_moved_aside_and_recreated(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "catalog.db"
    if damage == "garbage":
        db.write_bytes(b"this is not a database, just bytes\x00\xff" * 300)
    else:
        catalog = ModelCatalog(db)
        for i in range(40):  # several pages, so a cut lands inside the b-tree
            catalog.add(entry(f"hf:org/repo:{'x' * 1000}{i}.gguf"))
        catalog.close()
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    original = db.read_bytes()

    with caplog.at_level(logging.WARNING, logger="rbee.control.hive.catalog"):
        catalog = ModelCatalog(db)

    assert catalog.list() == []
    catalog.add(entry())
    assert catalog.get("hf:org/repo:tiny.gguf") == entry()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("catalog.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == original
    assert "corrupt" in caplog.text and str(aside[0]) in caplog.text


def test_other_database_errors_are_not_mistaken_for_corruption(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    db.mkdir()  # cannot be opened at all: an error to report, not a file to move aside
    with pytest.raises(sqlite3.OperationalError):
        ModelCatalog(db)
    assert db.is_dir() and list(tmp_path.glob("*.corrupt-*")) == []


def test_concurrent_calls_from_threads(tmp_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "catalog.db")

    def work(n: int) -> None:
        for i in range(20):
            catalog.add(entry(f"hf:org/repo{n}:m{i}.gguf"))
            catalog.get(f"hf:org/repo{n}:m{i}.gguf")
            catalog.list()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(catalog.list()) == 80
