"""Target downloads: Range resume after a killed transfer, disk-space preflight, no re-downloads, bounded
concurrency with progress and metrics, encrypted models decrypted in memory only, store self-healing."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from reconciler.distribution import modelcrypto
from reconciler.distribution.tufclient import TufClientError
from tests._tuf_fixtures import Published, published  # noqa: F401

BIG = os.urandom(1_000_000)


def _target_requests(published: Published) -> list[tuple[str, str | None]]:  # noqa: F811
    return [r for r in published.server.requests if r[0].startswith("/targets/")]


def test_killed_download_resumes_with_a_range_request(published: Published) -> None:  # noqa: F811
    path = published.add("big.onnx", BIG)
    client = published.client()
    client.refresh()
    published.server.truncate_after = 300_000
    with pytest.raises(TufClientError) as info:
        client.fetch([path])
    assert info.value.reason == "RepositoryUnavailable"
    staged = list(client.staging_dir.iterdir())
    assert len(staged) == 1 and staged[0].stat().st_size == 300_000
    published.server.truncate_after = None
    published.server.reset_stats()
    before = client.bytes_downloaded
    t = client.fetch([path])[path]
    assert client.load_bytes(t) == BIG
    assert _target_requests(published)[-1][1] == "bytes=300000-"
    assert client.bytes_downloaded - before == len(BIG) - 300_000
    assert not list(client.staging_dir.iterdir())


def test_corrupted_staged_bytes_fail_verification_then_recover(published: Published) -> None:  # noqa: F811
    path = published.add("big.onnx", BIG)
    client = published.client()
    client.refresh()
    published.server.truncate_after = 200_000
    with pytest.raises(TufClientError):
        client.fetch([path])
    (staged,) = client.staging_dir.iterdir()
    staged.write_bytes(b"\xff" * 200_000)  # a bit-flipped partial file on the device
    published.server.truncate_after = None
    with pytest.raises(TufClientError) as info:
        client.fetch([path])
    assert info.value.reason == "TargetHashMismatch"
    t = client.fetch([path])[path]  # the bad partial was discarded: a full download now succeeds
    assert client.load_bytes(t) == BIG


def test_disk_space_preflight(published: Published) -> None:  # noqa: F811
    path = published.add("big.onnx", BIG)
    usage = namedtuple("usage", "total used free")
    # A full disk cannot be created without privileges; the fault is injected at the disk_usage edge.
    client = published.client(disk_usage=lambda p: usage(10 << 20, 10 << 20, 512 << 10))
    client.refresh()
    published.server.reset_stats()
    with pytest.raises(TufClientError) as info:
        client.fetch([path])
    assert info.value.reason == "InsufficientDiskSpace"
    assert "free" in str(info.value) and "MiB" in str(info.value)
    assert _target_requests(published) == []


def test_second_sync_transfers_no_target_bytes(published: Published) -> None:  # noqa: F811
    path = published.add("big.onnx", BIG)
    client = published.client()
    client.refresh()
    assert client.fetch([path])[path].downloaded
    published.server.reset_stats()
    before = client.bytes_downloaded
    client.refresh()
    t = client.fetch([path])[path]
    assert not t.downloaded and client.bytes_downloaded == before
    assert _target_requests(published) == []


def test_concurrent_downloads_progress_and_metrics(published: Published) -> None:  # noqa: F811
    datas = {f"m{i}.onnx": os.urandom(200_000 + i) for i in range(4)}
    paths = [published.add(n, d, prefix="fleet/m") for n, d in datas.items()]
    events: list[tuple[str, int, int]] = []
    client = published.client(max_concurrent=2, progress=lambda p, d, t: events.append((p, d, t)))
    bytes_before = REGISTRY.get_sample_value("modelfleet_tuf_bytes_downloaded_total") or 0.0
    done_before = REGISTRY.get_sample_value("modelfleet_tuf_downloads_total") or 0.0
    client.refresh()
    got = client.fetch(paths)
    assert [client.load_bytes(got[p]) for p in paths] == list(datas.values())
    for p in paths:
        assert (p, got[p].length, got[p].length) in events
    total = sum(len(d) for d in datas.values())
    assert REGISTRY.get_sample_value("modelfleet_tuf_bytes_downloaded_total") - bytes_before == total
    assert REGISTRY.get_sample_value("modelfleet_tuf_downloads_total") - done_before == 4
    assert REGISTRY.get_sample_value("modelfleet_tuf_downloads_in_progress") == 0


def test_failures_are_counted_by_reason(published: Published) -> None:  # noqa: F811
    client = published.client()
    client.refresh()
    before = REGISTRY.get_sample_value("modelfleet_tuf_failures_total", {"reason": "TargetNotFound"}) or 0.0
    with pytest.raises(TufClientError):
        client.fetch(["no/such/model.onnx"])
    assert REGISTRY.get_sample_value("modelfleet_tuf_failures_total", {"reason": "TargetNotFound"}) == before + 1


def test_encrypted_model_round_trip_never_writes_plaintext(published: Published, tmp_path: Path) -> None:  # noqa: F811
    key = modelcrypto.generate_key()
    plain = b"secret-weights:" + os.urandom(50_000)
    path = published.add("secret.onnx", plain, encrypt_key=key, model="secret", version="1.0")
    client = published.client(decryption_key=key)
    client.refresh()
    t = client.fetch([path])[path]
    assert t.encrypted and t.custom["plaintext_sha256"]
    assert client.load_bytes(t) == plain
    device_dir = published.tmp / "device"
    for f in device_dir.rglob("*"):
        if f.is_file():
            assert b"secret-weights:" not in f.read_bytes(), f
    assert b"secret-weights:" not in published.target_file(path).read_bytes()


def test_wrong_decryption_key_is_a_clear_error(published: Published) -> None:  # noqa: F811
    path = published.add("secret.onnx", b"weights" * 100, encrypt_key=modelcrypto.generate_key())
    client = published.client(decryption_key=modelcrypto.generate_key())
    client.refresh()
    t = client.fetch([path])[path]
    with pytest.raises(TufClientError) as info:
        client.load_bytes(t)
    assert info.value.reason == "DecryptionFailed" and "wrong decryption key" in str(info.value)
    assert client.store.has(t.digest)  # the blob itself is fine; nothing is lost
    nokey = published.client("device2")
    nokey.refresh()
    with pytest.raises(TufClientError, match="no decryption key"):
        nokey.load_bytes(nokey.fetch([path])[path])


def test_altered_ciphertext_is_rejected() -> None:
    key = modelcrypto.generate_key()
    blob = bytearray(modelcrypto.encrypt(b"weights", key))
    blob[-1] ^= 1
    with pytest.raises(modelcrypto.DecryptionError, match="altered ciphertext"):
        modelcrypto.decrypt(bytes(blob), key)
    with pytest.raises(modelcrypto.DecryptionError, match="not an encrypted model"):
        modelcrypto.decrypt(b"plain onnx", key)


def test_key_files(tmp_path: Path) -> None:
    key = modelcrypto.generate_key()
    modelcrypto.write_key_file(tmp_path / "k", key)
    assert modelcrypto.load_key_file(tmp_path / "k") == key
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad").write_text("short")
    with pytest.raises(modelcrypto.KeyFileError, match="256-bit"):
        modelcrypto.load_key_file(tmp_path / "bad")


def test_corrupt_store_blob_is_quarantined_and_fetched_again(published: Published) -> None:  # noqa: F811
    path = published.add("m.onnx", b"weights" * 1000)
    client = published.client()
    client.refresh()
    t = client.fetch([path])[path]
    os.chmod(t.store_path, 0o644)
    t.store_path.write_bytes(b"rotten" * 1000)
    with pytest.raises(TufClientError) as info:
        client.load_bytes(t)
    assert info.value.reason == "StoreCorrupted"
    again = client.fetch([path])[path]
    assert again.downloaded and client.load_bytes(again) == b"weights" * 1000
