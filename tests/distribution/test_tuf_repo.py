"""Publisher: ``modelfleet repo …`` and the tufrepo functions behind it, on real ed25519 keys."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from reconciler.core.errors import UserError
from reconciler.distribution import modelcrypto, tufrepo
from tests._cli import run_cli


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    r = run_cli("repo", "init", str(tmp_path / "repo"), "--keys", str(tmp_path / "keys"))
    assert r.code == 0, r.text
    return tmp_path / "repo", tmp_path / "keys"


def _model(tmp_path: Path, name: str = "model.onnx", data: bytes = b"onnx-bytes" * 100) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_init_layout_keys_apart_and_expiries(repo: tuple[Path, Path], tmp_path: Path) -> None:
    rdir, keys = repo
    meta = rdir / "metadata"
    for name in ("1.root.json", "root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"):
        assert (meta / name).is_file(), name
    root_keys = tmp_path / "keys-root"
    assert [p.name.split("-")[0] for p in root_keys.glob("*.pem")] == ["root"]
    assert sorted(p.name.split("-")[0] for p in keys.glob("*.pem")) == ["snapshot", "targets", "timestamp"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys.glob("*.pem"))
    now = datetime.now(timezone.utc)
    root = Metadata.from_file(str(meta / "root.json"))
    assert root.signed.consistent_snapshot
    assert timedelta(days=364) < root.signed.expires - now <= timedelta(days=365)
    ts = Metadata.from_file(str(meta / "timestamp.json"))
    assert timedelta(hours=23) < ts.signed.expires - now <= timedelta(days=1)
    assert tufrepo.verify_repo(rdir) == []
    again = run_cli("repo", "init", str(rdir), "--keys", str(keys))
    assert again.code == 1 and "already holds a TUF repository" in again.err and "Traceback" not in again.text


def test_thresholds_and_expiries_are_configurable(tmp_path: Path) -> None:
    r = run_cli("repo", "init", str(tmp_path / "r"), "--keys", str(tmp_path / "k"), "--root-keys",
                str(tmp_path / "offline"), "--threshold", "root=2", "--expiry", "timestamp=6h")
    assert r.code == 0, r.text
    root = Metadata.from_file(str(tmp_path / "r" / "metadata" / "root.json"))
    assert root.signed.roles["root"].threshold == 2 and len(root.signed.roles["root"].keyids) == 2
    assert len(root.signatures) == 2 and len(list((tmp_path / "offline").glob("root-*.pem"))) == 2
    ts = Metadata.from_file(str(tmp_path / "r" / "metadata" / "timestamp.json"))
    assert ts.signed.expires - datetime.now(timezone.utc) <= timedelta(hours=6)
    bad = run_cli("repo", "init", str(tmp_path / "r2"), "--keys", str(tmp_path / "k2"), "--threshold", "bogus=1")
    assert bad.code == 1 and "bad --threshold" in bad.err


def test_add_list_remove(repo: tuple[Path, Path], tmp_path: Path) -> None:
    rdir, keys = repo
    r = run_cli("repo", "add", str(rdir), str(_model(tmp_path)), "--path", "vision/cls/1.0", "--model", "cls",
                "--version", "1.0", "--keys", str(keys))
    assert r.code == 0, r.text
    assert "vision/cls/1.0/model.onnx" in r.out
    rows = tufrepo.list_targets(rdir)
    assert [(x.path, x.custom) for x in rows] == [
        ("vision/cls/1.0/model.onnx", {"format": "onnx", "runtime": "onnxruntime", "model": "cls", "version": "1.0"})
    ]
    assert (rdir / "targets" / "vision/cls/1.0" / f"{rows[0].sha256}.model.onnx").read_bytes() == b"onnx-bytes" * 100
    table = run_cli("repo", "list", str(rdir))
    assert table.out.splitlines()[0].split() == ["PATH", "SIZE", "SHA256", "ROLE", "MODEL", "VERSION", "ENC"]
    assert "vision/cls/1.0/model.onnx" in table.out and "cls" in table.out
    assert tufrepo.list_target_paths(rdir) == {"vision/cls/1.0/model.onnx"}
    assert tufrepo.verify_repo(rdir) == []
    assert run_cli("repo", "remove", str(rdir), "vision/cls/1.0/model.onnx", "--keys", str(keys)).code == 0
    assert tufrepo.list_target_paths(rdir) == set()
    missing = run_cli("repo", "remove", str(rdir), "nope", "--keys", str(keys))
    assert missing.code == 1 and "not in the repository" in missing.err


def test_add_errors_are_clear(repo: tuple[Path, Path], tmp_path: Path) -> None:
    rdir, keys = repo
    r = run_cli("repo", "add", str(rdir), str(tmp_path / "missing.onnx"), "--path", "x", "--keys", str(keys))
    assert r.code == 1 and "no such file" in r.err
    r = run_cli("repo", "add", str(rdir), str(_model(tmp_path)), "--path", "x", "--keys", str(tmp_path / "empty"))
    assert r.code == 1 and "signing targets needs 1 of its keys; found 0" in r.err
    assert tufrepo.list_target_paths(rdir) == set()  # nothing half-published
    r = run_cli("repo", "list", str(tmp_path))
    assert r.code == 1 and "not a TUF repository" in r.err


def test_encrypted_add_records_plaintext_hash(repo: tuple[Path, Path], tmp_path: Path) -> None:
    rdir, keys = repo
    assert run_cli("repo", "gen-key", str(tmp_path / "model.key")).code == 0
    key = modelcrypto.load_key_file(tmp_path / "model.key")
    r = run_cli("repo", "add", str(rdir), str(_model(tmp_path)), "--path", "sec", "--encrypt-key",
                str(tmp_path / "model.key"), "--keys", str(keys))
    assert r.code == 0, r.text
    (row,) = tufrepo.list_targets(rdir)
    assert row.custom["encrypted"] is True and row.custom["plaintext_length"] == 1000
    blob = (rdir / "targets" / "sec" / f"{row.sha256}.model.onnx").read_bytes()
    assert b"onnx-bytes" not in blob and modelcrypto.decrypt(blob, key) == b"onnx-bytes" * 100
    assert "yes" in run_cli("repo", "list", str(rdir)).out
    bad = run_cli("repo", "add", str(rdir), str(_model(tmp_path)), "--path", "sec", "--encrypt-key",
                  str(tmp_path / "model.onnx"), "--keys", str(keys))
    assert bad.code == 1 and "256-bit key" in bad.err


def test_refresh_rotate_and_verify(repo: tuple[Path, Path], tmp_path: Path) -> None:
    rdir, keys = repo
    assert run_cli("repo", "add", str(rdir), str(_model(tmp_path)), "--path", "m", "--keys", str(keys)).code == 0
    before = Metadata.from_file(str(rdir / "metadata" / "timestamp.json")).signed.version
    r = run_cli("repo", "refresh", str(rdir), "--keys", str(keys))
    assert r.code == 0 and Metadata.from_file(str(rdir / "metadata" / "timestamp.json")).signed.version == before + 1
    r = run_cli("repo", "rotate-key", str(rdir), "root", "--root-keys", str(tmp_path / "keys-root"), "--keys", str(keys))
    assert r.code == 0, r.text
    root2 = Metadata.from_file(str(rdir / "metadata" / "2.root.json"))
    root1 = Metadata.from_file(str(rdir / "metadata" / "1.root.json"))
    root1.verify_delegate("root", root2)  # signed by the old root key …
    root2.verify_delegate("root", root2)  # … and by the new one
    assert len(list((tmp_path / "keys-root" / "retired").glob("*.pem"))) == 1
    ok = run_cli("repo", "verify", str(rdir), "--within", "12h")
    assert ok.code == 0 and ok.out.startswith("ok:")
    expiring = run_cli("repo", "verify", str(rdir), "--within", "2d")
    assert expiring.code == 1 and "timestamp: expires at" in expiring.err


def test_verify_finds_tampering(repo: tuple[Path, Path], tmp_path: Path) -> None:
    rdir, keys = repo
    tufrepo.add_targets(rdir, [keys], [_model(tmp_path)], "m")
    (row,) = tufrepo.list_targets(rdir)
    f = rdir / "targets" / "m" / f"{row.sha256}.model.onnx"
    f.write_bytes(b"tampered")
    snap = rdir / "metadata" / "timestamp.json"
    doc = json.loads(snap.read_text())
    doc["signed"]["version"] += 5
    snap.write_text(json.dumps(doc))
    problems = tufrepo.verify_repo(rdir)
    assert any("timestamp: bad signatures" in p for p in problems)
    assert any("does not match its metadata" in p for p in problems)
    in_future = tufrepo.verify_repo(rdir, now=datetime.now(timezone.utc) + timedelta(days=400))
    assert any(p.startswith("root: expired") for p in in_future)


def test_delegation_cli(repo: tuple[Path, Path], tmp_path: Path) -> None:
    rdir, keys = repo
    team = tmp_path / "vision-keys"
    r = run_cli("repo", "delegate", str(rdir), "vision", "--prefix", "vision/", "--team-keys", str(team),
                "--keys", str(keys))
    assert r.code == 0, r.text
    r = run_cli("repo", "add", str(rdir), str(_model(tmp_path)), "--path", "vision/a/1", "--keys", str(team),
                "--keys", str(keys))
    assert r.code == 0 and "role vision" in r.out
    # Without the team key the online keys cannot sign inside the team's prefix.
    r = run_cli("repo", "add", str(rdir), str(_model(tmp_path)), "--path", "vision/b/1", "--keys", str(keys))
    assert r.code == 1 and "signing vision needs" in r.err
    with pytest.raises(UserError, match="outside the paths delegated"):
        tufrepo.add_targets(rdir, [team, keys], [_model(tmp_path)], "audio/x", role="vision")
    assert tufrepo.list_target_paths(rdir) == {"vision/a/1/model.onnx"}
    assert tufrepo.verify_repo(rdir) == []
