"""Content-addressed model store: ``<root>/sha256/ab/abcdef…`` (read-only blobs).

Workflow: a verified download is staged elsewhere on the same filesystem, then :meth:`ModelStore.add_file`
fsyncs it, makes it read-only and renames it to the path of its digest (atomic: a crash leaves either no blob
or a whole one). Readers call :meth:`ModelStore.read_verified`, which rehashes before handing bytes to a
runtime and quarantines a blob that no longer matches. :meth:`ModelStore.gc` removes blobs that no current or
rollback model needs.

TUF targets are not obliged to list a sha256 hash. For one that lists only others (e.g. sha512), the client
computes sha256 while verifying the download and records ``<root>/alias/<algorithm>/<digest>`` → sha256, so
the next pass finds the blob without downloading it again (:meth:`ModelStore.alias`); :meth:`gc` drops
aliases whose blob is gone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from reconciler.core.fsutil import atomic_write_text, fsync_dir

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_ALIAS_ALG = re.compile(r"^[a-z0-9_-]{1,32}$")
_ALIAS_HEX = re.compile(r"^[0-9a-f]{16,256}$")
_CHUNK = 1 << 20


class StoreError(Exception):
    """Base class of store errors."""


class StoreCorruption(StoreError):
    """A stored blob no longer matches its digest (it has been moved to quarantine)."""

    def __init__(self, digest: str, actual: str) -> None:
        super().__init__(f"stored blob sha256:{digest[:16]}… is corrupt (content hashes to {actual[:16]}…); quarantined")
        self.digest = digest
        self.actual = actual


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a lowercase sha256 hex string, else raise ``ValueError``."""
    if not _DIGEST.match(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ModelStore:
    """Blobs addressed by sha256 under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "sha256"
        self.quarantine_dir = self.root / "quarantine"
        self.aliases = self.root / "alias"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def _alias_path(self, algorithm: str, value: str) -> Path:
        if not _ALIAS_ALG.match(algorithm) or not _ALIAS_HEX.match(value):
            raise ValueError(f"not a hash alias: {algorithm}:{value[:20]!r}")
        return self.aliases / algorithm / value

    def alias(self, algorithm: str, value: str) -> str | None:
        """The sha256 of the blob verified earlier against ``algorithm:value``; None if unknown."""
        try:
            digest = self._alias_path(algorithm, value).read_text().strip()
        except FileNotFoundError:
            return None
        return digest if _DIGEST.match(digest) else None

    def set_alias(self, algorithm: str, value: str, digest: str) -> None:
        """Record that ``algorithm:value`` names blob ``digest`` (written atomically)."""
        atomic_write_text(self._alias_path(algorithm, value), check_digest(digest) + "\n")

    def path_for(self, digest: str) -> Path:
        check_digest(digest)
        return self.blobs / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path_for(digest).stat().st_size

    def verify(self, digest: str) -> bool:
        """Rehash the blob; False when it is missing or corrupt (no side effects)."""
        path = self.path_for(digest)
        try:
            return sha256_file(path) == digest
        except FileNotFoundError:
            return False

    def read_verified(self, digest: str) -> bytes:
        """The blob's bytes after checking them against ``digest``; quarantines and raises on mismatch."""
        path = self.path_for(digest)
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            self.quarantine(digest)
            raise StoreCorruption(digest, actual)
        return data

    def quarantine(self, digest: str) -> Path | None:
        """Move a blob out of the store (kept for inspection); returns its new path, None if absent."""
        src = self.path_for(digest)
        if not src.exists():
            return None
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dst = self.quarantine_dir / digest
        n = 1
        while dst.exists():
            dst = self.quarantine_dir / f"{digest}.{n}"
            n += 1
        os.replace(src, dst)
        fsync_dir(src.parent)
        return dst

    def add_file(self, staging: Path, digest: str) -> Path:
        """Move an already verified ``staging`` file (same filesystem) into the store, read-only.

        The caller has checked the digest while downloading; a blob already present wins and the staging
        file is removed.
        """
        dst = self.path_for(digest)
        staging = Path(staging)
        if dst.exists():
            staging.unlink(missing_ok=True)
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(staging, 0o444)
        try:
            os.replace(staging, dst)
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: staging on another filesystem, copy then rename
                raise
            tmp = dst.with_name(f".{digest}.tmp")
            shutil.copyfile(staging, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dst)
            staging.unlink()
        fsync_dir(dst.parent)
        return dst

    def add_bytes(self, data: bytes) -> str:
        """Store ``data`` and return its digest (used for small metadata-like targets and tests)."""
        digest = hashlib.sha256(data).hexdigest()
        if self.has(digest):
            return digest
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{digest}.add"
        with open(tmp, "wb") as fh:
            fh.write(data)
        self.add_file(tmp, digest)
        return digest

    def digests(self) -> set[str]:
        out: set[str] = set()
        for sub in self.blobs.iterdir():
            if sub.is_dir():
                out.update(p.name for p in sub.iterdir() if _DIGEST.match(p.name))
        return out

    def gc(self, keep: set[str]) -> list[str]:
        """Remove every blob not in ``keep``; returns the removed digests (sorted)."""
        removed = []
        for digest in sorted(self.digests() - set(keep)):
            path = self.path_for(digest)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(digest)
        for sub in self.blobs.iterdir():
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        if removed:
            fsync_dir(self.blobs)
        if self.aliases.is_dir():
            for alias in self.aliases.glob("*/*"):
                try:
                    target = alias.read_text().strip()
                except OSError:
                    continue
                if not _DIGEST.match(target) or not self.has(target):
                    alias.unlink(missing_ok=True)
        return removed
