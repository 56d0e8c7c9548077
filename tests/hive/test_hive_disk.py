"""The hive's disk and memory: a full disk, partial files, checksums, truncated models,
deleting models, and the RAM that workers still loading will take.

DownloadManager and real hive processes against a real loopback HTTP server; the full-disk
cases on a real small filesystem (a tmpfs the test mounts; skipped, saying why, where
mounting is not allowed).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import BIN, events_of, sse_data
from support.hive_process import start_hive
from support.model_server import ModelServer
from support.operators import make_keeper
from support.tinymodel import write_tiny_gguf

from rbee.control.hive.catalog import ModelCatalog
from rbee.control.hive.download_progress import Download, DownloadError
from rbee.control.hive.downloads import DownloadManager
from rbee.control.hive.managed_worker import ManagedState, ManagedWorker, WorkerSpec
from rbee.control.hive.partial_files import PARTIAL_MAX_AGE_S
from rbee.control.hive.preflight import available_ram_mb
from rbee.dataplane.protocol.model_refs import InvalidModelRef, local_filename, parse_model_ref

MB = 1_000_000
DISK_BYTES = 2 << 20


def gguf_of(tiny_gguf: bytes, size: int, seed: int = 0) -> bytes:
    """A readable GGUF of `size` bytes: the tiny model and padding after its tensor data."""
    return tiny_gguf + random.Random(seed).randbytes(size - len(tiny_gguf))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB filesystem of its own (tmpfs), mounted for this test."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    why = None
    if shutil.which("mount") is None or os.geteuid() != 0:
        why = "mounting a tmpfs needs root and mount(8)"
    else:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            why = f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}"
    if why is not None:
        print(f"skipped: {why}")
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=10)


def manager(root: Path, catalog_dir: Path | None = None, **options: Any) -> DownloadManager:
    catalog = ModelCatalog((catalog_dir or root) / "catalog.db")
    return DownloadManager(catalog, root / "models", **options)


def partial_of(dm: DownloadManager, ref: str) -> Path:
    return dm.models_dir / ".partial" / f"{local_filename(ref)}.part"


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


async def failure(dm: DownloadManager, ref: str) -> tuple[DownloadError, dict[str, Any]]:
    download: Download = dm.start(ref)
    events = [event.wire() async for event in download.events()]
    with pytest.raises(DownloadError) as info:
        await download.wait()
    return info.value, events[-1]


# ---------------------------------------------------------------------------- a full disk


def test_a_download_larger_than_the_free_space_is_refused_at_once(
    tmp_path: Path, small_disk: Path, server: ModelServer, tiny_gguf: bytes
) -> None:
    data = gguf_of(tiny_gguf, 3 * MB)
    url = server.add("/big.gguf", data)
    dm = manager(small_disk, catalog_dir=tmp_path)

    error, last = asyncio.run(failure(dm, url))

    assert last["stage"] == "failed" and last["error"]["code"] == "DOWNLOAD_FAILED"
    assert error.code == "DOWNLOAD_FAILED"
    assert error.message.startswith(
        f"Not enough disk space for {url}: it needs 3,000,000 more bytes, {dm.models_dir} has "
    )
    free = error.details["free_bytes"]
    assert f"has {free:,} bytes free" in error.message and 0 < free <= DISK_BYTES
    assert server.count("/big.gguf") == 1  # no retries of a full disk
    assert files_under(small_disk) == [] and dm.catalog.list() == []


def test_a_disk_that_fills_during_the_download_fails_at_once(
    tmp_path: Path, small_disk: Path, server: ModelServer, tiny_gguf: bytes
) -> None:
    # No Content-Length: the size is known only when the body ends, so the write hits ENOSPC.
    url = server.add("/unsized.gguf", gguf_of(tiny_gguf, 3 * MB), length=False)
    dm = manager(small_disk, catalog_dir=tmp_path, chunk_bytes=64 * 1024)

    error, last = asyncio.run(failure(dm, url))

    assert last["error"]["message"] == error.message
    assert error.message.startswith(f"Not enough disk space for {url}: it filled the disk after ")
    assert error.details["free_bytes"] < 64 * 1024
    assert server.count("/unsized.gguf") == 1
    assert files_under(small_disk) == [] and dm.catalog.list() == []


def test_a_hive_reports_a_full_disk_and_keeps_nothing(
    small_disk: Path, server: ModelServer, tiny_gguf: bytes
) -> None:
    url = server.add("/big.gguf", gguf_of(tiny_gguf, 3 * MB))
    hive = start_hive(small_disk / "hive")  # its whole state dir on the small disk
    try:
        with hive.client() as client:
            started = client.post("/v1/models/download", json={"model_ref": url}).json()
            with client.stream(
                "GET", "/v1/models/download/progress", params={"id": started["download_id"]}
            ) as stream:
                events = events_of(sse_data(stream))
            spawn = client.post("/v1/workers/spawn", json={"model_ref": url})
    finally:
        assert hive.stop() == 0
    failed = events[-1]
    assert failed["stage"] == "failed" and failed["error"]["code"] == "DOWNLOAD_FAILED"
    assert failed["error"]["message"].startswith(
        f"Not enough disk space for {url}: it needs 3,000,000 more bytes, "
    )
    assert spawn.status_code == 502
    error = spawn.json()["error"]
    assert error["code"] == "DOWNLOAD_FAILED" and error["details"]["needed_bytes"] == 3 * MB
    assert error["details"]["free_bytes"] < 3 * MB
    assert files_under(small_disk / "hive" / "models") == []


def test_the_free_space_check_counts_what_the_partial_holds(
    tmp_path: Path, small_disk: Path, server: ModelServer, tiny_gguf: bytes
) -> None:
    data = gguf_of(tiny_gguf, 1_500_000)
    url = server.add("/resumed.gguf", data)
    dm = manager(small_disk, catalog_dir=tmp_path)
    partial = partial_of(dm, url)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:1_000_000])  # an earlier run got this far
    (small_disk / "filler").write_bytes(b"\0" * 500_000)  # leaves about 0.6 MB free
    assert 500_000 < shutil.disk_usage(small_disk).free < 1_500_000

    asyncio.run(dm.ensure(url))

    assert server.requests("/resumed.gguf")[-1].range == "bytes=1000000-"
    entry = dm.catalog.get(url)
    assert entry is not None and entry.local_path.read_bytes() == data


# ---------------------------------------------------------------------------- partial files


def test_partials_past_the_age_limit_are_removed_and_not_resumed(
    tmp_path: Path, server: ModelServer, tiny_gguf: bytes
) -> None:
    data = gguf_of(tiny_gguf, 300_000)
    url = server.add("/old.gguf", data)
    first = manager(tmp_path)
    old, fresh = partial_of(first, url), partial_of(first, server.url + "/fresh.gguf")
    abandoned = partial_of(first, server.url + "/abandoned.gguf")
    old.parent.mkdir(parents=True)
    for path in (old, fresh, abandoned):
        path.write_bytes(data[:100_000])
    long_ago = time.time() - PARTIAL_MAX_AGE_S - 3600
    for path in (old, abandoned):
        os.utime(path, (long_ago, long_ago))

    dm = manager(tmp_path)  # a hive starting: abandoned partials go

    assert not abandoned.exists() and not old.exists() and fresh.exists()
    old.write_bytes(data[:100_000])
    os.utime(old, (long_ago, long_ago))
    asyncio.run(dm.ensure(url))  # and before each download
    assert [r.range for r in server.requests("/old.gguf")] == [None]  # from zero
    assert fresh.exists()


# ---------------------------------------------------------------------------- checksums


def test_an_expected_sha256_on_the_url_is_checked(
    tmp_path: Path, server: ModelServer, tiny_gguf: bytes
) -> None:
    data = gguf_of(tiny_gguf, 200_000)
    digest = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"another file").hexdigest()
    good = server.add("/good.gguf", data)
    bad = server.add("/corrupted.gguf", data)
    dm = manager(tmp_path)

    async def main() -> tuple[DownloadError, DownloadError, DownloadError]:
        entry = await dm.ensure(f"{good}#sha256={digest.upper()}")
        assert entry.reference == good and entry.sha256 == digest
        mismatch, _ = await failure(dm, f"{bad}#sha256={wrong}")
        # The good file, catalogued, asked for with another checksum.
        catalogued, _ = await failure(dm, f"{good}#sha256={wrong}")
        with pytest.raises(DownloadError) as info:
            await dm.ensure(f"{good}#sha256={wrong}")
        return mismatch, catalogued, info.value

    mismatch, catalogued, again = asyncio.run(main())
    assert mismatch.code == "DOWNLOAD_FAILED"
    assert mismatch.message == (
        f"Checksum mismatch for {bad}: it downloaded with sha256 {digest}, but the reference's "
        f"#sha256 is {wrong}; the file was not kept"
    )
    assert dm.catalog.get(bad) is None and not partial_of(dm, bad).exists()
    assert not (dm.models_dir / local_filename(bad)).exists()
    assert catalogued.message.startswith(
        f"Checksum mismatch for {good}: it is in the catalog with sha256 {digest}, but the "
        f"reference's #sha256 is {wrong}; delete it"
    )
    assert again.message == catalogued.message
    assert server.count("/good.gguf") == 1


@pytest.mark.parametrize(
    "fragment", ["#sha256=abc", "#md5=" + "0" * 32, "#", "#sha256=" + "g" * 64]
)
def test_a_url_fragment_other_than_a_sha256_is_refused(fragment: str) -> None:
    with pytest.raises(InvalidModelRef, match="#sha256=<64 hex digits>"):
        parse_model_ref("https://example.com/m.gguf" + fragment)


def test_the_sha256_is_kept_apart_from_the_canonical_ref() -> None:
    digest = "AB" * 32
    model = parse_model_ref(f"HTTPS://Example.com:443/m.gguf#sha256={digest}")
    assert model.ref == "https://example.com/m.gguf" and model.sha256 == digest.lower()
    assert model.spelled == f"https://example.com/m.gguf#sha256={digest.lower()}"
    assert parse_model_ref(model.spelled) == model


def test_hf_downloads_are_checked_against_the_hubs_lfs_sha256(
    tmp_path: Path, server: ModelServer, tiny_gguf: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    data = gguf_of(tiny_gguf, 200_000)
    recorded = hashlib.sha256(b"what the hub recorded").hexdigest()
    server.add_hub_file("org/ok", "ok.gguf", data)
    server.add_hub_file("org/bad", "bad.gguf", data, sha256=recorded)
    dm = manager(tmp_path)

    async def main() -> DownloadError:
        await dm.ensure("hf:org/ok:ok.gguf")
        error, _ = await failure(dm, "hf:org/bad:bad.gguf")
        return error

    error = asyncio.run(main())
    assert error.code == "DOWNLOAD_FAILED"
    assert error.message == (
        f"Checksum mismatch for hf:org/bad:bad.gguf: it downloaded with sha256 "
        f"{hashlib.sha256(data).hexdigest()}, but the hub's LFS sha256 is {recorded}; "
        "the file was not kept"
    )
    assert [e.reference for e in dm.catalog.list()] == ["hf:org/ok:ok.gguf"]
    assert files_under(dm.models_dir) == [dm.models_dir / local_filename("hf:org/ok:ok.gguf")]


def test_the_keeper_passes_the_expected_sha256_on(
    tmp_path: Path, server: ModelServer, tiny_model: Path
) -> None:
    """EC2: `rbee infer --model https://…/x.gguf#sha256=HEX` refuses a file with another hash."""
    data = tiny_model.read_bytes()
    digest, wrong = hashlib.sha256(data).hexdigest(), hashlib.sha256(b"x").hexdigest()
    url = server.add("/m/tiny.gguf", data)
    keeper = make_keeper(tmp_path, tiny_model)

    def rbee(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "rbee"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=keeper.env(),
            check=False,
        )

    try:
        bad = rbee("infer", "--model", f"{url}#sha256={wrong}", "--max-tokens", "2", "hi")
        good = rbee("models", "download", "--node", "local", f"{url}#sha256={digest}")
    finally:
        keeper.stop_hive()
    assert bad.returncode == 1
    assert (
        f"Error: Checksum mismatch for {url}: it downloaded with sha256 {digest}, but the "
        f"reference's #sha256 is {wrong}; the file was not kept"
    ) in bad.stderr
    assert keeper.registered() == []
    assert good.returncode == 0, good.stderr
    assert f"{url}#sha256={digest} is on local: " in good.stderr


# ---------------------------------------------------------------------------- truncated models


def test_truncated_models_never_enter_the_catalog(tmp_path: Path, server: ModelServer) -> None:
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) * 6 // 10])
    # Served with an honest Content-Length: the transfer itself succeeds.
    url = server.add("/cut.gguf", whole[: len(whole) * 6 // 10])
    dm = manager(tmp_path)

    async def main() -> list[DownloadError]:
        return [(await failure(dm, ref))[0] for ref in (f"file:{cut}", url)]

    for error in asyncio.run(main()):
        assert error.code == "DOWNLOAD_FAILED"
        assert " is truncated: tensor " in error.message
    assert dm.catalog.list() == []
    assert files_under(dm.models_dir) == []


# ---------------------------------------------------------------------------- deleting


def test_delete_decides_by_the_refs_provider(
    tmp_path: Path, server: ModelServer, tiny_gguf: bytes
) -> None:
    data = gguf_of(tiny_gguf, 200_000)
    url = server.add("/downloaded.gguf", data)
    dm = manager(tmp_path)

    async def main() -> None:
        downloaded = await dm.ensure(url)
        # The same file, registered by path: it lies inside the hive's models dir.
        alias = f"file:{downloaded.local_path}"
        await dm.ensure(alias)
        assert await dm.remove(alias) is not None
        assert downloaded.local_path.read_bytes() == data  # forgotten, not deleted
        assert dm.catalog.get(url) == downloaded
        assert await dm.remove(url) == downloaded
        assert not downloaded.local_path.exists()

    asyncio.run(main())
    assert dm.catalog.list() == []


# ---------------------------------------------------------------------------- memory


def test_a_loading_worker_counts_by_its_estimate(tmp_path: Path) -> None:
    """Until its model is in memory a worker holds little: it counts by its estimate (or what
    it holds, if more); once loaded, by what it holds."""
    estimate = 300 << 20
    worker = ManagedWorker(
        "worker-test",
        WorkerSpec("file:/m.gguf", Path("/m.gguf"), ram_estimate_bytes=estimate),
        tmp_path / "w.log",
        tmp_path / "w.json",
    )
    worker.pid = os.getpid()  # a live process whose RSS stands in for the worker's
    held = psutil.Process().memory_info().rss
    assert held < estimate
    budget_mb = 1000

    assert available_ram_mb(budget_mb, [worker]) == ((budget_mb << 20) - estimate) >> 20
    worker.to(ManagedState.LOADING)
    assert available_ram_mb(budget_mb, [worker]) == ((budget_mb << 20) - estimate) >> 20
    worker.to(ManagedState.IDLE)
    assert abs(available_ram_mb(budget_mb, [worker]) - (((budget_mb << 20) - held) >> 20)) <= 2
    worker.to(ManagedState.DRAINING)
    worker.to(ManagedState.STOPPED)
    assert available_ram_mb(budget_mb, [worker]) == budget_mb
