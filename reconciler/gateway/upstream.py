"""What the gateway knows of its road to the central TUF server, which only nginx travels.

The devices' TUF requests go through the gateway's nginx to the central server (a cache); a failure there — a
client certificate the server refuses, a CA that does not verify it, a proxy that refuses the tunnel — would
show only as a 502 on a device, which then falls back to the central server itself. :class:`TufProbe` asks the
gateway's own nginx for ``timestamp.json`` once per round (the request the site's devices make anyway; cached
``tufCache.metadataSeconds``) and names what it finds as a device would name it, in ``state.json``'s ``tuf``
block and the log: ``ClientCertificateRefused`` (the central server's 400 page passed through, or its TLS alert
in nginx's error log), ``TLSVerificationFailed``, ``AuthenticationFailed``, ``RepositoryUnavailable`` (with
the tunnel's own error when a proxy refused it; also when the cache answered with a stale copy, as it does
while upstream fails).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import urllib3

from reconciler.core.reasons import (
    AUTHENTICATION_FAILED,
    CLIENT_CERTIFICATE_REFUSED,
    REPOSITORY_UNAVAILABLE,
    TLS_VERIFICATION_FAILED,
)
from reconciler.core.redact import redact_url
from reconciler.gateway.config import GatewayConfig
from reconciler.gateway.tunnel import ConnectTunnel
from reconciler.net import clientcert

log = logging.getLogger("reconciler.gateway")
PROBE_TIMEOUT = 15.0
_TLS_WORDS = ("certificate verify failed", "upstream ssl certificate verify error", "self-signed certificate",
              "unable to get local issuer certificate", "does not match")


class TufProbe:
    """One ``GET /tuf/metadata/timestamp.json`` at the gateway's own nginx per round, its outcome named."""

    def __init__(self, cfg: GatewayConfig, run_dir: Path, tunnel: ConnectTunnel | None = None) -> None:
        host, port = cfg.listen.rsplit(":", 1)
        host = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host.strip("[]")
        self.url = f"http://{host}:{port}/tuf/metadata/timestamp.json"
        self.display_upstream = redact_url(cfg.tuf_url)
        self.cert_sent = cfg.tuf_credentials.client_cert_file is not None
        self.error_log = run_dir / "error.log"
        self.tunnel = tunnel
        self._log_offset = self._log_size()
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(PROBE_TIMEOUT))
        self.last: dict[str, Any] = {}

    def _log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def _new_log(self) -> str:
        """nginx's error log lines written since the previous round (its words on the upstream's TLS)."""
        size = self._log_size()
        start = self._log_offset if size >= self._log_offset else 0
        self._log_offset = size
        try:
            with open(self.error_log, "rb") as fh:
                fh.seek(max(start, size - (64 << 10)))
                return fh.read(size - start).decode(errors="replace")
        except OSError:
            return ""

    def check(self) -> dict[str, Any]:
        reason, message = self._check()
        out: dict[str, Any] = {"ok": reason is None and message is None, "reason": reason, "lastError": message,
                               "upstream": self.display_upstream}
        if self.tunnel is not None:
            out["proxy"] = self.tunnel.display_proxy
            out["tunnels"] = self.tunnel.tunnels
        if message is not None and message != self.last.get("lastError"):
            log.warning("TUF upstream %s: %s", self.display_upstream, f"{reason}: {message}" if reason else message)
        self.last = out
        return out

    def _check(self) -> tuple[str | None, str | None]:
        try:
            resp = self._http.request("GET", self.url, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            return None, f"the gateway's nginx did not answer: {type(exc).__name__}"
        try:
            body = resp.read(4096)
            status = resp.status
            # The cache answers a stale copy when upstream fails (devices verify its expiry): not a success here.
            stale = resp.headers.get("X-Cache-Status", "") == "STALE"
        finally:
            resp.release_conn()
        errors = self._new_log().lower()
        if status == 200 and not stale:
            return None, None
        if clientcert.refused_page(status, body) or clientcert.refused_alert(errors):
            return CLIENT_CERTIFICATE_REFUSED, clientcert.refusal_message(
                self.display_upstream, cert_sent=self.cert_sent, detail=f"HTTP {status} through the gateway")
        if status in (401, 403):
            return AUTHENTICATION_FAILED, f"{self.display_upstream} refused the gateway's TUF credentials (HTTP {status})"
        if status in (502, 504) or stale:
            if any(w in errors for w in _TLS_WORDS):
                return TLS_VERIFICATION_FAILED, (f"TLS verification of {self.display_upstream} failed (set "
                                                 "upstream.tuf.credentials.caFile or extraCaFile)")
            why = self.tunnel.last_error if self.tunnel is not None and self.tunnel.last_error else None
            said = "the cached copy served" if stale else f"HTTP {status}"
            return REPOSITORY_UNAVAILABLE, f"cannot reach {self.display_upstream}" + (f": {why} ({said})" if why else
                                                                                       f" ({said})")
        return None, f"{self.display_upstream} answered HTTP {status} for timestamp.json"

    def close(self) -> None:
        self._http.clear()
