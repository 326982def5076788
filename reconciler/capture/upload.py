"""Destinations for sealed batches: an HTTP(S) server that takes ``PUT`` (WebDAV, S3-style presigned
gateways) or a directory (removable media).

Each batch is one object named by its id under ``<url>/<device>/``; a retry PUTs the same bytes under the same
name, so it never duplicates. The caller deletes a batch only after :meth:`put` returned True, and ``put``
returns True only once the destination has shown that the object under that name **is** the batch:

- HTTP: a 2xx answer to the PUT says the server took a body of the batch's length, not that it kept those
  bytes (a faulty store, a proxy or gateway that truncates or re-encodes). So the stored object is checked
  against the SHA-256 computed while sending: from a digest of it in the PUT's answer (``Repr-Digest`` or
  ``Content-Digest`` ``sha-256``, RFC 9530; ``Digest: SHA-256=``, RFC 3230; or an S3-style ``ETag`` that is
  the MD5 of the body), else by reading it back (``GET``, at most its length + 1 bytes, paced like the upload)
  and hashing it. A mismatch is an :class:`UploadError`: the batch stays and is retried.
- There is no ``HEAD`` shortcut: an object already there with the same length proves nothing about its bytes
  (another writer, a corrupted or foreign copy, a server that answers any HEAD), and taking it as an
  acknowledgement deleted the only copy. After a crash between the acknowledgement and the local delete the
  batch is simply sent again under the same name.
- Directory: the copy is written to a temp file, fsynced and renamed; a file already there counts only if its
  SHA-256 is the batch's.

Sending (and reading back) is paced to ``max_bytes_per_second``.

The URL comes from the fleet repository, the upload token from the device: :func:`destination_refusal` decides
whether a URL may get the token (its origin pinned in the agent config, https only). Requests go through the
device's shared pools (:mod:`reconciler.net.pools`: the capture block's proxy, CA files and client certificate;
over https through a proxy the token travels inside the ``CONNECT`` tunnel) and follow no redirect, so a 3xx
answer is an :class:`UploadError` and the token never reaches the redirect's target.

A server that requires a client certificate (mutual TLS) and got none, or refused the one sent (``capture``'s
``clientCertFile``/``clientKeyFile``), is a :class:`ClientCertificateRefused` naming the destination — its TLS
alert or nginx's 400 page (:mod:`reconciler.net.clientcert`) — not a plain upload error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import BinaryIO

import urllib3

from reconciler.core.credentials import CredentialError, Credentials
from reconciler.core.fsutil import fsync_dir
from reconciler.core.reasons import CLIENT_CERTIFICATE_REFUSED
from reconciler.net import clientcert
from reconciler.net.pools import Pools

CHUNK = 64 * 1024
ERROR_BODY_MAX = 64 * 1024  # read of an answer's body the uploader does not use (the connection closes after)
_SHA256_DIGEST = re.compile(r"sha-256\s*=\s*:?([A-Za-z0-9+/]+={0,2}):?", re.IGNORECASE)
_MD5_ETAG = re.compile(r'"([0-9a-f]{32})"')


class UploadError(Exception):
    """The destination did not acknowledge (network error, 4xx/5xx, stored object not the batch): the batch
    stays and is retried. ``reason``: a named reason (``status.capture.problems``), or None."""

    reason: str | None = None


class ClientCertificateRefused(UploadError):
    """The destination requires a client certificate and none is configured, or it refused the one sent."""

    reason = CLIENT_CERTIFICATE_REFUSED


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
    """``PUT <url>/<device>/<batch file>``; acknowledged once the stored object is shown to be the batch."""

    def __init__(self, url: str, device: str, *, timeout: float = 30.0, max_bytes_per_second: int | None = None,
                 token: str | None = None, ca_file: str | None = None, tls: Credentials | None = None) -> None:
        """``tls``: the capture block's proxy, CA files and client certificate (``ca_file`` alone: a CA)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"capture destination {url!r} is not an http(s) URL")
        self.url = url
        self.origin = f"{u.scheme}://{u.netloc}"
        self.base = u.path.rstrip("/") + "/" + urllib.parse.quote(device, safe="")
        self.device = device
        self.timeout = timeout
        self.max_bps = max_bytes_per_second
        self.token = token
        self.tls = tls or Credentials(ca_file=Path(ca_file) if ca_file else None)
        self._pools = Pools(self.tls, retries=False, maxsize=1, block=False)
        self._dir_made = False

    def describe(self) -> str:
        return f"{self.url.rstrip('/')}/{self.device}/"

    def _headers(self) -> dict[str, str]:
        h = {"User-Agent": "modelfleet-capture", "Connection": "close"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def _open(self, method: str, path: str, body: Iterator[bytes] | None = None,
              headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        self.tls.check_client_key()
        # A fresh connection for each request, as before: a server may close after an answer without saying so
        # (Connection: close asked), and a request sent on that connection would fail with nothing to retry it.
        self._pools.clear()
        return self._pools.request(method, self.origin + path, body=body, headers={**self._headers(), **(headers or {})},
                                   redirect=False, retries=False, preload_content=False,
                                   timeout=urllib3.Timeout(self.timeout))

    def _request(self, method: str, path: str) -> int:
        resp = self._open(method, path)
        try:
            self._refused(resp.status, resp.read(ERROR_BODY_MAX))
            return resp.status
        finally:
            resp.release_conn()
            resp.close()

    def _refusal(self, detail: str) -> ClientCertificateRefused:
        return ClientCertificateRefused(clientcert.refusal_message(
            self.describe(), cert_sent=self.tls.client_cert_file is not None, detail=detail))

    def _refused(self, status: int, body: bytes) -> None:
        """ClientCertificateRefused when the answer is the server's refusal of the client certificate."""
        if clientcert.refused_page(status, body):
            raise self._refusal(f"HTTP {status}")

    def put(self, path: Path) -> bool:
        """Upload the batch file and show that the object stored under its name is it: True, or UploadError.
        FileNotFoundError when the batch is gone (purged meanwhile) before anything was sent."""
        with open(path, "rb") as fh:  # held open: a purge during the upload does not cut it short
            return self._send(path.name, fh, os.fstat(fh.fileno()).st_size)

    def put_bytes(self, name: str, data: bytes) -> bool:
        """:meth:`put` of a batch still in memory (``name``: its file name)."""
        return self._send(name, io.BytesIO(data), len(data))

    def _send(self, name: str, fh: BinaryIO, size: int) -> bool:
        target = f"{self.base}/{name}"
        pacer = _Pacer(self.max_bps)
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        shrank: list[int] = []
        try:
            if not self._dir_made:  # WebDAV needs the collection; 201/405 (exists) are both fine
                self._request("MKCOL", self.base + "/")
                self._dir_made = True

            def chunks() -> Iterator[bytes]:
                sent = 0
                while sent < size and (chunk := fh.read(min(CHUNK, size - sent))):
                    sha.update(chunk)
                    md5.update(chunk)
                    sent += len(chunk)
                    yield chunk
                    pacer.sent_chunk(len(chunk))
                if sent != size:
                    shrank.append(sent)
                    raise OSError("the batch file shrank while it was sent")

            resp = self._open("PUT", target, chunks(), {"Content-Length": str(size),
                                                        "Content-Type": "application/octet-stream"})
            try:
                self._refused(resp.status, resp.read(ERROR_BODY_MAX))
            finally:
                resp.release_conn()
                resp.close()
            if shrank:
                raise UploadError(f"{self.describe()}{name}: the batch file shrank while it was sent")
            if resp.status not in (200, 201, 204):
                raise UploadError(f"{self.describe()}{name}: HTTP {resp.status} {resp.reason}")
            if not _digest_matches(resp.headers, sha.digest(), md5.hexdigest()):
                self._read_back(target, name, size, sha.digest(), pacer)
        except (urllib3.exceptions.HTTPError, OSError, ValueError, CredentialError) as exc:  # ValueError: a bad proxy
            if shrank:
                raise UploadError(f"{self.describe()}{name}: the batch file shrank while it was sent") from None
            why = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
            if clientcert.refused_alert(str(why)):  # a TLS alert, on the handshake or the first read (TLS 1.3)
                raise self._refusal(str(why)) from None
            raise UploadError(f"{self.describe()}{name}: {why}") from None
        return True

    def _read_back(self, target: str, name: str, size: int, want: bytes, pacer: _Pacer) -> None:
        """GET the object just stored; UploadError unless its length and SHA-256 are the batch's."""
        resp = self._open("GET", target)
        try:
            if resp.status != 200:
                raise UploadError(f"{self.describe()}{name}: stored, but reading it back answered HTTP "
                                  f"{resp.status} {resp.reason}: not acknowledged")
            h, n = hashlib.sha256(), 0
            while n <= size and (chunk := resp.read(min(CHUNK, size + 1 - n))):
                h.update(chunk)
                n += len(chunk)
                pacer.sent_chunk(len(chunk))
        finally:
            resp.release_conn()
            resp.close()
        if n != size or h.digest() != want:
            got = f"{n} bytes" if n <= size else f"more than {size} bytes"
            raise UploadError(f"{self.describe()}{name}: the object stored under this name is not the batch "
                              f"({got} read back, sha256 {h.hexdigest()[:16]}...; the batch: {size} bytes, "
                              f"sha256 {want.hex()[:16]}...): not acknowledged, kept and retried")


def _digest_matches(headers: urllib3.HTTPHeaderDict, sha256: bytes, md5_hex: str) -> bool:
    """Whether the PUT's answer carries a digest of the stored object that is the batch's."""
    for header in ("Repr-Digest", "Content-Digest", "Digest"):
        for value in headers.getlist(header):
            for m in _SHA256_DIGEST.finditer(value):
                try:
                    if base64.b64decode(m.group(1), validate=True) == sha256:
                        return True
                except (binascii.Error, ValueError):
                    continue
    m = _MD5_ETAG.fullmatch((headers.get("ETag") or "").strip())  # S3: the MD5 of a single-part PUT's body
    return m is not None and m.group(1) == md5_hex


def _same_file(path: Path, fh: BinaryIO, size: int) -> bool:
    """Whether ``path`` holds exactly the ``size`` bytes of ``fh`` (compared by SHA-256; ``fh`` is rewound)."""
    mine, theirs = hashlib.sha256(), hashlib.sha256()
    fh.seek(0)
    while chunk := fh.read(CHUNK):
        mine.update(chunk)
    fh.seek(0)
    n = 0
    with open(path, "rb") as other:
        while chunk := other.read(CHUNK):
            n += len(chunk)
            if n > size:
                return False
            theirs.update(chunk)
    return n == size and mine.digest() == theirs.digest()


class DirectoryDestination:
    """Copy to ``<directory>/<device>/`` with temp + fsync + rename; a byte-identical file there is an ack."""

    def __init__(self, directory: str | os.PathLike[str], device: str, *,
                 max_bytes_per_second: int | None = None) -> None:
        self.dir = Path(directory) / device
        self.max_bps = max_bytes_per_second

    def describe(self) -> str:
        return f"{self.dir}/"

    def put(self, path: Path) -> bool:
        """Copy the batch: True, or UploadError. FileNotFoundError when the batch is gone (purged meanwhile)."""
        with open(path, "rb") as src:
            return self._send(path.name, src, os.fstat(src.fileno()).st_size)

    def put_bytes(self, name: str, data: bytes) -> bool:
        """:meth:`put` of a batch still in memory (``name``: its file name)."""
        return self._send(name, io.BytesIO(data), len(data))

    def _send(self, name: str, src: BinaryIO, size: int) -> bool:
        target = self.dir / name
        try:
            try:
                there = os.stat(target).st_size
            except FileNotFoundError:
                there = -1
            # Already there (a crash after the copy, before the delete): only if it is byte for byte the batch.
            if there == size and _same_file(target, src, size):
                return True
            tmp = self.dir / f".{name}.tmp"
            try:
                dst = open(tmp, "wb")  # noqa: SIM115 - closed below, after its fsync
            except FileNotFoundError:
                self.dir.mkdir(parents=True, exist_ok=True)
                dst = open(tmp, "wb")  # noqa: SIM115
            with dst:
                pacer = _Pacer(self.max_bps) if self.max_bps else None
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if pacer is not None:
                        pacer.sent_chunk(len(chunk))
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
            fsync_dir(self.dir)
        except OSError as exc:
            raise UploadError(f"{self.describe()}{name}: {exc.strerror or exc}") from None
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
