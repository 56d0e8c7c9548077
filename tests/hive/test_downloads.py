"""Model provisioning (control/hive/downloads.py and the download_progress, hub, http_fetch and
partial_files modules it drives) against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest

from support.model_server import ModelServer
from support.tinymodel import write_tiny_gguf

from rbee.control.hive.catalog import ModelCatalog
from rbee.control.hive.download_progress import Download, DownloadError, DownloadState
from rbee.control.hive.downloads import DownloadManager
from rbee.dataplane.plumbing.gguf_file import resolve_model_path
from rbee.dataplane.protocol.hive_api import DownloadProgress
from rbee.dataplane.protocol.model_refs import InvalidModelRef, local_filename

MB = 1_000_000


@pytest.fixture
def model_bytes(tiny_gguf: bytes) -> Any:
    """A readable GGUF of exactly `size` bytes: the tiny model plus deterministic padding."""

    def make(size: int, seed: int = 0) -> bytes:
        assert size >= len(tiny_gguf)
        return tiny_gguf + random.Random(seed).randbytes(size - len(tiny_gguf))

    return make


def manager(tmp_path: Path, **options: Any) -> DownloadManager:
    return DownloadManager(ModelCatalog(tmp_path / "catalog.db"), tmp_path / "models", **options)


async def events_of(download: Download) -> list[dict[str, Any]]:
    return [event.wire() async for event in download.events()]


async def start_and_follow(dm: DownloadManager, ref: str) -> list[dict[str, Any]]:
    return await events_of(dm.start(ref))  # start() needs the running event loop


def assert_downloaded(dm: DownloadManager, ref: str, data: bytes) -> None:
    entry = dm.catalog.get(ref)
    assert entry is not None
    assert entry.local_path == dm.models_dir / local_filename(ref)
    assert entry.local_path.read_bytes() == data
    assert (entry.size_bytes, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert list((dm.models_dir / ".partial").iterdir()) == []


def test_download_streams_progress_then_completes(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    data = model_bytes(2 * MB)
    url = server.add("/models/tiny.gguf", data, bytes_per_s=8 * MB)  # about 0.25 s
    dm = manager(tmp_path)

    async def main() -> list[dict[str, Any]]:
        download = dm.start(url)
        assert download.id.startswith("dl-") and dm.get(download.id) is download
        assert download.state == DownloadState.DOWNLOADING and download.local_path is None
        return await events_of(download)

    events = asyncio.run(main())
    progress, last = events[:-1], events[-1]
    assert len(progress) >= 3 and {e["stage"] for e in progress} == {"downloading"}
    assert all(e["bytes_total"] == len(data) for e in progress)
    done = [e["bytes_downloaded"] for e in progress]
    assert done == sorted(done) and done[0] < len(data)
    assert any(e["speed_mbps"] > 0 for e in progress)
    assert last == {"stage": "complete", "local_path": str(dm.models_dir / local_filename(url))}
    assert_downloaded(dm, url, data)
    assert server.count("/models/tiny.gguf") == 1


def test_a_dropped_connection_resumes_with_range(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    data = model_bytes(1 * MB)
    url = server.add("/tiny.gguf", data, drop_after=300_000)
    dm = manager(tmp_path, backoff_s=0.01)

    events = asyncio.run(start_and_follow(dm, url))

    assert events[-1]["stage"] == "complete"
    assert [r.range for r in server.requests("/tiny.gguf")] == [None, "bytes=300000-"]
    assert_downloaded(dm, url, data)


def test_a_server_that_ignores_range_restarts_from_zero(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    data = model_bytes(1 * MB)
    url = server.add("/tiny.gguf", data, drop_after=300_000, ranges=False)
    dm = manager(tmp_path, backoff_s=0.01)

    events = asyncio.run(start_and_follow(dm, url))

    assert events[-1]["stage"] == "complete"
    assert [r.range for r in server.requests("/tiny.gguf")] == [None, "bytes=300000-"]
    assert_downloaded(dm, url, data)


def test_gives_up_after_six_attempts_with_backoff_keeping_the_partial(
    tmp_path: Path, server: ModelServer, model_bytes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    data = model_bytes(1 * MB)
    url = server.add("/flaky.gguf", data, drop_after=1000, drop_times=100)
    dm = manager(tmp_path)  # the real backoff: 100, 200, 400, 800, 1600 ms

    async def main() -> tuple[list[dict[str, Any]], DownloadError]:
        download = dm.start(url)
        events = await events_of(download)
        with pytest.raises(DownloadError) as info:
            await download.wait()
        return events, info.value

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rbee.control.hive.downloads"):
        events, error = asyncio.run(main())
    elapsed = time.monotonic() - started

    assert server.count("/flaky.gguf") == 6
    # Each attempt resumed where the last one was cut off.
    assert [r.range for r in server.requests("/flaky.gguf")] == [
        None,
        *(f"bytes={1000 * n}-" for n in range(1, 6)),
    ]
    assert elapsed >= 3.0
    assert events[-1]["stage"] == "failed"
    assert events[-1]["error"]["code"] == "DOWNLOAD_FAILED"
    message = events[-1]["error"]["message"]
    assert message.startswith("Failed to download model after 6 attempts: ")
    assert "peer closed connection" in message
    assert (error.code, error.message) == ("DOWNLOAD_FAILED", message)
    assert "Retrying download (attempt 2/6)... delay 100ms" in caplog.text
    assert "Retrying download (attempt 6/6)... delay 1600ms" in caplog.text
    retrying = [e for e in events if e["stage"] == "retrying"]
    assert retrying and all(e["attempts"] == 6 for e in retrying)
    assert dm.catalog.list() == []
    # The partial stays, so the next try resumes instead of starting from zero.
    [partial] = (dm.models_dir / ".partial").iterdir()
    assert partial.stat().st_size == 6000
    server.add("/flaky.gguf", data)  # the server behaves again
    asyncio.run(dm.ensure(url))
    assert server.requests("/flaky.gguf")[-1].range == "bytes=6000-"
    assert_downloaded(dm, url, data)


def test_a_server_error_is_retried_then_reported(tmp_path: Path, server: ModelServer) -> None:
    url = server.add("/broken.gguf", b"", status=500)
    dm = manager(tmp_path, backoff_s=0.001)

    with pytest.raises(DownloadError) as info:
        asyncio.run(dm.ensure(url))

    assert info.value.code == "DOWNLOAD_FAILED"
    assert info.value.message == (
        "Failed to download model after 6 attempts: the server answered 500 Internal Server Error"
    )
    assert server.count("/broken.gguf") == 6


def test_not_found_is_model_not_found_without_retrying(tmp_path: Path, server: ModelServer) -> None:
    url = server.url + "/missing.gguf"
    dm = manager(tmp_path)

    events = asyncio.run(start_and_follow(dm, url))

    assert events[-1]["stage"] == "failed"
    assert events[-1]["error"]["code"] == "MODEL_NOT_FOUND"
    assert server.count("/missing.gguf") == 1


def test_a_download_that_is_not_a_gguf_file_fails(tmp_path: Path, server: ModelServer) -> None:
    url = server.add("/login.gguf", b"<html>please sign in</html>")
    dm = manager(tmp_path)

    with pytest.raises(DownloadError) as info:
        asyncio.run(dm.ensure(url))

    assert info.value.code == "DOWNLOAD_FAILED" and "not a readable GGUF" in info.value.message
    assert dm.catalog.list() == [] and list((dm.models_dir / ".partial").iterdir()) == []


def test_duplicate_requests_share_one_transfer(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    data = model_bytes(1 * MB)
    url = server.add("/m/tiny.gguf", data, bytes_per_s=4 * MB)
    dm = manager(tmp_path)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        first = dm.start(url)
        await asyncio.sleep(0.05)
        second = dm.start(url.replace("http://", "HTTP://"))  # the same model, spelt differently
        assert second is first
        return await asyncio.gather(events_of(first), events_of(second))

    one, two = asyncio.run(main())
    assert one[-1] == two[-1] and one[-1]["stage"] == "complete"
    assert server.count("/m/tiny.gguf") == 1
    assert_downloaded(dm, url, data)


def test_a_cached_model_is_complete_at_once(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    data = model_bytes(300_000)
    url = server.add("/tiny.gguf", data)
    asyncio.run(manager(tmp_path).ensure(url))
    dm = manager(tmp_path)  # a restarted hive: same catalog, same models dir

    async def main() -> Download:
        download = dm.start(url)
        assert download.state == DownloadState.COMPLETE
        assert await events_of(download) == [
            {"stage": "complete", "local_path": str(download.local_path)}
        ]
        assert (await dm.ensure(url)).local_path == download.local_path
        return download

    download = asyncio.run(main())
    assert server.count("/tiny.gguf") == 1
    # A catalog entry whose file has gone is provisioned again.
    assert download.local_path is not None
    download.local_path.unlink()
    asyncio.run(dm.ensure(url))
    assert server.count("/tiny.gguf") == 2
    assert_downloaded(dm, url, data)


def test_a_canceled_download_resumes_after_a_restart(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    data = model_bytes(1 * MB)
    url = server.add("/slow.gguf", data, bytes_per_s=2 * MB)

    async def interrupted() -> Download:
        dm = manager(tmp_path)
        download = dm.start(url)
        async for event in download.events():
            if isinstance(event, DownloadProgress) and event.bytes_downloaded >= 100_000:
                break
        await dm.aclose()  # the hive stops mid-download
        return download

    download = asyncio.run(interrupted())
    assert download.state == DownloadState.FAILED
    partial = tmp_path / "models" / ".partial" / f"{local_filename(url)}.part"
    kept = partial.stat().st_size
    assert 100_000 <= kept < len(data)

    dm = manager(tmp_path)
    asyncio.run(dm.ensure(url))
    assert server.requests("/slow.gguf")[-1].range == f"bytes={kept}-"
    assert_downloaded(dm, url, data)  # the sha256 covers the bytes of both runs


def test_a_leftover_partial_longer_than_the_file_starts_again(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    data = model_bytes(200_000)
    url = server.add("/tiny.gguf", data)
    partial = tmp_path / "models" / ".partial" / f"{local_filename(url)}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 250_000)  # from an older, larger file at the same URL
    dm = manager(tmp_path, backoff_s=0.001)

    asyncio.run(dm.ensure(url))

    assert [r.range for r in server.requests("/tiny.gguf")] == ["bytes=250000-", None]
    assert_downloaded(dm, url, data)


def test_hf_downloads_through_hf_endpoint(
    tmp_path: Path, server: ModelServer, model_bytes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = model_bytes(500_000)
    # huggingface_hub is imported already, so this also shows the endpoint is read at run time.
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    blob = server.add_hub_file("org/tiny-GGUF", "quant/tiny.Q8_0.gguf", data, drop_after=200_000)
    dm = manager(tmp_path, backoff_s=0.01)

    entry = asyncio.run(dm.ensure("hf:org/tiny-GGUF:quant/tiny.Q8_0.gguf"))

    assert entry.provider == "hf"
    assert_downloaded(dm, "hf:org/tiny-GGUF:quant/tiny.Q8_0.gguf", data)
    # The hub's resolve path redirects to the blob, as the real hub does; the resume works
    # through the redirect. One HEAD first asked for the file's LFS sha256.
    resolve = server.requests("/org/tiny-GGUF/resolve/main/quant/tiny.Q8_0.gguf")
    assert [r.method for r in resolve] == ["HEAD", "GET", "GET"]
    assert [r.range for r in server.requests(blob)] == [None, "bytes=200000-"]
    assert "hf_hub" in server.requests(blob)[0].headers.get("user-agent", "")


def test_hf_without_file_picks_the_only_gguf(
    tmp_path: Path, server: ModelServer, model_bytes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    data = model_bytes(200_000)
    server.add_hub_file("org/one", "README.md", b"# a model")
    server.add_hub_file("org/one", "config/params.json", b"{}")
    server.add_hub_file("org/one", "weights/one.Q4_K_M.gguf", data)
    server.add_hub_file("org/two", "a.Q4.gguf", data)
    server.add_hub_file("org/two", "b.Q8.gguf", data)
    server.add_hub_file("org/none", "README.md", b"# nothing")
    dm = manager(tmp_path)

    async def failure(ref: str) -> DownloadError:
        with pytest.raises(DownloadError) as info:
            await dm.ensure(ref)
        return info.value

    async def main() -> list[DownloadError]:
        entry = await dm.ensure("hf:org/one")
        assert entry.reference == "hf:org/one"
        return [await failure(ref) for ref in ("hf:org/two", "hf:org/none", "hf:org/absent")]

    several, none, absent = asyncio.run(main())
    assert_downloaded(dm, "hf:org/one", data)
    assert server.count("/api/models/org/one/tree/main") == 1
    assert several.code == "INVALID_REQUEST"
    assert "a.Q4.gguf" in several.message and "b.Q8.gguf" in several.message
    assert none.code == "MODEL_NOT_FOUND" and "README.md" in none.message
    assert absent.code == "MODEL_NOT_FOUND" and "hf:org/absent" in absent.message


def test_local_files_are_registered_in_place(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    model = write_tiny_gguf(tmp_path / "mine" / "tiny.gguf")
    (tmp_path / "mine" / "broken.gguf").write_bytes(b"GGUF but not really")
    dm = manager(tmp_path)

    async def main() -> list[DownloadError]:
        entry = await dm.ensure(f"file:{model}")
        assert entry.local_path == model and entry.provider == "file"
        assert entry.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
        assert entry.size_bytes == model.stat().st_size
        errors = []
        for ref in (f"file:{tmp_path}/mine/missing.gguf", f"file:{tmp_path}/mine/broken.gguf"):
            with pytest.raises(DownloadError) as info:
                await dm.ensure(ref)
            errors.append(info.value)
        return errors

    missing, broken = asyncio.run(main())
    assert missing.code == "MODEL_NOT_FOUND" and "no such file" in missing.message
    assert broken.code == "DOWNLOAD_FAILED" and "not a readable GGUF" in broken.message
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").glob("*.gguf"))


def test_remove_deletes_downloads_but_never_local_files(
    tmp_path: Path, server: ModelServer, model_bytes: Any
) -> None:
    url = server.add("/tiny.gguf", model_bytes(200_000))
    local = write_tiny_gguf(tmp_path / "mine.gguf")
    dm = manager(tmp_path)

    async def main() -> None:
        downloaded = await dm.ensure(url)
        await dm.ensure(f"file:{local}")
        assert await dm.remove(url) == downloaded
        assert not downloaded.local_path.exists()
        assert (await dm.remove(f"file:{local}")) is not None
        assert local.is_file()
        assert await dm.remove(url) is None
        with pytest.raises(InvalidModelRef):
            await dm.remove("file:/etc/../x.gguf")
        with pytest.raises(InvalidModelRef):
            dm.start("ftp://example.com/x.gguf")

    asyncio.run(main())
    assert dm.catalog.list() == []


@pytest.mark.bundled
def test_the_bundled_model_is_registered_in_place(tmp_path: Path) -> None:
    dm = manager(tmp_path)
    entry = asyncio.run(dm.ensure("pkg:gemma3-270m"))
    path = resolve_model_path("pkg:gemma3-270m")
    assert (entry.local_path, entry.provider, entry.size_bytes) == (
        path,
        "pkg",
        path.stat().st_size,
    )
    assert len(entry.sha256) == 64
    asyncio.run(dm.remove("pkg:gemma3-270m"))
    assert path.is_file()
