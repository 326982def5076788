"""Device TUF client against a real repository on 127.0.0.1: every attack is refused with a clear reason and
leaves the previously installed model in the store."""

from __future__ import annotations

import shutil

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile

from reconciler.distribution import tufrepo
from reconciler.distribution.tufclient import StoredTarget, TufClient, TufClientError
from tests._tuf_fixtures import FakeClock, Published, published  # noqa: F401

V1 = b"model v1 " * 1000
V2 = b"model v2 " * 1000


def _install_v1(published: Published, client: TufClient) -> StoredTarget:  # noqa: F811
    path = published.add("model.onnx", V1, prefix="vision/cls/1.0")
    client.refresh()
    return client.fetch([path])[path]


def _assert_still_installed(client: TufClient, t: StoredTarget) -> None:
    assert client.store.has(t.digest)
    assert client.load_bytes(t) == V1


def _reason(fn) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(TufClientError) as info:
        fn()
    return info.value.reason, str(info.value)


def test_clean_install_and_update(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    assert t1.downloaded and t1.custom["format"] == "onnx" and not t1.encrypted
    p2 = published.add("model.onnx", V2, prefix="vision/cls/2.0", model="cls", version="2.0")
    client.refresh()
    t2 = client.fetch([p2])[p2]
    assert client.load_bytes(t2) == V2 and t2.custom["version"] == "2.0"


def test_tampered_target_is_rejected(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    p2 = published.add("model.onnx", V2, prefix="vision/cls/2.0")
    f = published.target_file(p2)
    f.write_bytes(b"X" * len(V2))  # same length, different bytes
    client.refresh()
    reason, msg = _reason(lambda: client.fetch([p2]))
    assert reason == "TargetHashMismatch" and "vision/cls/2.0/model.onnx" in msg
    _assert_still_installed(client, t1)
    assert client.store.digests() == {t1.digest}
    assert not any(client.staging_dir.iterdir())


def test_arbitrary_target_is_not_found(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    evil = published.dir / "targets" / "vision" / "evil.onnx"
    evil.write_bytes(b"evil")
    reason, msg = _reason(lambda: client.fetch(["vision/evil.onnx"]))
    assert reason == "TargetNotFound" and "vision/evil.onnx" in msg
    _assert_still_installed(client, t1)


def test_endless_data_is_cut_at_the_signed_length(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    p2 = published.add("model.onnx", V2, prefix="vision/cls/2.0")
    published.target_file(p2).write_bytes(V2 + b"\0" * 5_000_000)
    client.refresh()
    reason, _ = _reason(lambda: client.fetch([p2]))
    assert reason == "LengthExceeded"
    assert client.bytes_downloaded - t1.length <= len(V2) + (1 << 20)
    _assert_still_installed(client, t1)


def test_rolled_back_timestamp(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    old = published.meta("timestamp.json").read_bytes()
    published.add("model.onnx", V2, prefix="vision/cls/2.0")
    client.refresh()
    published.meta("timestamp.json").write_bytes(old)
    reason, msg = _reason(client.refresh)
    assert reason == "RollbackAttack" and "timestamp" in msg
    _assert_still_installed(client, t1)


def test_rolled_back_snapshot(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    snap_v = Metadata.from_file(str(published.meta("snapshot.json"))).signed.version
    published.add("model.onnx", V2, prefix="vision/cls/2.0")
    # The attacker serves the old (validly signed) snapshot where the new one should be.
    shutil.copyfile(published.meta(f"{snap_v}.snapshot.json"), published.meta(f"{snap_v + 1}.snapshot.json"))
    reason, _ = _reason(client.refresh)
    assert reason == "RollbackAttack"
    _assert_still_installed(client, t1)


def test_rolled_back_targets(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    tv = Metadata.from_file(str(published.meta("targets.json"))).signed.version
    published.add("model.onnx", V2, prefix="vision/cls/2.0")
    shutil.copyfile(published.meta(f"{tv}.targets.json"), published.meta(f"{tv + 1}.targets.json"))
    reason, _ = _reason(client.refresh)
    assert reason == "RollbackAttack"
    _assert_still_installed(client, t1)


def test_mix_and_match_snapshot(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    published.add("model.onnx", V2, prefix="vision/cls/2.0")
    ts_mid = published.meta("timestamp.json").read_bytes()
    tv = Metadata.from_file(str(published.meta("targets.json"))).signed.version
    published.add("other.onnx", V2, prefix="vision/other/1.0")
    # Timestamp/snapshot of one state, targets metadata of a later state.
    published.meta("timestamp.json").write_bytes(ts_mid)
    shutil.copyfile(published.meta(f"{tv + 1}.targets.json"), published.meta(f"{tv}.targets.json"))
    reason, msg = _reason(client.refresh)
    assert reason == "MetadataMismatch" and "snapshot" in msg
    _assert_still_installed(client, t1)


def test_freeze_attack_expired_metadata(published: Published) -> None:  # noqa: F811
    clock = FakeClock()
    client = published.client(clock=clock)
    t1 = _install_v1(published, client)
    clock.advance(days=2)  # the server keeps serving the same (now stale) timestamp
    reason, msg = _reason(client.refresh)
    assert reason == "MetadataExpired" and "expired" in msg
    _assert_still_installed(client, t1)


def test_metadata_signed_by_untrusted_key(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    md = Metadata.from_file(str(published.meta("timestamp.json")))
    md.signed.version += 1
    md.sign(CryptoSigner.generate_ed25519())  # replaces the valid signature
    md.to_file(str(published.meta("timestamp.json")))
    reason, msg = _reason(client.refresh)
    assert reason == "BadSignature" and "timestamp" in msg
    _assert_still_installed(client, t1)


def test_key_rotation_done_right_is_accepted(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    tufrepo.rotate_key(published.dir, [published.keys], [published.root_keys], "root")
    tufrepo.rotate_key(published.dir, [published.keys], [published.root_keys], "timestamp")
    tufrepo.rotate_key(published.dir, [published.keys], [published.root_keys], "targets")
    p2 = published.add("model.onnx", V2, prefix="vision/cls/2.0")
    client.refresh()
    assert client.load_bytes(client.fetch([p2])[p2]) == V2
    trusted = Metadata.from_file(str(client.metadata_dir / "root.json"))
    assert trusted.signed.version == 4
    assert tufrepo.verify_repo(published.dir) == []
    _assert_still_installed(client, t1)


def test_key_rotation_done_wrong_is_rejected(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    root = Metadata.from_file(str(published.meta("root.json")))
    new = CryptoSigner.generate_ed25519()
    for kid in list(root.signed.roles["root"].keyids):
        root.signed.revoke_key(kid, "root")
    root.signed.add_key(new.public_key, "root")
    root.signed.version += 1
    root.sign(new)  # not signed by the old root key: the chain of trust is broken
    root.to_file(str(published.meta(f"{root.signed.version}.root.json")))
    reason, msg = _reason(client.refresh)
    assert reason == "BadSignature" and "root" in msg
    _assert_still_installed(client, t1)


def test_delegated_team_cannot_sign_outside_its_prefix(published: Published) -> None:  # noqa: F811
    team = published.tmp / "team-keys"
    tufrepo.delegate(published.dir, [published.keys], "vision", tufrepo.prefix_patterns("vision/"), team)
    client = published.client()
    inside = published.add("model.onnx", V1, prefix="vision/cls/1.0", key_dirs=[team, published.keys])
    client.refresh()
    t1 = client.fetch([inside])[inside]
    assert t1.path == inside
    # The publisher tool refuses outright …
    with pytest.raises(Exception, match="outside the paths delegated"):
        published.add("x.onnx", V2, prefix="audio/kws/1.0", key_dirs=[team, published.keys], role="vision")
    # … and a team that forges it with the Metadata API is ignored by devices.
    md = Metadata.from_file(str(published.meta("vision.json")))
    md.signed.targets["audio/kws/1.0/x.onnx"] = TargetFile.from_data("audio/kws/1.0/x.onnx", V2, ["sha256"])
    md.signed.version += 1
    signer = tufrepo.find_signer([team], md.signed.version and next(iter(
        Metadata.from_file(str(published.meta("targets.json"))).signed.delegations.roles["vision"].keyids)))
    md.sign(signer)
    md.to_file(str(published.meta(f"{md.signed.version}.vision.json")))
    md.to_file(str(published.meta("vision.json")))
    tufrepo.refresh(published.dir, [published.keys])
    assert any("outside its delegated paths" in p for p in tufrepo.verify_repo(published.dir))
    client.refresh()
    reason, _ = _reason(lambda: client.fetch(["audio/kws/1.0/x.onnx"]))
    assert reason == "TargetNotFound"
    _assert_still_installed(client, t1)


def test_repository_down_is_a_clear_error(published: Published) -> None:  # noqa: F811
    client = published.client()
    t1 = _install_v1(published, client)
    published.server.stop()
    reason, msg = _reason(client.refresh)
    assert reason == "RepositoryUnavailable" and "unreachable" in msg
    _assert_still_installed(client, t1)
    published.server = type(published.server)(published.dir).start()  # the fixture stops it again
