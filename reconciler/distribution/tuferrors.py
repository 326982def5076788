"""The TUF client's failures: one exception per documented reason, and the pure mapping from python-tuf's and
the network's exceptions to them (:func:`translate`). Each carries the CamelCase ``reason`` the agent reports.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable

import urllib3
from tuf.api import exceptions as tufexc

from reconciler.core.credentials import CredentialError
from reconciler.core.reasons import AUTHENTICATION_FAILED, CLIENT_CERTIFICATE_REFUSED, TLS_VERIFICATION_FAILED
from reconciler.core.redact import redact


class TufClientError(Exception):
    """A failed refresh or download; ``reason`` is a short CamelCase code, ``str()`` a clear message."""

    reason = "TufError"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MetadataExpired(TufClientError):
    reason = "MetadataExpired"


class BadSignature(TufClientError):
    reason = "BadSignature"


class RollbackAttack(TufClientError):
    reason = "RollbackAttack"


class MetadataMismatch(TufClientError):
    reason = "MetadataMismatch"


class BadMetadata(TufClientError):
    reason = "BadMetadata"


class TargetNotFound(TufClientError):
    reason = "TargetNotFound"


class TargetHashMismatch(TufClientError):
    reason = "TargetHashMismatch"


class LengthExceeded(TufClientError):
    reason = "LengthExceeded"


class InsufficientDiskSpace(TufClientError):
    reason = "InsufficientDiskSpace"


class DecryptionFailed(TufClientError):
    reason = "DecryptionFailed"


class RepositoryUnavailable(TufClientError):
    reason = "RepositoryUnavailable"


class SlowRetrieval(TufClientError):
    reason = "SlowRetrieval"


class StoreCorrupted(TufClientError):
    reason = "StoreCorrupted"


class AuthenticationFailed(TufClientError):
    reason = AUTHENTICATION_FAILED


class TLSVerificationFailed(TufClientError):
    reason = TLS_VERIFICATION_FAILED


class ClientCertificateRefused(TufClientError):
    reason = CLIENT_CERTIFICATE_REFUSED


_EXPECTED_GOT = re.compile(r"(\d+)\D+?(\d+)")


def translate(exc: BaseException, what: str) -> TufClientError:
    """Map a python-tuf / network exception to a :class:`TufClientError` (pure function)."""
    if isinstance(exc, TufClientError):
        return exc
    msg = redact(f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}")
    if isinstance(exc, CredentialError):
        return TufClientError(f"{what}: {exc}", exc.reason)
    if isinstance(exc, tufexc.DownloadHTTPError) and exc.status_code in (401, 403):
        return AuthenticationFailed(f"{what}: the repository refused the credentials (HTTP {exc.status_code}); "
                                    "check tuf.credentials")
    refused = _chain_find(exc, lambda e: getattr(e, "client_certificate_refused", False))
    if refused is not None:  # the fetcher's words: the server, and whether a certificate was sent
        return ClientCertificateRefused(redact(f"{what}: {refused}; set tuf.credentials.clientCertFile and "
                                               "clientKeyFile"))
    tls = _tls_cause(exc)
    if tls is not None:
        return TLSVerificationFailed(f"{what}: TLS verification failed ({tls}); check tuf.credentials.caFile")
    if isinstance(exc, tufexc.ExpiredMetadataError):
        return MetadataExpired(f"{what}: metadata expired ({exc}); a freeze attack or a repository not refreshed")
    if isinstance(exc, tufexc.UnsignedMetadataError):
        return BadSignature(f"{what}: metadata not signed by a trusted key threshold ({exc})")
    if isinstance(exc, tufexc.BadVersionNumberError):
        text = str(exc)
        m = _EXPECTED_GOT.search(text)
        # ".json version" only appears in the snapshot's own rollback check (a listed role went backwards).
        if "must be >=" in text or "Expected root" in text or ".json version" in text:
            return RollbackAttack(f"{what}: older metadata than already trusted ({exc})")
        if m and "Expected" in text and int(m.group(2)) < int(m.group(1)):
            return RollbackAttack(f"{what}: served metadata older than the snapshot lists ({exc})")
        return MetadataMismatch(f"{what}: metadata versions do not match the snapshot ({exc})")
    if isinstance(exc, tufexc.LengthOrHashMismatchError):
        return MetadataMismatch(f"{what}: metadata does not match the hashes in the snapshot/timestamp ({exc})")
    if isinstance(exc, tufexc.DownloadLengthMismatchError):
        return LengthExceeded(f"{what}: server sent more data than the signed length ({exc})")
    if isinstance(exc, tufexc.SlowRetrievalError):
        return SlowRetrieval(redact(f"{what}: too slow: {exc}"))
    if isinstance(exc, tufexc.DownloadHTTPError):
        return RepositoryUnavailable(f"{what}: HTTP {exc.status_code} from the repository")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return InsufficientDiskSpace(f"{what}: disk full while writing ({exc.strerror})")
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
        return TufClientError(f"{what}: local I/O error ({exc})", "LocalIOError")
    if isinstance(exc, (tufexc.DownloadError, urllib3.exceptions.HTTPError, ConnectionError)):
        cause = exc.__cause__ or exc
        return RepositoryUnavailable(redact(f"{what}: repository unreachable ({type(cause).__name__}: {cause})"))
    if isinstance(exc, tufexc.RepositoryError):
        return BadMetadata(f"{what}: invalid metadata ({exc})")
    return TufClientError(msg)


def _chain_find(exc: BaseException, match: Callable[[BaseException], bool]) -> BaseException | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if match(cur):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _tls_cause(exc: BaseException) -> str | None:
    """The certificate problem somewhere in ``exc``'s chain, or None."""
    import ssl

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate verify failed"
        if isinstance(cur, urllib3.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return "certificate verify failed"
        nxt = getattr(cur, "reason", None)
        cur = cur.__cause__ or (nxt if isinstance(nxt, BaseException) else None) or cur.__context__
    return None
