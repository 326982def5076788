"""The simulator's shared TUF signature checks: identical bytes under identical keys are checked once per
process; anything else — other bytes, other keys, a failed check — is decided by each device on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Timestamp

from reconciler.distribution import tufrepo
from reconciler.distribution.store import ModelStore
from reconciler.simulate.sharedtuf import SharedTufClient, VerifiedMetadata
from tests._tuf_fixtures import Published, published  # noqa: F401

MODEL = b"model v1 " * 1000


def client(p: Published, verified: VerifiedMetadata, name: str) -> SharedTufClient:
    state = p.tmp / name
    return SharedTufClient(state / "tuf", p.metadata_url, p.targets_url, p.provisioned_root,
                           ModelStore(state / "store"), verified=verified)


def test_second_device_reuses_the_checks_but_keeps_its_own_metadata_and_downloads(published: Published) -> None:  # noqa: F811
    path = published.add("model.onnx", MODEL)
    verified = VerifiedMetadata()
    first, second = client(published, verified, "dev-1"), client(published, verified, "dev-2")
    first.refresh()
    assert verified.misses >= 3 and verified.hits == 0  # timestamp, snapshot, targets checked once
    misses = verified.misses
    second.refresh()
    assert verified.misses == misses and verified.hits >= 3
    for dev, c in (("dev-1", first), ("dev-2", second)):
        assert (published.tmp / dev / "tuf" / "targets.json").is_file()  # each device persists its own
        got = c.fetch([path])[path]
        assert got.downloaded and c.load_bytes(got) == MODEL  # and downloads and verifies into its own store


def test_other_bytes_other_keys_and_failed_checks_are_never_served_from_it(published: Published,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    root = Metadata.from_bytes(published.provisioned_root.read_bytes()).signed
    data = published.meta("timestamp.json").read_bytes()
    verified = VerifiedMetadata()
    once = verified.load(Timestamp, data, root)[0]
    assert verified.load(Timestamp, data, root)[0] is once and (verified.hits, verified.misses) == (1, 1)
    doc = json.loads(data)
    doc["signed"]["version"] += 1  # same signatures over other bytes
    tampered = json.dumps(doc).encode()
    for _ in range(2):
        with pytest.raises(UnsignedMetadataError):
            verified.load(Timestamp, tampered, root)
    tufrepo.init_repo(tmp_path / "other", tmp_path / "other-keys")  # a fleet with other keys
    other_root = Metadata.from_bytes((tmp_path / "other" / "metadata" / "1.root.json").read_bytes()).signed
    with pytest.raises(UnsignedMetadataError):
        verified.load(Timestamp, data, other_root)  # the same bytes are not trusted under other keys
    assert verified.misses == 1
