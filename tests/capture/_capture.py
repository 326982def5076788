"""Helpers for the capture tests: a campaign key pair, policies, nginx with WebDAV PUT on 127.0.0.1, and a
recording HTTP(S) server.

:class:`WebDav` runs Debian's nginx (``--with-http_dav_module``) as the current user with config, temp dirs
and logs in a temp dir, on a free port; ``stop()`` kills only the process started here. nginx writes a PUT body
to a temp file and renames it into place when complete, so an interrupted upload leaves nothing behind.
:class:`Recorder` is a server on 127.0.0.1 (TLS with a :class:`~tests._servers.Pki`) that counts connections and
records every request with its headers: the "collector" a hostile Deployment points capture at, or a genuine
store answering like WebDAV.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import grp
import hashlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nacl.bindings import crypto_scalarmult_base

from reconciler.capture.batch import generate_keypair
from reconciler.capture.policy import CapturePolicy, parse_policy
from tests._git_fixtures import free_port, wait_port
from tests._servers import Pki

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Campaign:
    """A data owner's key pair; the private key stays in the test (the 'training side')."""

    def __init__(self) -> None:
        self.private, self.public = generate_keypair()

    @property
    def recipient(self) -> str:
        return base64.b64encode(self.public).decode()

    def section(self, **over: Any) -> dict[str, Any]:
        sec: dict[str, Any] = {
            "enabled": True, "purpose": "retraining test", "campaign": "test-campaign",
            "recipient": self.recipient, "sampleRate": 1.0, "maxBytes": 10 * 1024 * 1024, "retention": "7d",
            "destination": {"url": "http://127.0.0.1:9/closed"},  # nothing listens: batches stay
        }
        sec.update(over)
        return sec

    def policy(self, **over: Any) -> CapturePolicy:
        return parse_policy(self.section(**over))


class WebDav:
    """nginx serving ``/capture/`` with WebDAV PUT/MKCOL into ``root/data``."""

    def __init__(self, root: Path, port: int | None = None, *, pki: Pki | None = None,
                 client_ca: Path | None = None) -> None:
        """``pki``: HTTPS with its server certificate; ``client_ca``: mutual TLS as well (nginx
        ``ssl_verify_client on``: a client certificate that CA signed, else HTTP 400)."""
        self.root = root
        self.data = root / "data"
        self.port = port or free_port()
        self.pki = pki
        self.client_ca = client_ca
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self.port}/capture"

    def _tls(self) -> str:
        if self.pki is None:
            return ""
        tls = f"ssl_certificate {self.pki.cert};\n        ssl_certificate_key {self.pki.key};"
        if self.client_ca is not None:
            tls += f"\n        ssl_client_certificate {self.client_ca};\n        ssl_verify_client on;"
        return tls

    def _config(self) -> Path:
        r = self.root
        for d in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "data/capture", "logs"):
            (r / d).mkdir(parents=True, exist_ok=True)
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getegid()).gr_name};" if os.geteuid() == 0 else ""
        conf = r / "nginx.conf"
        conf.write_text(f"""
daemon off;
{user}
worker_processes 1;
pid {r}/nginx.pid;
error_log {r}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {r}/logs/access.log;
    client_body_temp_path {r}/tmp/body;
    proxy_temp_path {r}/tmp/proxy;
    fastcgi_temp_path {r}/tmp/fastcgi;
    uwsgi_temp_path {r}/tmp/uwsgi;
    scgi_temp_path {r}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port}{" ssl" if self.pki else ""};
        {self._tls()}
        root {self.data};
        location /capture/ {{
            dav_methods PUT MKCOL;
            create_full_put_path on;
            dav_access user:rw;
            client_max_body_size 0;
        }}
    }}
}}
""")
        return conf

    def start(self) -> WebDav:
        conf = self._config()
        self.proc = subprocess.Popen([NGINX, "-e", str(self.root / "logs" / "error.log"), "-p", str(self.root),
                                      "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port, 15)
        return self

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        self.proc = None

    def stored(self, device: str) -> dict[str, bytes]:
        d = self.data / "capture" / device
        if not d.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}

    def __enter__(self) -> WebDav:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Recorder:
    """HTTP(S) on 127.0.0.1: records (method, path, headers) of every request and counts accepted connections.
    Answers like a WebDAV store (HEAD and GET 200 with a stored object, else 404; MKCOL and PUT 201), or with
    ``redirect_to`` a 307 to that base URL (same path) for every request. ``store`` changes what a PUT keeps
    (a faulty store: truncate, flip a byte); ``etag`` adds an ETag of what was kept to the PUT's answer (the
    MD5 hex of a single-part PUT, as S3 answers)."""

    def __init__(self, pki: Pki | None = None, *, redirect_to: str | None = None,
                 store: Any = None, etag: bool = False) -> None:
        self.pki = pki
        self.redirect_to = redirect_to
        self.store = store
        self.etag = etag
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.stored: dict[str, bytes] = {}
        self.connections = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.origin}/capture"

    def start(self) -> Recorder:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = b""
                headers: dict[str, str] = {}
                with rec._lock:
                    rec.requests.append((self.command, self.path, dict(self.headers.items())))
                    if rec.redirect_to is not None:
                        status, headers = 307, {"Location": rec.redirect_to.rstrip("/") + self.path}
                    elif self.command in ("HEAD", "GET"):
                        found = rec.stored.get(self.path)
                        status, headers = (200, {"Content-Length": str(len(found))}) if found is not None else (404, {})
                        if self.command == "GET" and found is not None:
                            answer = found
                    else:
                        if self.command == "PUT":
                            kept = rec.store(body) if rec.store is not None else body
                            rec.stored[self.path] = kept
                            if rec.etag:
                                headers = {"ETag": f'"{hashlib.md5(kept).hexdigest()}"'}
                        status = 201
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                if answer:
                    self.wfile.write(answer)

            do_HEAD = do_PUT = do_MKCOL = do_GET = do_POST = _answer

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                conn, addr = super().get_request()
                with rec._lock:
                    rec.connections += 1  # counted before TLS: a handshake alone is a connection too
                return (ctx.wrap_socket(conn, server_side=True) if ctx else conn), addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                # An uploader that stops reading an answer (a read-back it has seen enough of) resets the
                # connection: no traceback on stderr for that (make test printed one); anything else is printed.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        ctx: ssl.SSLContext | None = None
        if self.pki is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.pki.cert, self.pki.key)
        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def authorizations(self) -> list[str]:
        with self._lock:
            return [h["Authorization"] for _, _, h in self.requests if "Authorization" in h]

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _candidates(data: bytes, windows: bool) -> Iterator[bytes]:
    """32-byte strings a file holds raw (every offset, for small files) or as a base64/hex token."""
    if windows:
        for i in range(max(0, len(data) - 31)):
            yield data[i:i + 32]
    for tok in re.findall(rb"[A-Za-z0-9+/=_-]{40,}", data):
        for dec in (lambda t: base64.b64decode(t + b"=" * (-len(t) % 4), altchars=b"-_" if b"-" in t or b"_" in t else None),
                    binascii.unhexlify):
            try:
                raw = dec(tok)
            except (ValueError, binascii.Error):
                continue
            for i in range(max(0, len(raw) - 31)):
                yield raw[i:i + 32]


def assert_no_key_material(root: Path, campaign: Campaign, window_limit: int = 256 * 1024) -> None:
    """Nothing under ``root`` can open the campaign's batches: the private key appears in no encoding, and no
    32-byte string (every offset of files up to ``window_limit``) has the recipient's public key."""
    for p in (q for q in root.rglob("*") if q.is_file()):
        data = p.read_bytes()
        assert campaign.private not in data, p
        assert base64.b64encode(campaign.private) not in data and campaign.private.hex().encode() not in data, p
        for cand in _candidates(data, len(data) <= window_limit):
            assert crypto_scalarmult_base(cand) != campaign.public, p
