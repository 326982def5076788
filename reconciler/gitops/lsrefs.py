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
from collections.abc import Callable, Mapping

import urllib3

from reconciler.core.credentials import Credentials
from reconciler.core.proxy import ProxyURLError
from reconciler.core.reasons import (
    AUTHENTICATION_FAILED,
    CLIENT_CERTIFICATE_REFUSED,
    GIT_TIMEOUT,
    GIT_UNAVAILABLE,
    PERMISSION_DENIED,
    TLS_VERIFICATION_FAILED,
)
from reconciler.core.redact import redact_url
from reconciler.gitops.smarthttp import BUSY_STATUSES, PktLineError, pkt, pkt_lines
from reconciler.net import clientcert
from reconciler.net.pools import keepalive_pool

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

    def __init__(self, url: str, *, authorization: Callable[[], str | None], credentials: Credentials | None = None,
                 timeout: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        """``credentials``: the endpoint's TLS and proxy settings (the header comes from ``authorization``);
        ``env``: where ``https_proxy``/``no_proxy`` come from (default: the process environment).
        ProxyURLError for an unusable proxy setting."""
        self.pool, path = keepalive_pool(url, credentials=credentials, timeout=timeout, what="ls-refs over HTTP",
                                         env=env)
        self.cert_sent = credentials is not None and credentials.client_cert_file is not None
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
                                     preload_content=False, retries=False, assert_same_host=False)
        except urllib3.exceptions.ProxyError as exc:
            raise LsRefsError(GIT_UNAVAILABLE, f"cannot reach {self.display_url} through the proxy: "
                              f"{_proxy_reason(exc)}") from None
        except urllib3.exceptions.SSLError as exc:
            if clientcert.refused_alert(str(exc)):
                raise LsRefsError(CLIENT_CERTIFICATE_REFUSED, clientcert.refusal_message(
                    self.display_url, cert_sent=self.cert_sent, detail=_ssl_reason(exc))) from None
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
        if clientcert.refused_page(status, body):
            raise LsRefsError(CLIENT_CERTIFICATE_REFUSED, clientcert.refusal_message(
                self.display_url, cert_sent=self.cert_sent, detail=f"HTTP {status}"))
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
        try:
            client = LsRefsClient(url, authorization=auth.authorization, timeout=timeout, credentials=auth.credentials)
        except ProxyURLError as exc:
            raise LsRefsError(GIT_UNAVAILABLE, str(exc)) from None
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


def _proxy_reason(exc: urllib3.exceptions.ProxyError) -> str:
    """What went wrong with the proxy, in words that hold neither its credentials nor the origin's."""
    cause = exc.original_error if isinstance(exc.original_error, BaseException) else exc
    text = str(cause)
    if "Tunnel connection failed" in text:  # http.client's: the proxy answered CONNECT with an error status
        return "the proxy refused the tunnel (" + text.split("Tunnel connection failed:", 1)[-1].strip() + ")"
    return type(cause).__name__


def _ssl_reason(exc: BaseException) -> str:
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or str(cur)
        cur = cur.__cause__ or cur.__context__ or (cur.reason if isinstance(cur, urllib3.exceptions.MaxRetryError)  # type: ignore[assignment]
                                                   else None)
    return type(exc).__name__
