"""The keeper's worker registry (control/keeper/worker_registry.py)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from rbee.control.keeper.worker_registry import RegisteredWorker, WorkerRegistry

SHA = "ab" * 32


def worker(worker_id: str, model_ref: str, state: str = "idle") -> RegisteredWorker:
    return RegisteredWorker(
        worker_id=worker_id,
        node="mac",
        model_ref=model_ref,
        url="http://127.0.0.1:1",
        api_key="k",
        backend="cpu",
        device=0,
        state=state,
        created_at=time.time(),
        last_health_check=time.time(),
    )


def test_a_checksum_in_the_ref_names_the_same_model(registry: WorkerRegistry) -> None:
    """`…gguf#sha256=…` and `…gguf` are one file in the hive's catalog, so one warm worker."""
    ref = "https://models.example/x.gguf"
    registry.record(worker("worker-a", f"{ref}#sha256={SHA}"))
    assert registry.get("worker-a").model_ref == ref  # as the hive lists it
    assert registry.find_warm("mac", ref, max_age_s=60).worker_id == "worker-a"
    assert registry.find_warm("mac", f"{ref}#sha256={SHA}", max_age_s=60) is not None


def test_only_serving_and_recently_checked_workers_are_warm(registry: WorkerRegistry) -> None:
    registry.record(worker("worker-l", "pkg:m", state="loading"))
    assert registry.find_warm("mac", "pkg:m", max_age_s=60) is None
    registry.record(worker("worker-b", "pkg:m", state="busy"))
    assert registry.find_warm("mac", "pkg:m", max_age_s=60).worker_id == "worker-b"
    assert registry.find_warm("mac", "pkg:m", max_age_s=-1) is None  # checked too long ago


def test_every_file_of_the_registry_is_its_owners_alone(tmp_path: Path) -> None:
    """Workers' keys are in the database and, until a checkpoint, in its write-ahead log."""
    umask = os.umask(0o022)  # the usual one: files would be 0644 unless made otherwise
    try:
        registry = WorkerRegistry(tmp_path / "workers.db")
        registry.record(worker("w-1", "pkg:gemma3-270m"))
        registry.mark_healthy("w-1", "idle")
    finally:
        os.umask(umask)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["workers.db", "workers.db-shm", "workers.db-wal"]
    assert all(stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600 for name in files)
    registry.close()
