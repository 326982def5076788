"""How bytes come off the wire for the TUF client: ``Range`` resumes and a deadline on every whole transfer.

:class:`RangeFetcher` is the urllib3 fetcher ngclient reads metadata with and :class:`~.tufclient.TufClient`
streams targets through. Each request has a :class:`Deadline` of ``timeout + expected length / min_rate``
(``tuf.timeout`` and ``tuf.minBytesPerSecond``): one reaper thread shuts down the reading side of a request's
socket when its deadline passes, so a mirror that drips a byte every few seconds ends in ``SlowRetrieval``
instead of holding a refresh for days (docs/security.md, "Download deadlines").
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import urllib3
import urllib3.connection
from tuf.api import exceptions as tufexc
from tuf.ngclient import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from reconciler.core.credentials import Credentials
from reconciler.core.proxy import ProxyURLError
from reconciler.core.redact import redact
from reconciler.net import clientcert
from reconciler.net.pools import Pools

_CHUNK = 1 << 20

#: Slowest transfer a download may average (bytes/s) before its deadline cuts it (``tuf.minBytesPerSecond``).
DEFAULT_MIN_RATE = 4096

class Deadline:
    """The time one request may take, whole: ``timeout`` plus its expected length at ``min_rate`` bytes/s.

    The socket timeout only bounds each read, so a server sending a byte now and then could hold a transfer
    for days. Every socket the request opens is registered here (by a duplicate of its descriptor, which also
    covers a TLS socket wrapped later); when the deadline passes their reading side is shut down, which ends
    a read blocked in any thread at once, and the fetcher raises :class:`SlowRetrievalError` naming the URL,
    the bytes received and the time taken.
    """

    def __init__(self, url: str, expected: int, timeout: float, min_rate: float,
                 on_end: Callable[[Deadline], None] | None = None) -> None:
        self.url = url
        self._on_end = on_end
        self.timeout = timeout
        self.min_rate = min_rate
        self.start = time.monotonic()
        self.received = 0
        self.expired = False
        self._expected = 0
        self._socks: list[socket.socket] = []
        self._done = False
        self._lock = threading.Lock()
        self.expect(expected)

    @property
    def seconds(self) -> float:
        return self.timeout + self._expected / self.min_rate

    @property
    def ends(self) -> float:
        """When the request is cut at the latest (``time.monotonic()`` clock)."""
        return self.start + self.seconds

    def expect(self, expected: int) -> None:
        """(Re)arm for ``expected`` bytes, counted from the start of the request."""
        with self._lock:
            if self._done or self.expired:
                return
            self._expected = max(0, expected)
        _REAPER.add(self)

    def attach(self, sock: socket.socket) -> None:
        try:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        with self._lock:
            if not self._done and not self.expired:
                self._socks.append(dup)
                return
            late = self.expired and not self._done
        if late:
            _shutdown(dup)
        dup.close()

    def _expire(self) -> None:
        with self._lock:
            if self._done or self.expired or time.monotonic() < self.ends:  # moved later: watched again
                return
            self.expired = True
            socks, self._socks = self._socks, []
        # Closing the duplicates here too means a request whose body was never read leaks nothing past this.
        for s in socks:
            _shutdown(s)
            s.close()
        if self._on_end is not None:
            self._on_end(self)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            socks, self._socks = self._socks, []
        _REAPER.discard(self)
        for s in socks:
            s.close()
        if self._on_end is not None:
            self._on_end(self)

    def error(self) -> tufexc.SlowRetrievalError:
        took = time.monotonic() - self.start
        return tufexc.SlowRetrievalError(redact(
            f"{self.url} sent {self.received} bytes in {took:.2f}s and was cut at its deadline of "
            f"{self.seconds:.2f}s (tuf.timeout {self.timeout:g}s + {self._expected} bytes expected / "
            f"tuf.minBytesPerSecond {self.min_rate:g})"
        ))


class _Reaper:
    """One daemon thread that expires every :class:`Deadline` in flight when it is due (a timer thread per
    request would be thousands of threads in a simulated fleet). It holds only the requests in flight."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child has no reaper thread yet

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._live: set[Deadline] = set()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        """Watch ``deadline`` (again, when its end moved)."""
        with self._cond:
            self._live.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tuf-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, deadline: Deadline) -> None:
        with self._cond:
            self._live.discard(deadline)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [d for d in self._live if d.ends <= now]
                if not due:
                    nxt = min((d.ends for d in self._live), default=None)
                    self._cond.wait(None if nxt is None else nxt - now)
                    continue
                self._live.difference_update(due)
            for d in due:
                d._expire()


_REAPER = _Reaper()


def _shutdown(sock: socket.socket) -> None:
    # Reading side only: a blocked read returns what is buffered, then end of file. With SHUT_RDWR, Linux
    # resets the connection when the server's next byte arrives, and the bytes already read are lost.
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


class ClientCertificateRefused(tufexc.DownloadError):
    """The TUF server requires a client certificate, or refused the one sent (named by tuferrors)."""

    client_certificate_refused = True


_active = threading.local()  # the Deadline of the request this thread is making, for the connection classes


class _GuardedConnection(urllib3.connection.HTTPConnection):
    """Registers its socket with the deadline of the request being made (new or kept-alive connection)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if (d := getattr(_active, "deadline", None)) is not None:
            d.attach(sock)
        return sock

    def request(self, *args: Any, **kw: Any) -> None:
        if self.sock is not None and (d := getattr(_active, "deadline", None)) is not None:
            d.attach(self.sock)
        super().request(*args, **kw)


class _GuardedHTTPSConnection(_GuardedConnection, urllib3.connection.HTTPSConnection):
    pass


class _GuardedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


#: The length a download is budgeted for when nobody says how long it is (ngclient's largest metadata).
_UNKNOWN_LENGTH = UpdaterConfig().targets_max_length


class RangeFetcher(FetcherInterface):
    """urllib3 fetcher for metadata (via ngclient) and targets, with ``Range`` requests for resumes.

    ``timeout`` bounds the connect and each wait for data; every request as a whole also has a
    :class:`Deadline` of ``timeout + expected length / min_rate`` (the expected length is the signed one, or
    ngclient's cap for metadata whose length is not signed).
    """

    def __init__(self, timeout: float = 30, pool_size: int = 4, credentials: Credentials | None = None,
                 auth_origins: tuple[str, ...] = (), min_rate: float = DEFAULT_MIN_RATE) -> None:
        self.timeout = timeout
        self.min_rate = min_rate
        self.credentials = credentials or Credentials()
        # The Authorization header goes to the configured repository origins only, never to a redirect target.
        self.auth_origins = auth_origins
        # The route (proxy or direct), server verification and client certificate of tuf.credentials.
        self._http = Pools(self.credentials, pool_classes={"http": _GuardedPool, "https": _GuardedHTTPSPool},
                           maxsize=pool_size, headers={"User-Agent": "modelfleet-tuf"},
                           retries=urllib3.Retry(0, read=False))
        self._running: set[Deadline] = set()
        self._running_lock = threading.Lock()

    def deadline(self, url: str, expected: int) -> Deadline:
        d = Deadline(url, expected, self.timeout, self.min_rate, on_end=self._ended)
        with self._running_lock:
            self._running.add(d)
        return d

    def _ended(self, d: Deadline) -> None:
        with self._running_lock:
            self._running.discard(d)

    def busy_until(self) -> float | None:
        """The latest deadline of the requests in flight (``time.monotonic()`` clock), None when idle.

        A request in flight ends by then whatever the server does, so the agent's watchdog counts it as
        progress: a slow but bounded download is not a hung loop."""
        with self._running_lock:
            return max((d.ends for d in self._running), default=None)

    def _open(self, url: str, deadline: Deadline, headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        if self.auth_origins and url.startswith(self.auth_origins):
            auth = self.credentials.authorization()  # read now: a rotated token applies to the next request
            if auth is not None:
                headers = {**(headers or {}), "Authorization": auth}
        _active.deadline = deadline
        try:
            resp = self._http.request(
                "GET", url, headers=headers, preload_content=False, timeout=urllib3.Timeout(self.timeout), redirect=True,
                # A short body is detected by the caller (and resumed); keep the bytes that did arrive.
                enforce_content_length=False,
            )
        except ProxyURLError as exc:
            deadline.finish()
            raise tufexc.DownloadError(redact(f"cannot fetch {url}: {exc}")) from None
        except urllib3.exceptions.HTTPError as exc:
            deadline.finish()
            if deadline.expired:
                raise deadline.error() from exc
            reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
            if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
                raise tufexc.SlowRetrievalError(redact(f"no response from {url} within {self.timeout:g}s")) from exc
            if isinstance(reason, urllib3.exceptions.ProxyError):  # its text may hold the proxy's address only
                raise tufexc.DownloadError(redact(f"cannot fetch {url} through the proxy: {reason}")) from exc
            if clientcert.refused_alert(str(reason)):
                raise ClientCertificateRefused(redact(clientcert.refusal_message(
                    url, cert_sent=self.credentials.client_cert_file is not None, detail=str(reason)))) from exc
            raise tufexc.DownloadError(redact(f"cannot fetch {url}: {reason}")) from exc
        except BaseException:
            deadline.finish()
            raise
        finally:
            _active.deadline = None
        if deadline.expired:
            # Cut while the head was arriving: http.client takes a head that ends early for a whole one (a 200
            # with half a header and a "body" of the head's last bytes). Nothing of it is the response.
            resp.close()
            deadline.finish()
            raise deadline.error()
        if resp.status >= 400 and resp.status != 416:
            deadline.finish()
            page = resp.read(4096) if resp.status == 400 else b""
            resp.drain_conn()
            resp.release_conn()
            if clientcert.refused_page(resp.status, page):
                raise ClientCertificateRefused(redact(clientcert.refusal_message(
                    url, cert_sent=self.credentials.client_cert_file is not None, detail=f"HTTP {resp.status}")))
            raise tufexc.DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        return resp

    def _chunks(self, resp: urllib3.BaseHTTPResponse, deadline: Deadline) -> Iterator[bytes]:
        try:
            for chunk in resp.stream(_CHUNK):
                deadline.received += len(chunk)
                yield chunk  # bytes that arrived before the deadline are kept (a target resumes from them)
                if deadline.expired:
                    raise deadline.error()
            if deadline.expired:
                raise deadline.error()
        except urllib3.exceptions.TimeoutError as exc:
            if deadline.expired:
                raise deadline.error() from exc
            raise tufexc.SlowRetrievalError(
                redact(f"{deadline.url}: no data for {self.timeout:g}s after {deadline.received} bytes")) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired:
                raise deadline.error() from exc
            raise tufexc.DownloadError(f"connection lost: {exc}") from exc
        finally:
            deadline.finish()
            if deadline.expired:
                resp.close()  # its socket is shut down: never back into the pool
            resp.release_conn()

    def _get(self, url: str, expected: int) -> Iterator[bytes]:
        deadline = self.deadline(url, expected)
        return self._chunks(self._open(url, deadline), deadline)

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._get(url, _UNKNOWN_LENGTH)

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """ngclient's metadata download, with the deadline budgeted for ``max_length`` (signed or capped)."""
        try:  # as FetcherInterface.fetch(): opening raises DownloadErrors only
            chunks = self._get(url, max_length)
        except tufexc.DownloadError:
            raise
        except Exception as exc:
            raise tufexc.DownloadError(f"Failed to download {url}") from exc
        received = 0
        with tempfile.TemporaryFile() as tmp:
            for chunk in chunks:
                received += len(chunk)
                if received > max_length:
                    raise tufexc.DownloadLengthMismatchError(
                        f"Downloaded {received} bytes exceeding the maximum allowed length of {max_length}")
                tmp.write(chunk)
            tmp.seek(0)
            yield tmp

    def fetch_from(self, url: str, offset: int, length: int) -> tuple[int, Iterator[bytes]]:
        """GET ``url`` (``length`` bytes in all) from byte ``offset``; returns (offset the body starts at, chunks)."""
        if offset <= 0:
            return 0, self._get(url, length)
        deadline = self.deadline(url, length - offset)
        resp = self._open(url, deadline, {"Range": f"bytes={offset}-"})
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else offset
            deadline.expect(length - start)
            return start, self._chunks(resp, deadline)
        if resp.status == 416:  # staged bytes already cover the file (or more): start over
            deadline.finish()
            resp.release_conn()
            return 0, self._get(url, length)
        deadline.expect(length)  # the server ignored the Range: the whole file comes
        return 0, self._chunks(resp, deadline)
