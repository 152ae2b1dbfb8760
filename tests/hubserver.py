"""A stand-in for the Hugging Face Hub on 127.0.0.1, enough for `huggingface_hub` to use it.

Point the client at it with HF_ENDPOINT (or by patching `huggingface_hub.constants`). It serves
model repos from local folders, the way the Hub answers:

    GET  /api/models/{org}/{name}[/revision/{rev}]   {"id", "sha", "siblings"}
    HEAD /{org}/{name}/resolve/{rev}/{file}          X-Repo-Commit, ETag, X-Linked-Etag/-Size (for
                                                     .safetensors files, stored in LFS on the Hub),
                                                     Content-Length, Accept-Ranges
    GET  /{org}/{name}/resolve/{rev}/{file}          the bytes; one `Range: bytes=a-b` or `bytes=a-`
                                                     gives 206 with Content-Range

Errors carry the Hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo),
which is what `huggingface_hub` turns into its exception types. A gated repo wants
`Authorization: Bearer <token>`: none gives 401, a wrong one 403.

Faults, per file name, for downloads only (not header range reads):
    "drop"   send half the body, then close the connection; a resumed request is closed unanswered
    "stall"  send half the body, set `stalled`, then hang until `release` is set (or 30 s)

Every request is logged; `on_download(repo_id, filename)` runs before a whole-file GET is answered.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

STALL_LIMIT = 30.0


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    branches: dict[str, str]  # branch or tag -> commit
    token: str | None = None  # set: gated, this token is needed
    etags: dict[str, str] = field(default_factory=dict)

    def commit(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.branches.values() else None


@dataclass
class Request:
    method: str
    repo_id: str | None
    filename: str | None
    range: str | None

    @property
    def download(self) -> bool:
        """A GET of a whole file, or of its tail (a resumed download); not a header read."""
        return (
            self.method == "GET"
            and self.filename is not None
            and (self.range is None or self.range.endswith("-"))
        )


class HubServer:
    """Start with `with HubServer() as hub:` (or start()/stop()); `hub.url` is the endpoint."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.faults: dict[str, str] = {}
        self.honor_ranges = True  # False: answer every GET with the whole file, as some mirrors do
        self.on_download = None
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.active_downloads = 0
        self.max_active_downloads = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()

    # -- setup ----------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        folder: Path,
        token: str | None = None,
        branches: dict[str, str] | None = None,
    ) -> Repo:
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        commit = hashlib.sha1(repo_id.encode() + b"".join(files.values())).hexdigest()
        repo = Repo(repo_id, files, branches or {"main": commit}, token)
        repo.etags = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        self.repos[repo_id] = repo
        return repo

    def downloads(self, repo_id: str | None = None) -> list[str]:
        """File names of whole-file GETs, in order."""
        with self._lock:
            return [
                r.filename
                for r in self.log
                if r.download and r.range is None and repo_id in (None, r.repo_id)
            ]

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
        self.faults.clear()
        self.on_download = None
        self.max_active_downloads = 0

    # -- lifetime -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="hubserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            conns, workers = list(self._conns), list(self._workers)
        for conn in conns:  # wake handlers blocked on idle keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for worker in workers:
            worker.join(5)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer
    timeout = 20  # an idle keep-alive connection is closed after this

    def setup(self):
        super().setup()
        with self.server_hub._lock:
            self.server_hub._conns.add(self.connection)
            self.server_hub._workers.add(threading.current_thread())

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server_hub._lock:
                self.server_hub._conns.discard(self.connection)
                self.server_hub._workers.discard(threading.current_thread())

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._serve()

    def do_HEAD(self):
        self._serve()

    # -- answers --------------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, **headers) -> None:
        body = json.dumps({"error": message}).encode()
        extra = {"Content-Type": "application/json", "X-Error-Message": message, **headers}
        if code:
            extra["X-Error-Code"] = code
        self._send(status, extra, body)

    def _serve(self) -> None:
        hub = self.server_hub
        path = urlsplit(self.path).path
        m = re.fullmatch(r"/api/models/([^/]+)/([^/]+)(?:/revision/([^/]+))?", path)
        if m:
            with hub._lock:
                hub.log.append(Request(self.command, f"{m[1]}/{m[2]}", None, None))
            return self._api(f"{unquote(m[1])}/{unquote(m[2])}", unquote(m[3] or "main"))
        m = re.fullmatch(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo_id = f"{unquote(m[1])}/{unquote(m[2])}"
            rev, filename = unquote(m[3]), unquote(m[4])
            request = Request(self.command, repo_id, filename, self.headers.get("Range"))
            with hub._lock:
                hub.log.append(request)
            return self._resolve(repo_id, rev, filename, request)
        self._error(404, None, "Not Found")

    def _api(self, repo_id: str, rev: str) -> None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        commit = repo.commit(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        doc = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit,
            "private": False,
            "gated": "manual" if repo.token else False,
            "siblings": [{"rfilename": name} for name in repo.files],
        }
        self._send(200, {"Content-Type": "application/json"}, json.dumps(doc).encode())

    def _resolve(self, repo_id: str, rev: str, filename: str, request: Request) -> None:
        hub = self.server_hub
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        commit = repo.commit(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        if repo.token is not None:
            sent = self.headers.get("Authorization")
            if sent is None:
                return self._error(401, "GatedRepo", "Access to this model is restricted")
            if sent != f"Bearer {repo.token}":
                return self._error(403, "GatedRepo", "Access to this model is restricted")
        data = repo.files.get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit})
        etag = repo.etags[filename]
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if filename.endswith(".safetensors"):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        status, first, last = 200, 0, len(data) - 1
        if request.range is not None and hub.honor_ranges:
            r = re.fullmatch(r"bytes=(\d+)-(\d*)", request.range.strip())
            if r is None or int(r[1]) >= len(data):
                return self._send(416, {"Content-Range": f"bytes */{len(data)}"})
            first, last = int(r[1]), min(int(r[2]) if r[2] else len(data) - 1, len(data) - 1)
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        body = data[first : last + 1]
        headers["Content-Length"] = str(len(body))
        if self.command == "HEAD" or not request.download:
            return self._send(status, headers, body)
        self._download(status, headers, body, request)

    def _download(self, status, headers, body, request: Request) -> None:
        hub = self.server_hub
        fault = hub.faults.get(request.filename)
        if fault == "drop" and request.range is not None:
            self.close_connection = True  # a resumed download: hang up without answering
            return
        if request.range is None and hub.on_download is not None:
            hub.on_download(request.repo_id, request.filename)
        with hub._lock:
            hub.active_downloads += 1
            hub.max_active_downloads = max(hub.max_active_downloads, hub.active_downloads)
        try:
            if fault in ("drop", "stall"):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                if fault == "stall":
                    hub.stalled.set()
                    hub.release.wait(STALL_LIMIT)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send(status, headers, body)
        except OSError:
            self.close_connection = True  # the client went away
        finally:
            with hub._lock:
                hub.active_downloads -= 1
