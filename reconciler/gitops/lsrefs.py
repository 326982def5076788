"""The idle poll over smart HTTP(S) in one request: Git protocol v2 ``ls-refs`` on a kept-alive connection.

``git ls-remote`` over HTTP costs a process (plus ``git-remote-http``), two requests (``GET info/refs`` then
``POST git-upload-pack``) and a 401 challenge when credentials come from a helper. Protocol v2 is stateless
over HTTP, so a client that already knows the server speaks it can send ``command=ls-refs`` straight to
``POST <repo>/git-upload-pack`` with ``Git-Protocol: version=2`` and the ``Authorization`` header up front:
one request, no process, a TLS session kept alive by urllib3 (already the TUF client's HTTP stack; dulwich
would add a dependency and still start with ``GET info/refs``). ``git`` keeps doing fetches and verification.

A server that does not answer in protocol v2 (an old ``git http-backend`` behind a proxy that drops the
``Git-Protocol`` header, a redirect) raises :class:`NotV2`; the caller then falls back to ``git ls-remote``
for good. Authentication (HTTP 401), permission (HTTP 403), TLS and network failures, and a server that answers it is busy or unavailable
(HTTP 429, 502, 503, 504: an overloaded Git server behind nginx says 502), raise :class:`LsRefsError` with a
named reason: the poll fails, backs off and asks again with ``ls-refs`` (a burst of 502s must not turn a
fleet's one-request polls into ``git ls-remote`` processes for good).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable

import urllib3

from reconciler.core.credentials import Credentials
from reconciler.core.reasons import (
    AUTHENTICATION_FAILED,
    GIT_TIMEOUT,
    GIT_UNAVAILABLE,
    PERMISSION_DENIED,
    TLS_VERIFICATION_FAILED,
)
from reconciler.core.redact import redact_url
from reconciler.gitops.smarthttp import BUSY_STATUSES, PktLineError, keepalive_pool, pkt, pkt_lines

MAX_RESPONSE_BYTES = 1 << 20  # one ref-prefix answer is tiny; a huge body is not an ls-refs answer
_OID = re.compile(rb"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


class NotV2(Exception):
    """The server did not answer a protocol v2 ``ls-refs`` (fall back to ``git ls-remote``)."""


class LsRefsError(Exception):
    def __init__(self, reason: str, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.timed_out = timed_out


def ls_refs_request(prefix: str | list[str], agent: str = "modelfleet") -> bytes:
    """The ``ls-refs`` command asking for the refs under ``prefix`` (one, or several in one request)."""
    prefixes = [prefix] if isinstance(prefix, str) else prefix
    return pkt(b"command=ls-refs\n") + pkt(f"agent={agent}\n".encode()) + b"0001" + b"".join(
        pkt(f"ref-prefix {prefix}\n".encode()) for prefix in prefixes) + b"0000"


def parse_ls_refs(body: bytes) -> dict[str, str]:
    """ref name -> object id from an ``ls-refs`` response (pure); :class:`NotV2` if it is not one."""
    refs: dict[str, str] = {}
    try:
        for raw in pkt_lines(body):
            if raw is None:
                return refs
            line = raw.rstrip(b"\n")
            if line.startswith(b"ERR "):
                raise NotV2(line[4:].decode(errors="replace")[:200])
            oid, _, rest = line.partition(b" ")
            if not _OID.match(oid) or not rest:
                raise NotV2("not an ls-refs line")
            refs[rest.split(b" ", 1)[0].decode(errors="replace")] = oid.decode()
    except PktLineError as exc:
        raise NotV2(f"response is not pkt-line encoded: {exc}") from None
    raise NotV2("no flush packet at the end of the response")


class LsRefsClient:
    """One repository's ``ls-refs`` endpoint on a pooled keep-alive connection (thread-safe via urllib3)."""

    def __init__(self, url: str, *, authorization: Callable[[], str | None], ca_file: str | None = None,
                 timeout: float = 30.0) -> None:
        self.pool, path = keepalive_pool(url, ca_file=ca_file, timeout=timeout, what="ls-refs over HTTP")
        self.display_url = redact_url(url)
        self.path = path + "/git-upload-pack"
        self.authorization = authorization
        self.requests = 0
        self.max_response = MAX_RESPONSE_BYTES

    def ls_ref(self, ref: str) -> str | None:
        """The object id of ``ref`` (exact name) on the server, or None when it does not exist."""
        return self.ls_refs([ref]).get(ref)

    def ls_refs(self, prefixes: list[str]) -> dict[str, str]:
        """ref -> object id of every ref on the server that starts with one of ``prefixes`` (one request)."""
        headers = {"Content-Type": "application/x-git-upload-pack-request",
                   "Accept": "application/x-git-upload-pack-result", "Git-Protocol": "version=2",
                   "User-Agent": "git/modelfleet"}
        auth = self.authorization()
        if auth:
            headers["Authorization"] = auth
        self.requests += 1
        try:
            resp = self.pool.urlopen("POST", self.path, body=ls_refs_request(prefixes), headers=headers, redirect=False,
                                     preload_content=False, retries=False)
        except urllib3.exceptions.SSLError as exc:
            raise LsRefsError(TLS_VERIFICATION_FAILED, f"TLS verification of {self.display_url} failed: "
                              f"{_ssl_reason(exc)}") from None
        except (urllib3.exceptions.TimeoutError, TimeoutError):
            raise LsRefsError(GIT_TIMEOUT, f"ls-refs at {self.display_url} timed out", timed_out=True) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise LsRefsError(GIT_UNAVAILABLE, f"cannot reach {self.display_url}: {type(exc).__name__}") from None
        try:
            body = resp.read(self.max_response + 1)
            status, ctype = resp.status, resp.headers.get("Content-Type", "")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise LsRefsError(GIT_UNAVAILABLE, f"connection to {self.display_url} lost: {type(exc).__name__}") from None
        finally:
            resp.release_conn()
        if status == 401:
            raise LsRefsError(AUTHENTICATION_FAILED, f"{self.display_url} refused the credentials (HTTP 401)")
        if status == 403:  # authenticated, but not allowed to read the repository
            raise LsRefsError(PERMISSION_DENIED, f"{self.display_url} denied access to the repository (HTTP 403)")
        if status in BUSY_STATUSES:  # no verdict on protocol v2: poll again after the backoff, still with ls-refs
            raise LsRefsError(GIT_UNAVAILABLE, f"{self.display_url} is unavailable (HTTP {status})")
        if status != 200 or ctype != "application/x-git-upload-pack-result" or len(body) > self.max_response:
            raise NotV2(f"HTTP {status} {ctype}")
        return parse_ls_refs(body)

    def close(self) -> None:
        self.pool.close()


MAX_LISTING_BYTES = 64 << 20  # every status branch of a big repository: ≈ 70 bytes per ref


def remote_refs(url: str, prefix: str, *, credentials: Credentials | None = None, timeout: float = 60.0
                ) -> dict[str, str]:
    """ref -> object id of the refs under ``prefix`` at ``url``: one ``ls-refs`` over smart HTTP(S), else
    ``git ls-remote`` (SSH, ``git://``, a path). Raises :class:`LsRefsError`, :class:`NotV2` or ``GitError``."""
    from reconciler.gitops.auth import GitAuth
    from reconciler.gitops.verify import run_git

    auth = GitAuth(url, credentials or Credentials())
    if auth.is_http:
        ca = auth.credentials.ca_file
        client = LsRefsClient(url, authorization=auth.authorization, timeout=timeout, ca_file=str(ca) if ca else None)
        client.max_response = MAX_LISTING_BYTES
        try:
            return client.ls_refs([prefix])
        finally:
            client.close()
    out = run_git(["ls-remote", "--refs", "--", url, f"{prefix}*"], timeout=timeout, env=auth.env()).stdout.decode()
    refs = {}
    for line in out.splitlines():
        oid, _, name = line.partition("\t")
        if name.startswith(prefix):
            refs[name] = oid
    return refs


def _ssl_reason(exc: BaseException) -> str:
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or str(cur)
        cur = cur.__cause__ or cur.__context__ or (cur.reason if isinstance(cur, urllib3.exceptions.MaxRetryError)  # type: ignore[assignment]
                                                   else None)
    return type(exc).__name__
