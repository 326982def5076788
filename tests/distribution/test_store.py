"""Content-addressed model store: layout, read-only blobs, verification, quarantine, garbage collection."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from reconciler.distribution.store import ModelStore, StoreCorruption


def _stage(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    p = tmp_path / f"staged-{len(data)}"
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


def test_add_file_lands_read_only_under_its_digest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    staging, digest = _stage(tmp_path, b"model bytes")
    path = store.add_file(staging, digest)
    assert path == tmp_path / "store" / "sha256" / digest[:2] / digest
    assert path.read_bytes() == b"model bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert not staging.exists()
    assert store.has(digest) and store.verify(digest)
    assert store.read_verified(digest) == b"model bytes"


def test_adding_a_present_blob_keeps_it_and_drops_the_staging_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    digest = store.add_bytes(b"same")
    staging, _ = _stage(tmp_path, b"same")
    store.add_file(staging, digest)
    assert not staging.exists()
    assert store.digests() == {digest}


def test_corrupt_blob_is_quarantined_and_reported(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    digest = store.add_bytes(b"good weights")
    path = store.path_for(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"evil weights")
    assert not store.verify(digest)
    with pytest.raises(StoreCorruption, match="corrupt"):
        store.read_verified(digest)
    assert not store.has(digest)
    assert (tmp_path / "store" / "quarantine" / digest).read_bytes() == b"evil weights"


def test_gc_keeps_only_needed_blobs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    current, previous, old = (store.add_bytes(b) for b in (b"v3", b"v2", b"v1"))
    removed = store.gc({current, previous})
    assert removed == [old]
    assert store.digests() == {current, previous}
    assert store.gc({current, previous}) == []


def test_rejects_non_digest_names(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ValueError, match="sha256"):
        store.path_for("../../etc/passwd")
    assert not store.verify("0" * 64)
