"""The HTTP probes of ``modelfleet check``: one GET to a server as the agent would send it (its proxy, CA files,
client certificate and ``Authorization``), written down as a :class:`~.model.HttpProbe` — its status, the
server's clock against ours, and a refused client certificate or any failure as an ``error`` — never raised.

:func:`http_get` is also the TUF metadata reader's one request (:mod:`~.facts`).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

import urllib3

from reconciler.check.model import HttpProbe
from reconciler.core.credentials import CredentialError, Credentials
from reconciler.core.redact import redact, redact_url
from reconciler.net import clientcert
from reconciler.net.pools import Pools

MAX_METADATA_BYTES = 32 << 20  # a targets role with many thousand targets; an answer beyond it is not metadata


class HttpAnswer:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def http_get(pool: Pools, url: str, *, timeout: float, headers: Mapping[str, str] | None = None,
             max_bytes: int = MAX_METADATA_BYTES, redirect: bool = True) -> HttpAnswer:
    """One GET (no retries; redirects followed when ``redirect``); ``OSError``/``urllib3`` errors propagate. A body
    beyond ``max_bytes`` raises ``ValueError``; with ``max_bytes=0`` the body is not read (status and headers only)."""
    hops = 5 if redirect else 0
    resp = pool.request("GET", url, headers=dict(headers or {}), preload_content=False, redirect=redirect,
                        retries=urllib3.Retry(total=hops, connect=0, read=0, status=0, other=0, redirect=hops,
                                              raise_on_redirect=False),
                        timeout=urllib3.Timeout(timeout))
    try:
        body = resp.read(max_bytes + 1) if max_bytes else b""
    finally:
        resp.close()  # a body left unread (a probe) must not go back to the pool
    if len(body) > max_bytes:
        raise ValueError(f"the answer is larger than {max_bytes} bytes")
    return HttpAnswer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)


def pool_for(creds: Credentials | None) -> Pools:
    """The agent's route and TLS settings for one endpoint: its proxy, CA files and client certificate."""
    return Pools(creds, headers={"User-Agent": "modelfleet-check"})


def http_date(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(_dt.timezone.utc)
    except (TypeError, ValueError, IndexError):
        return None


def probe(server: str, url: str, *, auth: str | None, creds: Credentials | None, timeout: float,
           clock: Callable[[], float] = time.time) -> HttpProbe:
    """One GET to ``url``, as the agent sends it (its proxy, CAs, client certificate): its status and the
    server's clock (``Date``) against ours. A refused client certificate is said in ``error``."""
    display = redact_url(url)
    headers = {"Authorization": auth} if auth else {}
    cert_sent = creds is not None and creds.client_cert_file is not None
    before = clock()
    try:
        answer = http_get(pool_for(creds), url, timeout=timeout, headers=headers, max_bytes=4096, redirect=False)
    except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
        why = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        if clientcert.refused_alert(str(why)):
            return HttpProbe(server, display, error=clientcert.refusal_message(display, cert_sent=cert_sent,
                                                                                 detail=type(why).__name__),
                             cert_refused=True)
        return HttpProbe(server, display, error=" ".join(redact(str(why)).split())[:300])
    if clientcert.refused_page(answer.status, answer.body):
        return HttpProbe(server, display, answer.status, error=clientcert.refusal_message(
            display, cert_sent=cert_sent, detail=f"HTTP {answer.status}"), cert_refused=True)
    after = clock()
    date = http_date(answer.headers.get("date"))
    # Date has one-second resolution and is truncated: the server's clock is on average half a second later.
    offset = None if date is None else date.timestamp() + 0.5 - (before + after) / 2
    return HttpProbe(server, display, answer.status, offset)


def authorization(creds: Credentials | None) -> str | None:
    """The header the agent would send; None when there is none or its file is refused (its own check says so,
    and the probe still measures the clock)."""
    if creds is None:
        return None
    try:
        return creds.authorization()
    except CredentialError:
        return None
