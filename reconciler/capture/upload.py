"""Destinations for sealed batches: an HTTP(S) server that takes ``PUT`` (WebDAV, S3-style presigned
gateways) or a directory (removable media).

Each batch is one object named by its id under ``<url>/<device>/``; a retry PUTs the same bytes under the same
name, so it never duplicates, and a ``HEAD`` that finds the object with the same length counts as an
acknowledgement (a crash between the server's answer and the local delete). The caller deletes a batch only
after :meth:`put` returned True. Sending is paced to ``max_bytes_per_second``.

The URL comes from the fleet repository, the upload token from the device: :func:`destination_refusal` decides
whether a URL may get the token (its origin pinned in the agent config, https only). ``http.client`` follows no
redirect, so a 3xx answer is an :class:`UploadError` and the token never reaches the redirect's target.
"""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import time
import urllib.parse
from collections.abc import Callable, Collection
from pathlib import Path

from reconciler.core.fsutil import fsync_dir

CHUNK = 64 * 1024


class UploadError(Exception):
    """The destination did not acknowledge (network error, 4xx/5xx): the batch stays and is retried."""


def origin_of(url: str) -> str:
    """``scheme://host:port`` of an http(s) URL as the uploader connects to it: lower case, IPv6 in brackets,
    the default port written out. ValueError for anything else."""
    u = urllib.parse.urlsplit(url.strip())
    scheme = u.scheme.lower()
    if scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    port = u.port or (443 if scheme == "https" else 80)  # u.port raises ValueError for a bad port
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{scheme}://{host}:{port}"


def destination_refusal(url: str, *, token: bool, allowed_origins: Collection[str]) -> str | None:
    """Why the device must not upload to ``url`` (a Deployment's ``destination.url``), or None.

    With an upload token, only an ``https://`` origin listed in ``allowed_origins`` (normalised by
    :func:`origin_of`) gets it. Without a token, a non-empty ``allowed_origins`` still pins; an empty one allows
    any http(s) destination (the batches are sealed; the server sees no credential)."""
    try:
        origin = origin_of(url)
    except ValueError:
        return "capture destination is not an http(s) URL"
    if token and origin.startswith("http://"):
        return (f"capture destination origin {origin} is plain http: the device's upload token "
                "(capture.uploadTokenFile) is only sent over https")
    if not allowed_origins:
        if not token:
            return None
        return (f"capture destination origin {origin} is not pinned: a device with an upload token "
                "(capture.uploadTokenFile) uploads only to the origins in its agent config's capture.allowedOrigins, "
                "and that list is empty")
    if origin not in allowed_origins:
        return (f"capture destination origin {origin} is not in the agent config's capture.allowedOrigins "
                f"({', '.join(sorted(allowed_origins))})")
    return None


class _Pacer:
    def __init__(self, max_bps: int | None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.max_bps = max_bps
        self.sleep = sleep
        self.t0 = time.monotonic()
        self.sent = 0

    def sent_chunk(self, n: int) -> None:
        self.sent += n
        if self.max_bps:
            ahead = self.sent / self.max_bps - (time.monotonic() - self.t0)
            if ahead > 0:
                self.sleep(ahead)


class HttpDestination:
    """``PUT <url>/<device>/<batch file>``; 200/201/204 is an acknowledgement."""

    def __init__(self, url: str, device: str, *, timeout: float = 30.0, max_bytes_per_second: int | None = None,
                 token: str | None = None, ca_file: str | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"capture destination {url!r} is not an http(s) URL")
        self.url = url
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port
        self.base = u.path.rstrip("/") + "/" + urllib.parse.quote(device, safe="")
        self.device = device
        self.timeout = timeout
        self.max_bps = max_bytes_per_second
        self.token = token
        self.ca_file = ca_file
        self._dir_made = False

    def describe(self) -> str:
        return f"{self.url.rstrip('/')}/{self.device}/"

    def _conn(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.ca_file)
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self) -> dict[str, str]:
        h = {"User-Agent": "modelfleet-capture"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def _request(self, method: str, path: str) -> int:
        conn = self._conn()
        try:
            conn.request(method, path, headers=self._headers())
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def _acked(self, name: str, size: int) -> bool:
        conn = self._conn()
        try:
            conn.request("HEAD", f"{self.base}/{name}", headers=self._headers())
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200 and resp.getheader("Content-Length") == str(size)
        finally:
            conn.close()

    def put(self, path: Path) -> bool:
        size = path.stat().st_size
        try:
            if self._acked(path.name, size):
                return True
            if not self._dir_made:  # WebDAV needs the collection; 201/405 (exists) are both fine
                self._request("MKCOL", self.base + "/")
                self._dir_made = True
            conn = self._conn()
            try:
                conn.putrequest("PUT", f"{self.base}/{path.name}", skip_accept_encoding=True)
                for k, v in {**self._headers(), "Content-Length": str(size),
                             "Content-Type": "application/octet-stream"}.items():
                    conn.putheader(k, v)
                conn.endheaders()
                pacer = _Pacer(self.max_bps)
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        conn.send(chunk)
                        pacer.sent_chunk(len(chunk))
                resp = conn.getresponse()
                resp.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            raise UploadError(f"{self.describe()}{path.name}: {exc}") from None
        if resp.status in (200, 201, 204):
            return True
        raise UploadError(f"{self.describe()}{path.name}: HTTP {resp.status} {resp.reason}")


class DirectoryDestination:
    """Copy to ``<directory>/<device>/`` with temp + fsync + rename; an identical file there is an ack."""

    def __init__(self, directory: str | os.PathLike[str], device: str, *,
                 max_bytes_per_second: int | None = None) -> None:
        self.dir = Path(directory) / device
        self.max_bps = max_bytes_per_second

    def describe(self) -> str:
        return f"{self.dir}/"

    def put(self, path: Path) -> bool:
        target = self.dir / path.name
        try:
            size = path.stat().st_size
            if target.exists() and target.stat().st_size == size:
                return True
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{path.name}.tmp"
            pacer = _Pacer(self.max_bps)
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    pacer.sent_chunk(len(chunk))
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
            fsync_dir(self.dir)
        except OSError as exc:
            raise UploadError(f"{self.describe()}{path.name}: {exc.strerror or exc}") from None
        return True


def export_batch(path: Path, out_dir: Path) -> Path:
    """Copy one sealed batch for manual transport (``modelfleet data export``), crash-safe."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    tmp = out_dir / f".{path.name}.tmp"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    fsync_dir(out_dir)
    return target
