"""``--dry-run`` on every command that writes a commit: it shows the commit it would write and the fleet
repository (every ref, every object reachable from them) is exactly as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._git_fixtures import Upstream, env, git
from tests.rollout.test_cli import fleet_files, report, targets


def modelfleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(XDG_CACHE_HOME=str(cwd / ".cache"), MODELFLEET_INSECURE_SKIP_VERIFY="1"),
                          timeout=120)


def snapshot(bare: Path) -> str:
    """Every ref with its commit, and every object in the repository."""
    return git(bare, "for-each-ref") + "\n" + git(bare, "count-objects", "-v")


@pytest.fixture
def rollout_repo(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet with tiny 1.1.0 at the canary step")
    report(up, new=targets(up))  # the canaries are healthy: the gates pass
    return up


@pytest.mark.parametrize(("command", "extra", "shown"), [
    ("promote", [], "+    step: 1"),
    ("promote", ["--branch", "promote-tiny"], "+    step: 1"),
    ("abort", ["--reason", "accuracy drop"], "Reason: accuracy drop"),
    ("pause", [], "+    paused: true"),
])
def test_dry_run_shows_the_commit_and_writes_nothing(command: str, extra: list[str], shown: str,
                                                     rollout_repo: Upstream, tmp_path: Path) -> None:
    before = snapshot(rollout_repo.bare)
    p = modelfleet("rollout", command, "tiny", "--repo", str(rollout_repo.bare), "--dry-run", *extra, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("dry run: would commit (") and "nothing was written" in p.stderr
    assert "Subject: [PATCH] rollout tiny:" in p.stdout and shown in p.stdout
    assert snapshot(rollout_repo.bare) == before


def test_resume_and_watch_dry_run(rollout_repo: Upstream, tmp_path: Path) -> None:
    repo = str(rollout_repo.bare)
    assert modelfleet("rollout", "pause", "tiny", "--repo", repo, cwd=tmp_path).returncode == 0
    before = snapshot(rollout_repo.bare)
    p = modelfleet("rollout", "resume", "tiny", "--repo", repo, "--dry-run", cwd=tmp_path)
    assert p.returncode == 0 and "-    paused: true" in p.stdout, p.stderr
    p = modelfleet("rollout", "watch", "tiny", "--repo", repo, "--dry-run", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == "" and "nothing to do" in p.stderr  # paused: a promoter waits
    assert snapshot(rollout_repo.bare) == before
    assert modelfleet("rollout", "resume", "tiny", "--repo", repo, cwd=tmp_path).returncode == 0
    before = snapshot(rollout_repo.bare)
    p = modelfleet("rollout", "watch", "tiny", "--repo", repo, "--dry-run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "would promote" in p.stderr and "+    step: 1" in p.stdout
    assert snapshot(rollout_repo.bare) == before


def test_dry_run_still_refuses_what_the_real_run_refuses(tmp_path: Path) -> None:
    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet with tiny 1.1.0 at the canary step")  # nobody reported: gates do not pass
    before = snapshot(up.bare)
    p = modelfleet("rollout", "promote", "tiny", "--repo", str(up.bare), "--dry-run", cwd=tmp_path)
    assert p.returncode == 3 and p.stderr.startswith("error: refusing to promote tiny") and p.stdout == ""
    assert snapshot(up.bare) == before


def tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tuf_repository_writes_dry_run_in_a_scratch_copy(tmp_path: Path) -> None:
    tuf, keys = tmp_path / "tuf", tmp_path / "keys"
    assert modelfleet("repo", "init", str(tuf), "--keys", str(keys), cwd=tmp_path).returncode == 0
    (tmp_path / "m.onnx").write_bytes(b"model")
    assert modelfleet("repo", "add", str(tuf), "m.onnx", "--path", "m/1", "--keys", str(keys),
                      cwd=tmp_path).returncode == 0
    before, keys_before = tree_digest(tuf), tree_digest(keys)
    for args, out in [
        (["add", str(tuf), "m.onnx", "--path", "m/2", "--keys", str(keys)], "would add m/2/m.onnx (5 bytes"),
        (["remove", str(tuf), "m/1/m.onnx", "--keys", str(keys)], "would remove 1 target(s)"),
        (["refresh", str(tuf), "--keys", str(keys)], "would sign snapshot v3, timestamp v3"),
    ]:
        p = modelfleet("repo", *args, "--dry-run", cwd=tmp_path)
        assert p.returncode == 0 and p.stdout.startswith(out), p.stderr
        assert p.stderr.startswith("dry run: would write metadata/{") and "timestamp.json" in p.stderr
        assert tree_digest(tuf) == before and tree_digest(keys) == keys_before
    verified = modelfleet("repo", "verify", str(tuf), "--format", "json", cwd=tmp_path)
    assert verified.returncode == 0 and json.loads(verified.stdout) == {"ok": True, "within": "6h", "problems": []}
    late = modelfleet("repo", "verify", str(tuf), "--within", "400d", "--format", "yaml", cwd=tmp_path)
    doc = yaml.safe_load(late.stdout)  # every role expires within 400 days: each is a problem, and exit 1
    assert late.returncode == 1 and doc["ok"] is False and len(doc["problems"]) >= 4
    assert late.stderr.startswith("error: ") and "problem(s)" in late.stderr
    # what the real run would refuse, the dry run refuses too
    p = modelfleet("repo", "remove", str(tuf), "m/9/none.onnx", "--keys", str(keys), "--dry-run", cwd=tmp_path)
    assert p.returncode == 1 and p.stderr == "error: target 'm/9/none.onnx' is not in the repository\n"
    p = modelfleet("repo", "add", str(tuf), "m.onnx", "--path", "m/2", "--keys", str(tmp_path / "nokeys"),
                   "--dry-run", cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and tree_digest(tuf) == before


def test_delegate_and_rotate_key_dry_run_in_scratch_copies_of_metadata_and_keys(tmp_path: Path) -> None:
    """`repo delegate` writes a team key and `repo rotate-key` writes a new key and retires the old one: their dry
    runs do all of it in scratch copies, so neither the metadata nor any key directory changes."""
    tuf, keys, root_keys, team = tmp_path / "tuf", tmp_path / "keys", tmp_path / "keys-root", tmp_path / "team"
    assert modelfleet("repo", "init", str(tuf), "--keys", str(keys), cwd=tmp_path).returncode == 0
    state = {d: tree_digest(d) for d in (tuf, keys, root_keys)}
    p = modelfleet("repo", "delegate", str(tuf), "vision", "--prefix", "vision/", "--team-keys", str(team),
                   "--keys", str(keys), "--dry-run", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("would delegate vision/ to vision"), p.stderr
    assert p.stderr.startswith("dry run: would write metadata/{") and "vision.json" in p.stderr, p.stderr
    p = modelfleet("repo", "rotate-key", str(tuf), "timestamp", "--root-keys", str(root_keys), "--keys", str(keys),
                   "--dry-run", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("timestamp: would sign a new root version"), p.stderr
    assert "2.root.json" in p.stderr and "nothing was written" in p.stderr, p.stderr
    assert {d: tree_digest(d) for d in (tuf, keys, root_keys)} == state and not team.exists()
    # what the real run refuses, the dry run refuses: the root key is not where it is said to be
    p = modelfleet("repo", "rotate-key", str(tuf), "timestamp", "--root-keys", str(keys), "--keys", str(keys),
                   "--dry-run", cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    # and the real runs still write
    assert modelfleet("repo", "rotate-key", str(tuf), "timestamp", "--root-keys", str(root_keys), "--keys", str(keys),
                      cwd=tmp_path).returncode == 0
    assert (keys / "retired").is_dir() and tree_digest(tuf) != state[tuf]
