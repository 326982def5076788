"""Secrets never leave the process: one redaction for every URL and message the project prints, logs or stores.

:func:`redact_url` drops the password of a URL's userinfo (``https://ops:s3cret@host`` →
``https://ops:***@host``) and the values of token-like query parameters; :func:`redact` does the same to every
URL inside a longer text (git's stderr, an exception message) and hides ``Authorization:`` header values.
:func:`split_userinfo` takes credentials out of a URL so they can travel another way (never argv).
Pure functions: no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

MASK = "***"

_SECRET_PARAM = re.compile(r"(?i)(token|password|passwd|secret|key|auth|sig|signature|access_token|private_token)")
# scheme://userinfo@ — userinfo stops at the first '@' before the host ('/' '?' '#' and whitespace end it).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s/?#@:'\"]*)(?::(?P<pw>[^\s/?#@'\"]*))?@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:[a-z_]*?(?:token|password|passwd|secret|sig|signature|key))=)[^&\s#'\"]+")
_AUTH_HEADER = re.compile(r"(?i)(authorization:\s*(?:basic|bearer|token)?\s*)[^\s'\"]+")


def redact_url(url: str) -> str:
    """``url`` without its password and secret query values (the user name stays: it helps debugging)."""
    try:
        parts: SplitResult = urlsplit(url)
    except ValueError:
        return redact(url)
    if not parts.scheme or not parts.netloc:
        return redact(url)  # scp-style (git@host:path) carries no password
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = "&".join(
        f"{k}={MASK}" if "=" in kv and _SECRET_PARAM.search(k := kv.split("=", 1)[0]) else kv
        for kv in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with URL passwords, secret query values, ``Authorization`` values and ``secrets`` masked."""
    def userinfo(m: re.Match[str]) -> str:
        return f"{m.group('scheme')}{m.group('user')}{':' + MASK if m.group('pw') is not None else ''}@"

    out = _URL_USERINFO.sub(userinfo, text)
    out = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, out)
    out = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, out)
    for s in secrets:
        if s and len(s) >= 4:
            out = out.replace(s, MASK)
    return out


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(URL without userinfo, user, password) for ``scheme://user:pw@host`` URLs; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if not parts.scheme or "@" not in parts.netloc:
        return url, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, sep, pw = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, unquote(pw) if sep else None


def has_password(url: str) -> bool:
    """True if ``url`` embeds a password or token in its userinfo."""
    return split_userinfo(url)[2] is not None
