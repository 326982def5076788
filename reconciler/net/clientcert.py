"""A server's refusal of a missing or untrusted client certificate, told from other failures (pure).

A TLS 1.3 server that requires a certificate aborts with the ``certificate_required`` alert, an older one with
``bad_certificate``/``unknown_ca``; nginx with ``ssl_verify_client on`` completes the handshake and answers
HTTP 400 with a page saying so. Each client names either as ``ClientCertificateRefused`` rather than as a
protocol or network error (which would hand the poll over to ``git`` for good, or read as a busy server).
"""

from __future__ import annotations

# nginx's 400 pages (ngx_http_special_response.c): no certificate / a certificate it could not verify.
_NGINX_PAGES = (b"No required SSL certificate was sent", b"The SSL certificate error")
_TLS_ALERTS = ("alert certificate required", "certificate_required", "alert bad certificate", "alert unknown ca",
               "alert certificate unknown", "alert certificate expired", "alert certificate revoked")


def refused_page(status: int, body: bytes) -> bool:
    """Whether an HTTP answer is a server refusing the client certificate (nginx's 400 pages)."""
    return status == 400 and any(page in body[:4096] for page in _NGINX_PAGES)


def refused_alert(message: str) -> bool:
    """Whether a TLS error message (OpenSSL's, GnuTLS's, or git's wording of either) is such a refusal."""
    low = message.lower()
    return any(alert in low for alert in _TLS_ALERTS)


def refusal_message(display_url: str, *, cert_sent: bool, detail: str) -> str:
    """What the device reports: which server, whether a certificate was sent, and the server's words (the hint of
    what to do is the caller's: ``credentials.clientCertFile`` of the source, status or TUF block)."""
    if cert_sent:
        return f"{display_url} refused the client certificate ({detail})"
    return f"{display_url} requires a client certificate and none is configured ({detail})"
