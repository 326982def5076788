"""urllib3 pools for one endpoint's settings: proxy route, server verification, client certificate.

:class:`Pools` is a manager per route (direct, or one per proxy), picked per URL, for clients that talk to
several URLs (TUF, ``check``, capture); :func:`keepalive_pool` is the one-connection pool of the Git
clients. Both take the endpoint's :class:`~reconciler.core.credentials.Credentials`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
import urllib3.connection
from urllib3.util.ssl_ import create_urllib3_context

from reconciler.core.credentials import Credentials
from reconciler.core.proxy import proxy_for


def tls_options(creds: Credentials) -> dict[str, Any]:
    """Pool keywords for an https origin: ``caFile`` replaces the system store, ``extraCaFile`` adds to it
    (or to ``caFile``), and the client certificate, which urllib3 loads on each new connection."""
    kw: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    if creds.extra_ca_file is not None:
        ctx = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        if creds.ca_file is not None:
            ctx.load_verify_locations(cafile=str(creds.ca_file))
        else:
            ctx.load_default_certs()
        ctx.load_verify_locations(cafile=str(creds.extra_ca_file))
        kw["ssl_context"] = ctx
    elif creds.ca_file is not None:
        kw["ca_certs"] = str(creds.ca_file)
    if creds.client_cert_file is not None:
        kw["cert_file"] = str(creds.client_cert_file)
        if creds.client_key_file is not None:
            kw["key_file"] = str(creds.client_key_file)
    return kw


def manager(proxy: str | None, *, proxy_authorization: str | None = None, **kw: Any) -> urllib3.PoolManager:
    """A PoolManager to connect directly (``proxy`` None) or a ProxyManager through ``proxy``. The proxy's
    credentials — ``proxy_authorization``, else the proxy URL's userinfo — become its ``Proxy-Authorization``
    header, sent to the proxy only (on ``CONNECT`` for https)."""
    if proxy is None:
        return urllib3.PoolManager(**kw)
    parts = urlsplit(proxy)
    headers = None
    if proxy_authorization is not None:
        headers = {"Proxy-Authorization": proxy_authorization}
    elif parts.username is not None or parts.password is not None:
        auth = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers = urllib3.make_headers(proxy_basic_auth=auth)
    bare = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    return urllib3.ProxyManager(bare, proxy_headers=headers, **kw)


class Pools:
    """urllib3 managers for one endpoint's settings, one per route (direct or a proxy), built on first use.

    ``env`` (default: the process environment, read now) supplies ``https_proxy``/``no_proxy``;
    ``pool_classes`` replaces urllib3's connection pool classes (the TUF fetcher's deadline-guarded ones)."""

    def __init__(self, credentials: Credentials | None = None, *, env: Mapping[str, str] | None = None,
                 pool_classes: Mapping[str, type[urllib3.HTTPConnectionPool]] | None = None, **kw: Any) -> None:
        self.credentials = credentials or Credentials()
        self.env = dict(os.environ if env is None else env)
        self._kw = {**kw, **tls_options(self.credentials)}
        self._pool_classes = dict(pool_classes) if pool_classes else None
        self._managers: dict[str | None, urllib3.PoolManager] = {}
        self._auths: dict[str | None, str | None] = {}  # the Proxy-Authorization each route's manager sends

    def route(self, url: str) -> str | None:
        """The proxy ``url`` goes through, None for direct (ProxyURLError for an unusable proxy setting)."""
        return proxy_for(url, self.env, self.credentials.proxy)

    def _build(self, proxy: str | None, auth: str | None) -> urllib3.PoolManager:
        mgr = manager(proxy, proxy_authorization=auth, **self._kw)
        if self._pool_classes:
            mgr.pool_classes_by_scheme = dict(self._pool_classes)  # type: ignore[assignment]
        return mgr

    def _proxy_auth(self, proxy: str | None) -> str | None:
        # Checked at each request (CredentialError if the file is not private): one stat, and a read only when
        # the file changed (read_secret), so a rotated proxy password applies without a restart.
        return self.credentials.proxy_authorization() if proxy is not None else None

    def for_url(self, url: str) -> urllib3.PoolManager:
        proxy = self.route(url)
        auth = self._proxy_auth(proxy)
        known = self._managers.get(proxy)
        if known is not None and self._auths.get(proxy) == auth:
            return known
        if known is not None:
            known.clear()  # its tunnels were opened with the old password; the proxy may have cut them already
        mgr = self._managers[proxy] = self._build(proxy, auth)
        self._auths[proxy] = auth
        return mgr

    def request(self, method: str, url: str, **kw: Any) -> urllib3.BaseHTTPResponse:
        proxy = self.route(url)
        if proxy is not None and url.startswith("http://"):
            # A forwarding proxy may close after each answer without saying so (tinyproxy does): a request sent
            # right after on the kept connection would fail with nothing to retry it. So plain http through a
            # proxy gets a connection (and pool) of its own per request; https tunnels stay alive.
            kw["headers"] = {**(kw.get("headers") or {}), "Connection": "close"}
            return self._build(proxy, self._proxy_auth(proxy)).request(method, url, **kw)
        return self.for_url(url).request(method, url, **kw)

    def clear(self) -> None:
        for mgr in self._managers.values():
            mgr.clear()


MAX_ONE_WRITE = 64 << 10  # request bodies up to this size go out with the head in one write


class _OneWrite(urllib3.connection.HTTPConnection):
    """Sends a request's head and a small body in one write (urllib3 writes them separately).

    Two small writes cost nothing direct, but a proxy that relays each as it comes on a socket without
    ``TCP_NODELAY`` (tinyproxy) holds the second until the server acknowledges the first, and servers delay
    that acknowledgement: 40 ms per ``ls-refs`` poll through tinyproxy (bench/bench_proxy.py)."""

    _hold = False
    _held: bytes | None = None

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kw: Any) -> None:
        one = isinstance(body, bytes) and 0 < len(body) <= MAX_ONE_WRITE
        if one and self.sock is None:
            self.connect()  # a tunnel's CONNECT is its own write, before the request's
        self._hold, self._held = one, None
        try:
            super().request(method, url, body=body, headers=headers, **kw)
        finally:
            self._hold, held, self._held = False, self._held, None
            if held is not None:  # no body came after the head (never for a bytes body): send it as it is
                super().send(held)

    def send(self, data: Any) -> None:
        if self._hold:
            if self._held is None:
                self._held = bytes(data)  # the head: wait for the body
                return
            data, self._held, self._hold = self._held + bytes(data), None, False
        super().send(data)


class _OneWriteHTTPS(_OneWrite, urllib3.connection.HTTPSConnection):
    pass


class _FreshProxyAuth(urllib3.HTTPConnectionPool):
    """A kept-alive pool whose ``Proxy-Authorization`` is read from the proxy password file at each request.

    The pool lives as long as its client (the agent's source poll, the gateway's mirror): with the password read
    once, a rotated ``proxyPasswordFile`` would need a restart. Read per request (one ``stat``; the file is read
    again only when it changed), it goes on the next tunnel's ``CONNECT`` (https) or the next forwarded request
    (http); a tunnel open already stays, the proxy authorised it."""

    proxy_credentials: Credentials | None = None

    def urlopen(self, method: str, url: str, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        creds = self.proxy_credentials
        if creds is not None and self.proxy is not None:
            auth = creds.proxy_authorization()
            if auth is not None and self.proxy_headers.get("Proxy-Authorization") != auth:
                self.proxy_headers = {**self.proxy_headers, "Proxy-Authorization": auth}
        return super().urlopen(method, url, *args, **kw)


class _OneWritePool(_FreshProxyAuth):
    ConnectionCls = _OneWrite


class _OneWriteHTTPSPool(_FreshProxyAuth, urllib3.HTTPSConnectionPool):
    ConnectionCls = _OneWriteHTTPS


def keepalive_pool(url: str, *, credentials: Credentials | None, timeout: float, what: str,
                   env: Mapping[str, str] | None = None) -> tuple[urllib3.HTTPConnectionPool, str]:
    """(a one-connection pool to ``url``'s host that never retries or blocks, through the endpoint's proxy if
    any; the request target of the repository without a trailing slash: its path, or for plain http through a
    proxy the absolute URL a forwarding proxy needs). ``ValueError`` naming ``what`` unless ``url`` is http(s);
    ProxyURLError for an unusable proxy setting."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} needs an http(s) URL")
    pools = Pools(credentials, env=env, pool_classes={"http": _OneWritePool, "https": _OneWriteHTTPSPool}, maxsize=1,
                  retries=False, timeout=urllib3.Timeout(timeout), block=False)
    proxy = pools.route(url)
    pool = pools.for_url(url).connection_from_url(url)
    if isinstance(pool, _FreshProxyAuth):
        pool.proxy_credentials = pools.credentials
    path = parts.path.rstrip("/")
    if proxy is not None and parts.scheme == "http":
        return pool, f"http://{parts.netloc.rsplit('@', 1)[-1]}{path}"
    return pool, path
