"""Device side of model distribution: a TUF client that downloads verified targets into the model store.

Each sync cycle calls :meth:`TufClient.refresh`, which builds a new ``tuf.ngclient.Updater`` bootstrapped from
the device's provisioned ``root.json`` (root rotations already trusted are replayed from the metadata dir) and
runs the TUF client workflow (root → timestamp → snapshot → targets). :meth:`TufClient.fetch` then resolves
each target path through TUF (delegations included) and, for targets not yet in the content-addressed
:class:`~reconciler.distribution.store.ModelStore`, streams the file into a staging file named after its digest — resuming
an interrupted transfer with an HTTP Range request — while hashing it; only a file whose length and hashes
match the signed metadata is fsynced and renamed into the store.

Any spec-conformant repository works, not only ones ``modelfleet repo`` writes: ``custom`` is optional, every
declared hash is checked with its own algorithm (sha256, sha512, several at once), and because the store is
addressed by sha256, a target that lists none gets its sha256 computed during the download and recorded as a
store alias, so it is not fetched again while it stays valid. :meth:`TufClient.load_bytes` rehashes the
blob and, for encrypted models, decrypts it in memory.

Every failure is a :class:`TufClientError` with a CamelCase ``reason`` the agent reports in its conditions.
"""

from __future__ import annotations

import hashlib
import queue
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge
from tuf.api import exceptions as tufexc
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from reconciler.core.credentials import Credentials
from reconciler.distribution import modelcrypto
from reconciler.distribution.fetcher import DEFAULT_MIN_RATE, RangeFetcher
from reconciler.distribution.store import ModelStore, StoreCorruption
from reconciler.distribution.tuferrors import (
    BadMetadata,
    DecryptionFailed,
    InsufficientDiskSpace,
    LengthExceeded,
    RepositoryUnavailable,
    StoreCorrupted,
    TargetHashMismatch,
    TargetNotFound,
    TufClientError as TufClientError,  # re-exported: callers catch it from here
    translate,
)

BYTES_DOWNLOADED = Counter("modelfleet_tuf_bytes_downloaded", "Target bytes downloaded by the TUF client")
DOWNLOADS = Counter("modelfleet_tuf_downloads", "Targets downloaded and verified into the model store")
FAILURES = Counter("modelfleet_tuf_failures", "TUF client failures by reason", ["reason"])
IN_PROGRESS = Gauge("modelfleet_tuf_downloads_in_progress", "Target downloads in progress")

_CHUNK = 1 << 20
#: Free space kept on the store's filesystem beyond the download itself.
DISK_RESERVE = 16 << 20
Progress = Callable[[str, int, int], None]  # (target path, bytes done, total bytes)
Clock = Callable[[], datetime]


# ---------------------------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class StoredTarget:
    """A verified target in the model store."""

    path: str
    digest: str
    length: int
    custom: dict[str, Any] = field(default_factory=dict)
    encrypted: bool = False
    store_path: Path = Path()
    downloaded: bool = False  # True when this fetch() transferred it (False: already in the store)


def _origin(url: str) -> str:
    """``scheme://host[:port]/`` of ``url`` (prefix match for the Authorization header)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/"


def target_url_path(path: str, digest: str, consistent: bool) -> str:
    if not consistent:
        return path
    dirname, sep, base = path.rpartition("/")
    return f"{dirname}{sep}{digest}.{base}"


class TufClient:
    """Refresh TUF metadata and fetch verified targets into ``store``; see the module docstring."""

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        targets_url: str,
        trusted_root: Path,
        store: ModelStore,
        *,
        staging_dir: Path | None = None,
        max_concurrent: int = 2,
        timeout: float = 30,
        min_rate: float = DEFAULT_MIN_RATE,
        decryption_key: bytes | None = None,
        credentials: Credentials | None = None,
        clock: Clock | None = None,
        progress: Progress | None = None,
        disk_usage: Callable[[Path], Any] = shutil.disk_usage,
        fetcher: RangeFetcher | None = None,
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.metadata_url = metadata_url.rstrip("/") + "/"
        self.targets_url = targets_url.rstrip("/") + "/"
        self.trusted_root = Path(trusted_root)
        self.store = store
        self.staging_dir = Path(staging_dir) if staging_dir else store.root / "staging"
        self.max_concurrent = max(1, max_concurrent)
        self.decryption_key = decryption_key
        self.clock = clock
        self.progress = progress
        self._disk_usage = disk_usage
        self.fetcher = fetcher or RangeFetcher(timeout=timeout, pool_size=self.max_concurrent + 2,
                                               credentials=credentials, min_rate=min_rate,
                                               auth_origins=(_origin(self.metadata_url), _origin(self.targets_url)))
        self.bytes_downloaded = 0
        self._lock = threading.Lock()
        self._updater: Updater | None = None

    # -- metadata

    def _new_updater(self) -> Updater:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = self.trusted_root.read_bytes()
        except OSError as exc:
            raise BadMetadata(f"cannot read trusted root {self.trusted_root}: {exc.strerror}") from exc
        try:
            updater = Updater(
                str(self.metadata_dir),
                self.metadata_url,
                target_base_url=self.targets_url,
                fetcher=self.fetcher,
                config=UpdaterConfig(app_user_agent="modelfleet"),
                bootstrap=bootstrap,
            )
        except Exception as exc:
            raise translate(exc, "trusted root") from exc
        if self.clock is not None:
            # ngclient checks expiry against the time its trusted set was created; an injected clock (tests,
            # devices with a trusted time source) replaces it before any metadata is loaded.
            updater._trusted_set.reference_time = self.clock().astimezone(timezone.utc)
        return updater

    def refresh(self) -> None:
        """Run the TUF metadata update workflow with a fresh Updater."""
        self._updater = None
        updater = self._new_updater()
        try:
            updater.refresh()
        except Exception as exc:
            err = translate(exc, "metadata refresh")
            FAILURES.labels(err.reason).inc()
            raise err from exc
        self._updater = updater

    def target_info(self, path: str) -> TargetFile:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        try:
            info = self._updater.get_targetinfo(path)
        except Exception as exc:
            err = translate(exc, f"target {path}")
            FAILURES.labels(err.reason).inc()
            raise err from exc
        if info is None:
            FAILURES.labels("TargetNotFound").inc()
            raise TargetNotFound(f"target {path!r} is not signed by any trusted role for that path")
        return info

    @property
    def consistent_snapshot(self) -> bool:
        return bool(self._updater and self._updater._trusted_set.root.consistent_snapshot)

    # -- targets

    def fetch(self, paths: list[str]) -> dict[str, StoredTarget]:
        """Resolve ``paths`` through TUF and download what the store lacks (bounded concurrency).

        Raises the first failure (in ``paths`` order) after all started downloads finished; verified
        targets already moved into the store stay there.
        """
        infos = [(p, self.target_info(p)) for p in paths]
        result: dict[str, StoredTarget] = {}
        missing: dict[str, tuple[str, TargetFile]] = {}  # staging key → first path that needs it
        keys: dict[str, str] = {}
        for p, info in infos:
            digest = self._known_digest(info, p)
            keys[p] = key = digest or _staging_key(info, p)
            if (digest is None or not self.store.has(digest)) and key not in missing:
                missing[key] = (p, info)
        self._preflight([(key, info) for key, (_, info) in missing.items()])
        errors: dict[str, BaseException] = {}
        if len(missing) == 1 or (missing and self.max_concurrent == 1):  # one at a time: no pool thread needed
            for k, (p, info) in missing.items():
                try:
                    self._download(p, info, k)
                except Exception as exc:  # noqa: BLE001 - raised below in paths order, as from the pool
                    errors[k] = exc
        elif missing:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrent, len(missing))) as pool:
                futs = {k: pool.submit(self._download, p, info, k) for k, (p, info) in missing.items()}
                for k, fut in futs.items():
                    exc = fut.exception()
                    if exc is not None:
                        errors[k] = exc
        for p, info in infos:
            key = keys[p]
            if key in errors:
                raise errors[key]
            digest = self._known_digest(info, p)
            if digest is None:  # pragma: no cover - a successful download always records the digest
                raise StoreCorrupted(f"target {p}: downloaded but not found in the model store")
            custom = custom_of(info)
            result[p] = StoredTarget(
                p, digest, info.length, custom, bool(custom.get("encrypted")), self.store.path_for(digest),
                downloaded=key in missing,
            )
        return result

    def _known_digest(self, info: TargetFile, path: str) -> str | None:
        """The store digest (sha256) of ``info``: signed, or computed by an earlier verified download."""
        declared = _declared_hashes(info, path)
        if "sha256" in declared:
            return declared["sha256"]
        alg, value = _alias_hash(declared, path)
        return self.store.alias(alg, value)

    def _preflight(self, keyed: list[tuple[str, TargetFile]]) -> None:
        if not keyed:
            return
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        need = 0
        for key, info in keyed:
            staged = self.staging_dir / f"{key}.part"
            have = staged.stat().st_size if staged.exists() else 0
            need += max(0, info.length - min(have, info.length))
        free = self._disk_usage(self.staging_dir).free
        if need + DISK_RESERVE > free:
            FAILURES.labels("InsufficientDiskSpace").inc()
            raise InsufficientDiskSpace(
                f"not enough disk space for {len(keyed)} model file(s): need {_mib(need + DISK_RESERVE)} "
                f"(incl. {_mib(DISK_RESERVE)} reserve), {_mib(free)} free on {self.staging_dir}"
            )

    def _download(self, path: str, info: TargetFile, key: str) -> None:
        IN_PROGRESS.inc()
        try:
            self._download_inner(path, info, key)
            DOWNLOADS.inc()
        except BaseException as exc:
            err = translate(exc, f"target {path}")
            FAILURES.labels(err.reason).inc()
            if err is exc:
                raise
            raise err from exc
        finally:
            IN_PROGRESS.dec()

    def _download_inner(self, path: str, info: TargetFile, key: str) -> None:
        declared = _declared_hashes(info, path)
        staged = self.staging_dir / f"{key}.part"
        url = self.targets_url + target_url_path(path, next(iter(info.hashes.values())), self.consistent_snapshot)
        have = staged.stat().st_size if staged.exists() else 0
        if have > info.length:
            staged.unlink()
            have = 0
        # Every declared hash is checked with its own algorithm; sha256 is always computed because the store
        # is addressed by it, whether or not the repository lists it.
        hasher = _HashPipe(sorted({"sha256", *(a for a in declared if a in hashlib.algorithms_available)}),
                           threaded=info.length > _CHUNK)
        start, chunks = self.fetcher.fetch_from(url, have, info.length) if have < info.length else (have, iter(()))
        try:
            with open(staged, "r+b" if staged.exists() else "w+b") as fh:
                # Re-hash the bytes kept from an interrupted transfer, then append the rest.
                fh.truncate(start)
                fh.seek(0)
                while start and (block := fh.read(_CHUNK)):
                    hasher.update(block)
                fh.seek(start)
                done = start
                for chunk in chunks:
                    done += len(chunk)
                    if done > info.length:
                        fh.close()
                        staged.unlink(missing_ok=True)
                        raise LengthExceeded(
                            f"target {path}: server sent more than the signed length of {info.length} bytes"
                        )
                    fh.write(chunk)
                    hasher.update(chunk)
                    with self._lock:
                        self.bytes_downloaded += len(chunk)
                    BYTES_DOWNLOADED.inc(len(chunk))
                    if self.progress is not None:
                        self.progress(path, done, info.length)
                fh.flush()
                if done < info.length:
                    raise RepositoryUnavailable(
                        f"target {path}: transfer ended after {done} of {info.length} bytes; will resume"
                    )
                digests = hasher.hexdigests()
                bad = [alg for alg, value in declared.items() if alg in digests and digests[alg] != value]
                unchecked = [alg for alg in declared if alg not in digests]
                if unchecked:
                    # Algorithms hashlib lacks: python-tuf's own verification (securesystemslib) decides.
                    fh.seek(0)
                    try:
                        info.verify_length_and_hashes(fh)
                    except tufexc.LengthOrHashMismatchError:
                        bad += unchecked
        finally:
            hasher.close()
        if bad:
            staged.unlink(missing_ok=True)
            raise TargetHashMismatch(
                f"target {path}: downloaded file does not match its signed {', '.join(bad)} hash (tampered?)"
            )
        digest = digests["sha256"]
        self.store.add_file(staged, digest)
        if "sha256" not in declared:
            self.store.set_alias(*_alias_hash(declared, path), digest)

    # -- loading

    def load_bytes(self, t: StoredTarget) -> bytes:
        """The target's plaintext: digest checked, decrypted in memory when encrypted."""
        try:
            data = self.store.read_verified(t.digest)
        except StoreCorruption as exc:
            FAILURES.labels("StoreCorrupted").inc()
            raise StoreCorrupted(f"target {t.path}: {exc}; it will be downloaded again") from exc
        except FileNotFoundError as exc:
            raise TargetNotFound(f"target {t.path} is not in the model store") from exc
        if not t.encrypted:
            return data
        if self.decryption_key is None:
            FAILURES.labels("DecryptionFailed").inc()
            raise DecryptionFailed(f"target {t.path} is encrypted but this device has no decryption key")
        try:
            plain = modelcrypto.decrypt(data, self.decryption_key)
        except modelcrypto.DecryptionError as exc:
            FAILURES.labels("DecryptionFailed").inc()
            raise DecryptionFailed(f"target {t.path}: {exc}") from exc
        want = t.custom.get("plaintext_sha256")
        if want and hashlib.sha256(plain).hexdigest() != want:
            FAILURES.labels("DecryptionFailed").inc()
            raise DecryptionFailed(f"target {t.path}: decrypted model does not match its signed plaintext hash")
        return plain


class _HashPipe:
    """Hash chunks on a worker thread (hashlib releases the GIL) so hashing overlaps network and disk I/O;
    ``threaded=False`` (a file of one chunk, nothing to overlap): in the caller's thread."""

    def __init__(self, algorithms: list[str], threaded: bool = True) -> None:
        self._hashers = {alg: hashlib.new(alg) for alg in algorithms}
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="tuf-hash", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash(chunk)

    def _hash(self, chunk: bytes) -> None:
        for h in self._hashers.values():
            h.update(chunk)

    def update(self, chunk: bytes) -> None:
        if self._thread is None:
            self._hash(chunk)
        else:
            self._queue.put(chunk)

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigests(self) -> dict[str, str]:
        self.close()
        return {alg: h.hexdigest() for alg, h in self._hashers.items()}


def custom_of(info: TargetFile) -> dict[str, Any]:
    """The target's ``custom`` object; ``{}`` when absent (it is optional in the TUF specification)."""
    custom = info.custom
    return dict(custom) if isinstance(custom, dict) else {}


_HEX = re.compile(r"^[0-9a-f]{16,256}$")


def _declared_hashes(info: TargetFile, path: str) -> dict[str, str]:
    """The signed hashes, lowercased; a target must list at least one well-formed hex digest."""
    declared: dict[str, str] = {}
    for alg, value in info.hashes.items():
        if not isinstance(value, str) or not _HEX.match(value.lower()) or not re.match(r"^[\w.-]{1,32}$", alg):
            raise BadMetadata(f"target {path}: malformed {alg!r} hash in the signed metadata")
        declared[alg] = value.lower()
    if not declared:
        raise BadMetadata(f"target {path}: signed metadata lists no hash")
    return declared


def _alias_hash(declared: dict[str, str], path: str) -> tuple[str, str]:
    """The (algorithm, digest) that names a target without sha256 in the store's alias index."""
    usable = sorted(alg for alg in declared if alg in hashlib.algorithms_available)
    if not usable:
        raise BadMetadata(f"target {path}: none of its hash algorithms ({', '.join(sorted(declared))}) is supported")
    return usable[0], declared[usable[0]]


def _staging_key(info: TargetFile, path: str) -> str:
    alg, value = _alias_hash(_declared_hashes(info, path), path)
    return f"{alg}-{value}"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"




