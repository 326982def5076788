"""The CA bundle git needs for ``extraCaFile``: the system store (or ``caFile``) plus the extra CA, in one file.

git's ``http.sslCAInfo``/``GIT_SSL_CAINFO`` replaces libcurl's store, and whether libcurl still reads its CA
*directory* next to the file depends on its TLS backend and build. One bundle holding both is what every
build reads the same way. It is written under the agent's state dir (``tls/``), named by the digest of its
content, through a temp file, fsync and rename: git processes running meanwhile keep reading a complete
file, and a changed source (a renewed system store, a rotated CA) yields a new name on the next git run.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from pathlib import Path

from reconciler.core.credentials import CredentialError
from reconciler.core.fsutil import fsync_dir

MAX_BUNDLE_BYTES = 16 << 20
_KEEP = 8  # bundles kept in the directory (older ones are the previous contents)


def system_bundle() -> Path:
    """The system's CA bundle file as OpenSSL finds it (Debian: /etc/ssl/certs/ca-certificates.crt)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    raise CredentialError("no system CA bundle found to add extraCaFile to (install ca-certificates, or use caFile)")


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise CredentialError(f"cannot read CA file {path}: {exc.strerror}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise CredentialError(f"CA file {path} is larger than {MAX_BUNDLE_BYTES} bytes")
    return data


def combined_bundle(base: Path | None, extra: Path, directory: Path | None) -> Path:
    """The path of a bundle holding ``base`` (None: the system's) then ``extra``, written if not there yet.

    ``directory`` None (an operator command, no state dir): a private directory of this process."""
    data = _read(base or system_bundle()).rstrip(b"\n") + b"\n" + _read(extra).rstrip(b"\n") + b"\n"
    out_dir = directory or _private_dir()
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = out_dir / f"ca-{hashlib.sha256(data).hexdigest()[:24]}.pem"
    if target.is_file():
        return target
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".ca-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)
    _prune(out_dir, keep=target)
    return target


def _prune(directory: Path, keep: Path) -> None:
    old = sorted((p for p in directory.glob("ca-*.pem") if p != keep), key=lambda p: p.stat().st_mtime)
    for p in old[:max(0, len(old) - (_KEEP - 1))]:
        p.unlink(missing_ok=True)


_private: Path | None = None


def _private_dir() -> Path:
    global _private
    if _private is None:
        _private = Path(tempfile.mkdtemp(prefix="modelfleet-ca-"))
    return _private
