"""Which proxy a request to a URL goes through, decided as git (libcurl) decides it: pure, no I/O.

Every in-process client (the ``ls-refs`` poll, the status push, TUF, capture uploads, ``modelfleet check``)
asks :func:`proxy_for`, and git subprocesses get the configured choice as ``http.<origin>.proxy``, so both
paths of one endpoint always take the same route.

- A per-endpoint setting (``credentials.proxy`` of the agent config) wins over the environment: a proxy URL,
  or :data:`DIRECT` for none (git's empty ``http.proxy``).
- Otherwise the environment, with git's precedence: for ``https://`` ``https_proxy`` then ``HTTPS_PROXY``;
  for ``http://`` only ``http_proxy`` (the upper-case form is ignored, as by curl: a CGI server sets
  ``HTTP_PROXY`` from a request's ``Proxy:`` header); then ``all_proxy``/``ALL_PROXY``. An empty value
  means no proxy, as in git.
- ``no_proxy`` (lower case wins over ``NO_PROXY``, like curl) then applies to the configured proxy and the
  environment's alike, as in git: comma- or space-separated entries, ``*`` for every host, a host name
  matching itself and its sub-domains (a leading dot is ignored), an IP literal (IPv6 with or without
  brackets), a CIDR range, and an optional ``:port`` narrowing an entry to that port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

DIRECT = "direct"
#: Proxy schemes the in-process clients speak (urllib3 has SOCKS only with an extra package).
PROXY_SCHEMES = ("http", "https")
MAX_NO_PROXY_ENTRIES = 256


class ProxyURLError(ValueError):
    """A proxy setting that cannot be used (the message never holds the proxy's userinfo)."""


def env_proxy(scheme: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable name, value) of the environment's proxy for a ``scheme`` URL, git's precedence; None when unset."""
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy",) if scheme == "http" else ()
    for name in (*names, "all_proxy", "ALL_PROXY"):
        if name in env:
            return name, env[name]
    return None


def no_proxy_entries(env: Mapping[str, str]) -> tuple[str, ...]:
    """The ``no_proxy`` entries of ``env`` (lower-case variable first), normalised, at most 256."""
    raw = env.get("no_proxy", env.get("NO_PROXY", ""))
    return tuple(e.lower() for e in raw.replace(",", " ").split() if e)[:MAX_NO_PROXY_ENTRIES]


def _split_host_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:  # a bare IPv6 address (or no port)
        host, port = entry, ""
    return host, int(port) if port.isdigit() else None


def bypasses(host: str, port: int, entries: tuple[str, ...]) -> bool:
    """Whether ``no_proxy`` ``entries`` send a request to ``host``:``port`` directly."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in entries:
        if entry == "*":
            return True
        name, eport = _split_host_port(entry)
        if eport is not None and eport != port:
            continue
        name = name.lstrip(".").rstrip(".")
        if not name:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def normalise_proxy(value: str, *, where: str) -> str:
    """``value`` as a proxy URL (``http://`` added when it has no scheme, as curl does); :class:`ProxyURLError`
    naming ``where`` for another scheme or a URL without a host or with a bad port."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    host = parts.netloc.rsplit("@", 1)[-1]
    if scheme not in PROXY_SCHEMES:
        raise ProxyURLError(f"{where}: proxy scheme {scheme}:// is not supported (only http:// and https:// proxies)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ProxyURLError(f"{where}: proxy {scheme}://{host} has an invalid port") from None
    if not parts.hostname:
        raise ProxyURLError(f"{where}: proxy URL has no host")
    return f"{scheme}://{parts.netloc}"


def with_userinfo(proxy: str, username: str, password: str) -> str:
    """``proxy`` with ``username:password@`` (percent-encoded) in place of any userinfo it had."""
    parts = urlsplit(proxy)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{host}"


def proxy_for(url: str, env: Mapping[str, str], configured: str | None = None) -> str | None:
    """The proxy URL a request to ``url`` goes through, or None to connect directly (see the module docstring).

    ``configured``: the endpoint's own setting (a URL or :data:`DIRECT`); None defers to ``env``. Raises
    :class:`ProxyURLError` for an unusable proxy value."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    if configured == DIRECT:
        return None
    if configured is not None:
        proxy = normalise_proxy(configured, where="credentials.proxy")
    else:
        found = env_proxy(scheme, env)
        if found is None or not found[1].strip():
            return None
        proxy = normalise_proxy(found[1], where=f"environment variable {found[0]}")
    port = parts.port or (443 if scheme == "https" else 80)
    if bypasses(parts.hostname, port, no_proxy_entries(env)):
        return None
    return proxy
