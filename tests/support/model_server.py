"""A loopback HTTP server that stands in for the internet in download tests.

It serves byte blobs at paths, honours `Range` (206 + Content-Range), can misbehave on
purpose (drop the connection after N bytes for the first K requests, answer a fixed status,
throttle), and answers the Hugging Face hub's paths so `HF_ENDPOINT` can point at it:

    with ModelServer() as server:
        url = server.add("/m/tiny.gguf", data, drop_after=1000)
        server.add_hub_file("org/repo", "tiny.gguf", data)
        os.environ["HF_ENDPOINT"] = server.url
        ...
        assert server.count("/m/tiny.gguf") == 2
        assert server.requests("/m/tiny.gguf")[1].range == "bytes=1000-"

Every request is recorded (method, path, Range header) so tests can assert "downloaded once"
and "resumed from byte N".
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

_HUB_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)")
# huggingface_hub 2.x HfApi.list_repo_files → list_repo_tree:
# GET {endpoint}/api/models/{repo_id}/tree/{revision}?recursive=True&expand=False
_HUB_TREE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<revision>[^/]+)")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_WRITE_PIECE = 16 * 1024


@dataclass
class Blob:
    """What one path serves, and how it misbehaves."""

    data: bytes
    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_times: int = 1  # ...on this many requests, then serve normally
    status: int | None = None  # answer every request with this status (and no body)
    bytes_per_s: int | None = None  # throttle the body
    ranges: bool = True  # honour Range; False answers 200 with the whole body, as some do
    length: bool = True  # send Content-Length; False ends the body by closing the connection
    served: int = 0  # requests answered so far


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    range: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _HubRepo:
    files: dict[str, str] = field(default_factory=dict)  # file in repo → blob path
    sha256: dict[str, str] = field(default_factory=dict)  # file in repo → its LFS sha256
    revisions: set[str] = field(default_factory=set)


class ModelServer:
    """A threaded loopback HTTP server; use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._blobs: dict[str, Blob] = {}
        self._hub: dict[str, _HubRepo] = {}
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:41234 (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        return f"http://{self._host}:{self._httpd.server_port}"

    def add(self, path: str, data: bytes, **behaviour: Any) -> str:
        """Serves `data` at `path` (see Blob for `behaviour`) and returns its full URL."""
        with self._lock:
            self._blobs[path] = Blob(data, **behaviour)
        return self.url + path

    def add_hub_file(
        self,
        repo_id: str,
        filename: str,
        data: bytes,
        *,
        revision: str = "main",
        sha256: str | None = None,
        **behaviour: Any,
    ) -> str:
        """Puts a file in a hub repo and returns the path its bytes are served from.

        Like the real hub for LFS files, `/{repo}/resolve/{revision}/{file}` answers 302 to a
        content-addressed blob path on another origin (the CDN; here `localhost` rather than
        127.0.0.1), carrying the file's LFS sha256 in `X-Linked-Etag`: `sha256` overrides it
        (a hub whose record and bytes disagree). `behaviour` applies to the blob path.
        """
        digest = hashlib.sha256(data).hexdigest()
        blob_path = f"/cdn-lfs/{digest}/{filename.rsplit('/', 1)[-1]}"
        self.add(blob_path, data, **behaviour)
        with self._lock:
            repo = self._hub.setdefault(repo_id, _HubRepo())
            repo.files[filename] = blob_path
            repo.sha256[filename] = sha256 or digest
            repo.revisions.add(revision)
        return blob_path

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def count(self, path: str) -> int:
        return len(self.requests(path))

    def start(self) -> ModelServer:
        self._httpd = ThreadingHTTPServer((self._host, 0), _handler_for(self))
        self._httpd.daemon_threads = True
        # A short poll interval: stop() waits up to one interval for the serving loop.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="model-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends throttled bodies still being written
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # The request handler calls these.

    def _record(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    handler.command,
                    path,
                    handler.headers.get("Range"),
                    dict(handler.headers),
                )
            )

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(handler.path).path)
        self._record(handler, path)
        if match := _HUB_RESOLVE.fullmatch(path):
            self._hub_resolve(handler, match["repo"], match["revision"], match["file"])
        elif match := _HUB_TREE.fullmatch(path):
            self._hub_tree(handler, match["repo"], match["revision"])
        else:
            self._serve_blob(handler, path)

    def _hub_resolve(
        self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str, filename: str
    ) -> None:
        repo = self._hub_repo(handler, repo_id, revision)
        if repo is None:
            return
        blob_path = repo.files.get(filename)
        if blob_path is None:
            _send_status(handler, 404, {"X-Error-Code": "EntryNotFound"})
            return
        cdn = f"http://localhost:{self.url.rsplit(':', 1)[1]}"
        _send_status(
            handler,
            302,
            {
                "Location": cdn + blob_path,
                "X-Linked-Etag": f'"{repo.sha256[filename]}"',
                "X-Linked-Size": str(len(self._blobs[blob_path].data)),
                "X-Repo-Commit": "0" * 40,
            },
        )

    def _hub_tree(self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str) -> None:
        repo = self._hub_repo(handler, repo_id, revision)
        if repo is None:
            return
        entries: dict[str, dict[str, Any]] = {}
        for name, blob_path in sorted(repo.files.items()):
            parts = name.split("/")
            for depth in range(1, len(parts)):  # the folders on the way, as the hub lists them
                folder = "/".join(parts[:depth])
                entries[folder] = {"type": "directory", "oid": "0" * 40, "path": folder}
            data = self._blobs[blob_path].data
            entries[name] = {
                "type": "file",
                "oid": hashlib.sha1(data).hexdigest(),
                "size": len(data),
                "path": name,
                "lfs": {"oid": repo.sha256[name], "size": len(data), "pointerSize": 134},
            }
        body = json.dumps(list(entries.values())).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _hub_repo(
        self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str
    ) -> _HubRepo | None:
        with self._lock:
            repo = self._hub.get(repo_id)
        if repo is None:
            _send_status(handler, 404, {"X-Error-Code": "RepoNotFound"})
        elif revision not in repo.revisions:
            _send_status(handler, 404, {"X-Error-Code": "RevisionNotFound"})
            repo = None
        return repo

    def _serve_blob(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        with self._lock:
            blob = self._blobs.get(path)
            if blob is not None:
                blob.served += 1
                drop = blob.drop_after if blob.served <= blob.drop_times else None
        if blob is None:
            _send_status(handler, 404)
            return
        if blob.status is not None:
            _send_status(handler, blob.status)
            return
        size = len(blob.data)
        start, end = 0, size - 1
        requested = _RANGE.fullmatch(handler.headers.get("Range", ""))
        if requested and blob.ranges:
            start = int(requested[1])
            end = min(int(requested[2]), size - 1) if requested[2] else size - 1
            if start >= size or start > end:
                _send_status(handler, 416, {"Content-Range": f"bytes */{size}"})
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        if blob.length:
            handler.send_header("Content-Length", str(end - start + 1))
        else:
            handler.close_connection = True
        handler.send_header("Accept-Ranges", "bytes" if blob.ranges else "none")
        handler.end_headers()
        if handler.command != "HEAD":
            body = blob.data[start : end + 1]
            self._write_body(handler, body if drop is None else body[:drop], blob.bytes_per_s)
        if drop is not None:
            handler.close_connection = True  # the client sees the body end early

    def _write_body(
        self, handler: BaseHTTPRequestHandler, body: bytes, bytes_per_s: int | None
    ) -> None:
        piece = _WRITE_PIECE if bytes_per_s is None else max(1, bytes_per_s // 20)
        started = time.monotonic()
        try:
            for offset in range(0, len(body), piece):
                if self._stopping.is_set():
                    handler.close_connection = True
                    return
                handler.wfile.write(body[offset : offset + piece])
                if bytes_per_s is not None:
                    ahead = started + (offset + piece) / bytes_per_s - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client went away; nothing to tell it


def _send_status(
    handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _handler_for(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and Content-Length, as real servers do

        def do_GET(self) -> None:
            server._answer(self)

        def do_HEAD(self) -> None:
            server._answer(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded, not printed

    return Handler
