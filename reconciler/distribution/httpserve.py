"""A tiny static file server with HTTP Range support, on 127.0.0.1 by default.

Serves a TUF repository (or any directory) for tests, benchmarks and ``make demo``::

    srv = StaticServer(Path("repo")).start()
    ... srv.url ...          # http://127.0.0.1:<port>
    srv.stop()

It answers GET/HEAD, ``Range: bytes=N-`` / ``bytes=N-M`` with 206, keeps connections alive (HTTP/1.1) and
uses ``sendfile``. ``truncate_after`` (bytes) makes it drop each response after that many body bytes — fault
injection for resumable-download tests; ``drip`` (a :class:`Drip`) makes it send the responses to some paths
one byte at a time — a slow-drip mirror for download-deadline tests. ``requests`` records ``(path, range
header)`` of every request and ``bytes_sent`` counts body bytes.
"""

from __future__ import annotations

import os
import posixpath
import re
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Drip:
    """Send responses to paths containing ``path_part`` one byte every ``every`` seconds: the body, or with
    ``headers`` the status line and headers too."""

    path_part: str
    every: float
    headers: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate sends; without TCP_NODELAY, Nagle + delayed ACK stall each
        # small keep-alive response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def _resolve(self) -> Path | None:
        rel = posixpath.normpath(unquote(urlsplit(self.path).path)).lstrip("/")
        if rel.startswith("..") or "\x00" in rel:
            return None
        path = self.server.root / rel
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        rng = self.headers.get("Range")
        with self.server.lock:
            self.server.requests.append((urlsplit(self.path).path, rng))
        path = self._resolve()
        if path is None:
            self.send_response(HTTPStatus.NOT_FOUND)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            fh = open(path, "rb")  # noqa: SIM115
        except OSError:
            self.send_response(HTTPStatus.FORBIDDEN)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            start, end = 0, size - 1
            status = HTTPStatus.OK
            m = _RANGE.match(rng or "")
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size or start > end:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = HTTPStatus.PARTIAL_CONTENT
            length = max(0, end - start + 1)
            drip = self.server.drip
            if body and drip is not None and drip.path_part in urlsplit(self.path).path:
                self._drip(drip, status, fh, start, end, size, length)
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body or length == 0:
                return
            limit = self.server.truncate_after
            count = length if limit is None else min(length, limit)
            sent = self.connection.sendfile(fh, start, count) if count else 0
            with self.server.lock:
                self.server.bytes_sent += sent
            if count < length:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    def _drip(self, drip: Drip, status: HTTPStatus, fh: BinaryIO, start: int, end: int, size: int,
              length: int) -> None:
        head = [f"HTTP/1.1 {status.value} {status.phrase}", "Content-Type: application/octet-stream",
                "Accept-Ranges: bytes", f"Content-Length: {length}"]
        if status == HTTPStatus.PARTIAL_CONTENT:
            head.append(f"Content-Range: bytes {start}-{end}/{size}")
        fh.seek(start)
        data = fh.read(length)
        raw = ("\r\n".join(head) + "\r\n\r\n").encode()
        if not drip.headers:
            self.connection.sendall(raw)
            raw = b""
        head_len = len(raw)
        raw += data
        self.close_connection = True
        try:
            for i in range(len(raw)):
                self.connection.sendall(raw[i:i + 1])
                if i >= head_len:
                    with self.server.lock:
                        self.server.bytes_sent += 1
                time.sleep(drip.every)
        except OSError:  # the client gave up
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], root: Path) -> None:
        super().__init__(addr, _Handler)
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0
        self.truncate_after: int | None = None
        self.drip: Drip | None = None
        self.connections: set[socket.socket] = set()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (a probe reading headers only, a cut download) is no error worth a
        traceback on stderr; anything else is reported as socketserver does."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


class StaticServer:
    """Serve ``root`` over HTTP on ``host:port`` (port 0: an ephemeral port) in a background thread."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        self._server = _Server((host, port), self.root)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        return self._server.requests

    @property
    def bytes_sent(self) -> int:
        return self._server.bytes_sent

    @property
    def truncate_after(self) -> int | None:
        return self._server.truncate_after

    @truncate_after.setter
    def truncate_after(self, value: int | None) -> None:
        self._server.truncate_after = value

    @property
    def drip(self) -> Drip | None:
        return self._server.drip

    @drip.setter
    def drip(self, value: Drip | None) -> None:
        self._server.drip = value

    def reset_stats(self) -> None:
        with self._server.lock:
            self._server.requests.clear()
            self._server.bytes_sent = 0

    def start(self) -> StaticServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="httpserve", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        # Keep-alive connections would otherwise go on being served by their handler threads.
        with self._server.lock:
            conns = list(self._server.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
