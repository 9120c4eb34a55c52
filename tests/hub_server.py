"""A tiny loopback HTTP server that answers like the Hugging Face Hub for file downloads.

It serves two kinds of URL on 127.0.0.1 (a random free port):
  /{owner}/{repo}/resolve/{revision}/{filename}   Hub-style, for hf_hub_download via HF_ENDPOINT
  /files/{name}                                   plain file URLs, for flowcli's own downloader

What huggingface_hub (2.x, `get_hf_file_metadata` / `http_get`) reads from a HEAD or GET on /resolve:
  X-Repo-Commit   the commit the revision resolves to (required, else FileMetadataError)
  X-Linked-Etag   the LFS sha256, preferred over ETag; used as the blob name in the cache
  X-Linked-Size   the file size, preferred over Content-Length
  Location        only on redirects; this server answers 200 directly, so the request URL is the location
  Range           honoured on GET (206 + Content-Range): http_get resumes an interrupted transfer with it
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound), which hf_raise_for_status maps
to RepositoryNotFoundError, RevisionNotFoundError and RemoteEntryNotFoundError.
No /api endpoint is needed: hf_hub_download into the cache folder only makes the HEAD and the GET.

Fault modes, per hosted file:
  corrupt=True        the body differs from the advertised sha256 (same length, flipped bytes)
  interrupt=k         the next k GETs send the full Content-Length, then close after half the bytes
                      (interrupt=-1: every GET)
`hub.redirects[name] = url` makes /files/{name} answer 302 to `url`.
Every request is logged in `server.requests` (method, path, Range header) so tests can count them.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class HostedFile:
    data: bytes
    corrupt: bool = False
    interrupt: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def body(self) -> bytes:
        if not self.corrupt:
            return self.data
        flipped = bytearray(self.data)
        for i in range(0, len(flipped), max(1, len(flipped) // 16)):
            flipped[i] ^= 0xFF
        return bytes(flipped)


@dataclass
class LoggedRequest:
    method: str
    path: str
    range: str | None


def commit_for(repo_id: str, revision: str) -> str:
    """A stable fake 40-hex commit hash for a repo revision."""
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.url` is the endpoint (http://127.0.0.1:PORT)."""

    handler_class: type | None = None  # request handler base (default _HubHandler); subclasses extend it

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, HostedFile]] = {}
        self.plain: dict[str, HostedFile] = {}
        self.redirects: dict[str, str] = {}  # /files/{name} -> Location (a 302)
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- content -------------------------------------------------------------------------------

    def add_repo_file(self, repo_id: str, filename: str, data: bytes) -> HostedFile:
        hosted = HostedFile(data)
        self.repos.setdefault(repo_id, {})[filename] = hosted
        return hosted

    def add_plain_file(self, name: str, data: bytes) -> HostedFile:
        hosted = HostedFile(data)
        self.plain[name] = hosted
        return hosted

    def plain_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    def reset(self) -> None:
        with self._lock:
            self.repos.clear()
            self.plain.clear()
            self.redirects.clear()
            self.requests.clear()

    def count(self, method: str, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and path_contains in r.path)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        server = self

        class Handler(self.handler_class or _HubHandler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _log(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append(LoggedRequest(method, path, range_header))


class _HubHandler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive and Range, as clients expect from the Hub
    timeout = 10  # idle keep-alive connections end instead of holding a thread forever

    def log_message(self, format, *args) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub._log(self.command, path, self.headers.get("Range"))
        if path.startswith("/files/") and path[len("/files/") :] in self.hub.redirects:
            self.send_response(302)
            self.send_header("Location", self.hub.redirects[path[len("/files/") :]])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/files/"):
            hosted = self.hub.plain.get(path[len("/files/") :])
            if hosted is None:
                return self._error(404, "EntryNotFound", "no such file")
            return self._send_file(hosted, send_body, extra={"ETag": f'"{hosted.sha256}"'})

        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, None, "not found")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        files = self.hub.repos.get(repo_id)
        if files is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        commit = commit_for(repo_id, "main")
        if revision not in ("main", commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id", commit=None)
        hosted = files.get(filename)
        if hosted is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=commit)
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hosted.sha256}"',
            "X-Linked-Etag": f'"{hosted.sha256}"',
            "X-Linked-Size": str(len(hosted.data)),
        }
        self._send_file(hosted, send_body, extra=headers)

    def _send_file(self, hosted: HostedFile, send_body: bool, extra: dict[str, str]) -> None:
        body = hosted.body()
        start, status = 0, 200
        range_header = self.headers.get("Range")
        if send_body and range_header and range_header.startswith("bytes="):
            first = range_header[len("bytes=") :].split("-", 1)[0]
            start = int(first or 0)
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        part = body[start:]
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(part)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if send_body and hosted.interrupt:
            if hosted.interrupt > 0:
                hosted.interrupt -= 1
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.end_headers()
        if send_body:
            self.wfile.write(part)

    def _error(self, code: int, error_code: str | None, message: str, commit: str | None = None) -> None:
        body = message.encode()
        self.send_response(code)
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
