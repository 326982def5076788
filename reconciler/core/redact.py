"""Secrets never leave the process: one redaction for every URL and message the project prints, logs or stores.

:func:`redact_url` masks a URL's whole userinfo (``https://ops:s3cret@host`` and ``https://ghp_…@host`` both
become ``https://***@host``: a user name may itself be the token, as in GitHub's ``https://<token>@github.com``)
and the values of token-like query parameters; the user name of an SSH URL (``ssh://git@host``, the SSH login,
not a secret) stays, its password is masked. :func:`redact` does the same to every URL inside a longer text
(git's stderr, an exception message) and hides ``Authorization:`` header values; :func:`redact_tree` applies it
to every string of a JSON-like document (a status, the journal). :func:`userinfo_problem` is the check the
config loaders and ``validate`` refuse a URL with. :func:`split_userinfo` takes credentials out of a URL so they
can travel another way (never argv). Pure functions: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

MASK = "***"

#: Schemes whose userinfo is an SSH login name (``ssh://git@host/…``), not a secret.
SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
_SECRET_PARAM = re.compile(r"(?i)(token|password|passwd|secret|key|auth|sig|signature|access_token|private_token)")
# scheme://userinfo@ — the userinfo runs to the LAST '@' (or percent-encoded '%40') before the host: '/' '?' '#',
# quotes and whitespace end the authority, so a user name or password holding a raw '@' is masked whole.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#'\"<>]*)(?:@|%40)")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:[a-z_]*?(?:token|password|passwd|secret|sig|signature|key))=)[^&\s#'\"]+")
_AUTH_HEADER = re.compile(r"(?i)(authorization:\s*(?:basic|bearer|token)?\s*)[^\s'\"]+")


def _maybe_secret(text: str) -> bool:
    """Whether ``text`` may hold something :func:`redact` masks: cheap substring tests before the patterns
    (a log line, a status document, the journal usually hold none)."""
    return ("@" in text or "%40" in text or "uthoriz" in text or "UTHORIZ" in text
            or ("=" in text and ("?" in text or "&" in text)))


def _authority(netloc: str) -> tuple[str | None, str]:
    """(userinfo or None, host[:port]) of a netloc; a percent-encoded ``%40`` counts as the '@' it encodes."""
    low = netloc.lower()
    cut = max(netloc.rfind("@"), low.rfind("%40"))
    if cut < 0:
        return None, netloc
    width = 1 if netloc[cut] == "@" else 3
    return netloc[:cut], netloc[cut + width:]


def _masked_userinfo(scheme: str, userinfo: str) -> str:
    if scheme.lower() in SSH_SCHEMES:
        user, sep, _ = userinfo.partition(":")
        return f"{user}:{MASK}" if sep else user
    return MASK


def redact_url(url: str) -> str:
    """``url`` without its userinfo (kept for SSH logins, password masked) and secret query values."""
    try:
        parts: SplitResult = urlsplit(url)
    except ValueError:
        return redact(url)
    if not parts.scheme or not parts.netloc:
        return redact(url)  # scp-style (git@host:path): the user is the SSH login
    netloc = parts.netloc
    userinfo, host = _authority(netloc)
    if userinfo is not None:
        netloc = f"{_masked_userinfo(parts.scheme, userinfo)}@{host}"
    query = "&".join(
        f"{k}={MASK}" if "=" in kv and _SECRET_PARAM.search(k := kv.split("=", 1)[0]) else kv
        for kv in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with URL userinfo (see :func:`redact_url`), secret query values, ``Authorization`` values and
    ``secrets`` masked."""
    def userinfo(m: re.Match[str]) -> str:
        scheme = m.group("scheme")
        return f"{scheme}{_masked_userinfo(scheme[:-3], m.group('userinfo'))}@"

    out = text
    if _maybe_secret(text):
        out = _URL_USERINFO.sub(userinfo, out)
        out = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, out)
        out = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, out)
    for s in secrets:
        if s and len(s) >= 4:
            out = out.replace(s, MASK)
    return out


def redact_tree(obj: Any) -> Any:
    """``obj`` (dicts, lists, strings, scalars) with :func:`redact` applied to every string, keys included.
    Returns ``obj`` itself when nothing needed masking (no copy on the common path: one C-encoded JSON text is
    tested, and the tree is walked only when that text may hold a secret)."""
    if not isinstance(obj, str):
        try:
            if not _maybe_secret(json.dumps(obj, default=str)):
                return obj
        except (TypeError, ValueError):  # a circular reference: walk
            pass
    return _redact_tree(obj)


def _redact_tree(obj: Any) -> Any:
    if isinstance(obj, str):
        return redact(obj) if _maybe_secret(obj) else obj
    if isinstance(obj, dict):
        out_d: dict[Any, Any] | None = None
        for i, (k, v) in enumerate(obj.items()):
            k2, v2 = _redact_tree(k), _redact_tree(v)
            if out_d is None and (k2 is not k or v2 is not v):
                out_d = dict(list(obj.items())[:i])
            if out_d is not None:
                out_d[k2] = v2
        return obj if out_d is None else out_d
    if isinstance(obj, (list, tuple)):
        items = [_redact_tree(v) for v in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return type(obj)(items)
    return obj


def userinfo_problem(url: str, *, ssh_login: bool = False) -> str | None:
    """Why ``url`` must be refused for carrying userinfo (``user@``, ``token@``, ``user:pass@``, percent-encoded
    ``%40``, any scheme case), or None. ``ssh_login``: an SSH URL's user name (``ssh://git@host/…``) is the login,
    not a secret, and is allowed (a password with it is not); scp-like ``git@host:path`` has no scheme and is
    never userinfo."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None  # not a URL this check can read; the schema or the client refuses it
    if not parts.scheme or not parts.netloc:
        return None
    userinfo, _host = _authority(parts.netloc)
    if userinfo is None:
        return None
    if ssh_login and parts.scheme.lower() in SSH_SCHEMES:
        if ":" in userinfo or "%3a" in userinfo.lower():
            return "a password with the SSH login (ssh takes a key: credentials.sshKeyFile)"
        return None
    return "userinfo (a user name, token or password before '@')"


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
