"""GitSource against real repositories (file:// and git daemon on 127.0.0.1) and real ssh-keygen/gpg keys."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from reconciler.core.conditions import SOURCE_AVAILABLE, SOURCE_VERIFIED
from reconciler.gitops import verify
from reconciler.gitops.source import GitSource, backoff_delay, parse_ls_remote
from tests._git_fixtures import (
    GitDaemon,
    SilentServer,
    SshKey,
    Upstream,
    git,
    kill_gpg_agent,
    make_gpg_key,
    make_ssh_key,
    write_allowed_signers,
)

MODEL = "apiVersion: modelfleet/v1\nkind: Fleet\nmetadata:\n  name: demo\n"


def cond(res, type_: str):
    return next(c for c in res.conditions if c.type == type_)


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, SshKey]:
    d = tmp_path_factory.mktemp("keys")
    return {"alice": make_ssh_key(d, "alice@example.com"), "mallory": make_ssh_key(d, "mallory@example.com")}


@pytest.fixture
def allowed(tmp_path: Path, keys) -> Path:
    return write_allowed_signers(tmp_path / "allowed_signers", keys["alice"])


# -- pure helpers -------------------------------------------------------------------------------------------

def test_parse_ls_remote_and_backoff() -> None:
    out = "abc\trefs/heads/main\ndef\trefs/heads/mainline\n"
    assert parse_ls_remote(out, "refs/heads/main") == "abc"
    assert parse_ls_remote(out, "refs/heads/dev") is None
    assert backoff_delay(1, base=5, maximum=600, rng=lambda: 1.0) == 5
    assert backoff_delay(4, base=5, maximum=600, rng=lambda: 1.0) == 40
    assert backoff_delay(50, base=5, maximum=600, rng=lambda: 1.0) == 600
    assert 0.8 * 40 <= backoff_delay(4, base=5, maximum=600) <= 40


# -- polling and fetching ---------------------------------------------------------------------------------

def test_first_poll_fetches_then_idle_polls_make_no_fetch(upstream: Upstream, tmp_path: Path) -> None:
    c1 = upstream.commit({"fleet/fleet.yaml": MODEL, "README.md": "hi"})
    src = GitSource(upstream.file_url, tmp_path / "cache", subpath="fleet", poll_interval=7)
    r = src.poll(None)
    assert (r.commit, r.changed, r.fetched) == (c1, True, True)
    assert cond(r, SOURCE_AVAILABLE).status == "True" and r.next_poll_delay == 7
    assert src.read_files(c1) == {"fleet.yaml": MODEL.encode()}
    assert (tmp_path / "cache" / "repo.git" / "shallow").is_file()  # shallow first clone
    fetches, requests = src.fetches, src.requests
    for _ in range(3):
        idle = src.poll(c1)
        assert (idle.commit, idle.changed, idle.fetched) == (c1, False, False)
    assert src.fetches == fetches and src.requests == requests + 3 and src.polls == 4
    assert src.bytes_fetched > 0
    assert REGISTRY.get_sample_value("modelfleet_git_polls_total") >= 4
    c2 = upstream.commit({"fleet/fleet.yaml": MODEL + "  labels: {a: b}\n"})
    r2 = src.poll(c1)
    assert (r2.commit, r2.changed, r2.fetched) == (c2, True, True)
    assert b"labels" in src.read_files(c2)["fleet.yaml"]
    src.close()


def test_read_files_never_checks_out_and_reports_symlinks(upstream: Upstream, tmp_path: Path) -> None:
    from reconciler.fleet.repository import NonRegular

    (upstream.work / "fleet").mkdir()
    (upstream.work / "fleet" / "link.yaml").symlink_to("/etc/passwd")
    c = upstream.commit({"fleet/a/b.yaml": "x: 1\n", "other.txt": "no"})
    src = GitSource(upstream.file_url, tmp_path / "cache", subpath="fleet")
    assert src.poll(None).commit == c
    assert src.read_files(c) == {"a/b.yaml": b"x: 1\n", "link.yaml": NonRegular("symlink", "/etc/passwd")}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["repo.git"]
    with pytest.raises(KeyError):
        GitSource(upstream.file_url, tmp_path / "cache", subpath="nope").read_files(c)


def test_git_daemon_url_and_missing_branch(upstream: Upstream, tmp_path: Path) -> None:
    c = upstream.commit({"f.yaml": "a: 1\n"})
    with GitDaemon(upstream.bare.parent) as d:
        src = GitSource(d.url("fleet.git"), tmp_path / "c1")
        assert src.poll(None).commit == c
        other = GitSource(d.url("fleet.git"), tmp_path / "c2", branch="prod")
        r = other.poll(None)
        assert r.commit is None and r.reason == "BranchNotFound"
        assert cond(r, SOURCE_AVAILABLE).status == "False"


def test_server_down_then_back_backs_off_and_recovers(upstream: Upstream, tmp_path: Path) -> None:
    c1 = upstream.commit({"f.yaml": "a: 1\n"})
    d = GitDaemon(upstream.bare.parent).start()
    src = GitSource(d.url("fleet.git"), tmp_path / "cache", backoff_base=2, max_backoff=10, poll_interval=30)
    assert src.poll(None).commit == c1
    d.stop()
    c2 = upstream.commit({"f.yaml": "a: 2\n"})
    delays = []
    for _ in range(4):
        r = src.poll(c1)
        assert r.commit == c1 and not r.changed and r.reason == "GitUnavailable"
        assert cond(r, SOURCE_AVAILABLE).status == "False"
        delays.append(r.next_poll_delay)
    assert 1.6 <= delays[0] <= 2 and 3.2 <= delays[1] <= 4 and 8 <= delays[3] <= 10
    d.start()
    try:
        r = src.poll(c1)
        assert (r.commit, r.changed) == (c2, True)
        assert cond(r, SOURCE_AVAILABLE).status == "True" and r.next_poll_delay == 30
    finally:
        d.stop()


def test_slow_server_times_out(tmp_path: Path) -> None:
    srv = SilentServer()
    try:
        src = GitSource(f"git://127.0.0.1:{srv.port}/fleet.git", tmp_path / "cache", timeout=0.5)
        t0 = time.monotonic()
        r = src.poll("a" * 40)
        assert time.monotonic() - t0 < 5
        assert r.commit == "a" * 40 and r.reason == "GitTimeout" and r.next_poll_delay > 0
        assert cond(r, SOURCE_AVAILABLE).status == "False"
    finally:
        srv.close()


def test_force_push_is_refused_unless_allowed(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"f.yaml": "a: 1\n"})
    c2 = upstream.commit({"f.yaml": "a: 2\n"})
    src = GitSource(upstream.file_url, tmp_path / "cache")
    assert src.poll(None).commit == c2
    git(upstream.work, "reset", "--quiet", "--hard", "HEAD~1")
    c3 = upstream.commit({"f.yaml": "a: 3\n"}, push=False)
    upstream.push(force=True)
    r = src.poll(c2)
    assert r.commit == c2 and not r.changed and r.reason == "HistoryRewrite" and r.head == c3
    assert cond(r, SOURCE_VERIFIED).status == "False"
    assert cond(r, SOURCE_AVAILABLE).status == "True"
    # A plain rollback (head moved back to an ancestor) is a history rewrite too.
    git(upstream.work, "reset", "--quiet", "--hard", "HEAD~1")
    upstream.push(force=True)
    rb = src.poll(c2)
    assert rb.commit == c2 and rb.reason == "HistoryRewrite"
    allowing = GitSource(upstream.file_url, tmp_path / "cache2", allow_history_rewrite=True)
    allowing.poll(None)
    upstream.commit({"f.yaml": "a: 4\n"})
    assert allowing.poll(c2).changed  # c2 unknown to this cache, rewrite allowed -> accepted


# -- signatures ----------------------------------------------------------------------------------------------

def test_ssh_signed_unsigned_and_wrong_signer_heads(upstream: Upstream, tmp_path: Path, keys, allowed) -> None:
    good = upstream.commit({"f.yaml": "a: 1\n"}, ssh_key=keys["alice"])
    src = GitSource(upstream.file_url, tmp_path / "cache", verify_mode="head", allowed_signers=allowed)
    r = src.poll(None)
    assert r.commit == good and r.signer == "alice@example.com"
    assert cond(r, SOURCE_VERIFIED).status == "True"

    unsigned = upstream.commit({"f.yaml": "a: 2\n"})
    r = src.poll(good)
    assert r.commit == good and r.reason == "UnsignedCommit" and r.head == unsigned and not r.changed
    assert cond(r, SOURCE_VERIFIED).status == "False" and unsigned[:12] in r.message

    upstream.commit({"f.yaml": "a: 3\n"}, ssh_key=keys["mallory"])
    r = src.poll(good)
    assert r.commit == good and r.reason == "VerificationFailed"
    assert r.signer and r.signer.startswith("SHA256:") and "not an allowed signer" in r.message
    fetches = src.fetches
    again = src.poll(good)  # refused head is remembered: no re-fetch, same verdict
    assert again.reason == "VerificationFailed" and src.fetches == fetches

    fixed = upstream.commit({"f.yaml": "a: 4\n"}, ssh_key=keys["alice"])
    r = src.poll(good)
    assert r.commit == fixed and r.changed  # head mode: only the tip counts


def test_all_mode_refuses_unsigned_commit_in_the_middle(upstream: Upstream, tmp_path: Path, keys, allowed) -> None:
    base = upstream.commit({"f.yaml": "a: 1\n"}, ssh_key=keys["alice"])
    src = GitSource(upstream.file_url, tmp_path / "cache", verify_mode="all", allowed_signers=allowed)
    assert src.poll(None).commit == base
    upstream.commit({"f.yaml": "a: 2\n"}, ssh_key=keys["alice"])
    middle = upstream.commit({"f.yaml": "a: 3\n"})
    tip = upstream.commit({"f.yaml": "a: 4\n"}, ssh_key=keys["alice"])
    r = src.poll(base)
    assert r.commit == base and r.reason == "UnsignedCommit" and middle[:12] in r.message
    head_only = GitSource(upstream.file_url, tmp_path / "cache2", verify_mode="head", allowed_signers=allowed)
    assert head_only.poll(base).commit == tip


def test_gpg_signed_head_against_provisioned_keyring(upstream: Upstream, tmp_path: Path, keys, allowed) -> None:
    release = make_gpg_key(tmp_path / "release")
    rogue = make_gpg_key(tmp_path / "rogue", "Rogue <rogue@example.com>")
    try:
        good = upstream.commit({"f.yaml": "a: 1\n"}, gpg_key=release)
        src = GitSource(upstream.file_url, tmp_path / "cache", verify_mode="head", gpg_keyring=release.pubring)
        r = src.poll(None)
        assert r.commit == good and "release@example.com" in (r.signer or "")
        upstream.commit({"f.yaml": "a: 2\n"}, gpg_key=rogue)
        r = src.poll(good)
        assert r.commit == good and r.reason == "VerificationFailed" and "not in the provisioned keyring" in r.message
        # SSH-signed commit but only a GPG keyring provisioned: refused too.
        upstream.commit({"f.yaml": "a: 3\n"}, ssh_key=keys["alice"])
        assert src.poll(good).reason == "VerificationFailed"
    finally:
        kill_gpg_agent(release.home)
        kill_gpg_agent(rogue.home)


def test_gpg_verification_works_from_a_deep_state_directory(upstream: Upstream, tmp_path: Path) -> None:
    # A state directory as deep as a K3s volume's: gpg could not name its sockets under it and failed the import.
    release = make_gpg_key(tmp_path / "release")
    deep = tmp_path / ("volumes-" + "d" * 60) / ("pvc-" + "e" * 40) / "state"
    try:
        good = upstream.commit({"f.yaml": "a: 1\n"}, gpg_key=release)
        src = GitSource(upstream.file_url, deep / "cache", verify_mode="head", gpg_keyring=release.pubring)
        r = src.poll(None)
        assert r.ok and r.commit == good and "release@example.com" in (r.signer or ""), r.message
        aliases = set(verify._alias_dir().iterdir())
        newer = upstream.commit({"f.yaml": "a: 2\n"}, gpg_key=release)
        r = src.poll(good)
        assert r.ok and r.commit == newer, r.message
        # every verification is a new Verifier: they share one alias directory and alias, not one per new head
        assert set(verify._alias_dir().iterdir()) == aliases
    finally:
        kill_gpg_agent(release.home)


def test_verify_mode_needs_trust_anchor(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allowed-signers"):
        GitSource("file:///x", tmp_path, verify_mode="head")


# -- hostile repositories ----------------------------------------------------------------------------------

def test_hooks_in_repository_are_never_run(upstream: Upstream, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hook = f"#!/bin/sh\ntouch {marker}\n"
    # Hooks in the upstream repository, hooks committed as content, and a hook planted in the device cache.
    # (Only hooks a push to the test server would not trigger itself.)
    for name in ("post-checkout", "post-merge"):
        p = upstream.bare / "hooks" / name
        p.write_text(hook)
        p.chmod(0o755)
    (upstream.work / ".githooks").mkdir()
    for name in ("post-checkout", "reference-transaction"):
        p = upstream.work / ".githooks" / name
        p.write_text(hook)
        p.chmod(0o755)
    c1 = upstream.commit({".gitmodules": "[submodule \"x\"]\n\tpath = x\n\turl = ../x\n", "f.yaml": "a: 1\n"})
    src = GitSource(upstream.file_url, tmp_path / "cache")
    assert src.poll(None).commit == c1
    planted = tmp_path / "cache" / "repo.git" / "hooks" / "reference-transaction"
    planted.parent.mkdir(exist_ok=True)
    planted.write_text(hook)
    planted.chmod(0o755)
    c2 = upstream.commit({"f.yaml": "a: 2\n"})
    assert src.poll(c1).commit == c2
    assert ".githooks/post-checkout" in src.read_files(c2)
    assert not marker.exists()


def test_hostile_manifests_are_rejected_safely(upstream: Upstream, tmp_path: Path) -> None:
    from reconciler.fleet.manifests import load_files

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    c = upstream.commit({
        "fleet/fleet.yaml": MODEL,
        "fleet/models/tags.yaml": "apiVersion: !!python/object/apply:os.system ['touch /tmp/modelfleet-pwned']\n",
        "fleet/models/laughs.yaml": laughs,
    })
    src = GitSource(upstream.file_url, tmp_path / "cache", subpath="fleet")
    assert src.poll(None).commit == c
    t0 = time.monotonic()
    result = load_files(src.read_files(c))
    assert time.monotonic() - t0 < 5
    assert not result.ok
    files = {d.file for d in result.diagnostics if d.severity == "error"}
    assert {"tags.yaml", "laughs.yaml"} <= {Path(f).name for f in files}
    assert not Path("/tmp/modelfleet-pwned").exists()


# -- bundles -------------------------------------------------------------------------------------------------

def test_bundle_import_with_same_verification(upstream: Upstream, tmp_path: Path, keys, allowed) -> None:
    base = upstream.commit({"f.yaml": "a: 1\n"}, ssh_key=keys["alice"])
    src = GitSource(upstream.file_url, tmp_path / "cache", verify_mode="head", allowed_signers=allowed)
    assert src.poll(None).commit == base
    new = upstream.commit({"f.yaml": "a: 2\n"}, ssh_key=keys["alice"], push=False)
    good = tmp_path / "good.bundle"
    git(upstream.work, "bundle", "create", "--quiet", str(good), f"{base}..main")
    r = src.import_bundle(good, base)
    assert (r.commit, r.changed, r.signer) == (new, True, "alice@example.com")
    assert src.read_files(new) == {"f.yaml": b"a: 2\n"}

    upstream.commit({"f.yaml": "a: 3\n"}, push=False)
    bad = tmp_path / "unsigned.bundle"
    git(upstream.work, "bundle", "create", "--quiet", str(bad), f"{new}..main")
    r = src.import_bundle(bad, new)
    assert r.commit == new and r.reason == "UnsignedCommit"

    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a bundle at all")
    r = src.import_bundle(junk, new)
    assert r.commit == new and r.reason == "BundleInvalid" and cond(r, SOURCE_VERIFIED).status == "False"


def test_rotated_allowed_signers_take_effect_without_new_push(upstream: Upstream, tmp_path: Path, keys,
                                                              allowed) -> None:
    base = upstream.commit({"f.yaml": "a: 1\n"}, ssh_key=keys["alice"])
    src = GitSource(upstream.file_url, tmp_path / "cache", verify_mode="head", allowed_signers=allowed)
    assert src.poll(None).commit == base
    tip = upstream.commit({"f.yaml": "a: 2\n"}, ssh_key=keys["mallory"])
    assert src.poll(base).reason == "VerificationFailed"
    write_allowed_signers(allowed, keys["alice"], keys["mallory"])  # operator provisions the new key
    r = src.poll(base)
    assert (r.commit, r.signer) == (tip, "mallory@example.com")


def test_many_fetches_keep_the_cache_compact(upstream: Upstream, tmp_path: Path) -> None:
    applied = upstream.commit({"f.yaml": "a: 0\n"})
    src = GitSource(upstream.file_url, tmp_path / "cache")
    src.max_packs = 4
    src.poll(None)
    for i in range(1, 9):
        upstream.commit({"f.yaml": f"a: {i}\n"})
        r = src.poll(applied)
        assert r.changed and r.fetched
        applied = r.commit
    packs = list((tmp_path / "cache" / "repo.git" / "objects" / "pack").glob("*.pack"))
    assert len(packs) <= 5
    assert src.fetches == 9 and src.read_files(applied) == {"f.yaml": b"a: 8\n"}


def test_a_signed_commit_approves_named_unsigned_commits_without_rewriting(upstream: Upstream, tmp_path: Path, keys,
                                                                           allowed) -> None:
    """Issue Y: the way out of an unsigned commit under `all` is a signed commit on top naming it
    (`Approve-Unsigned: <sha>`); a signed commit without the trailer, a trailer naming another commit, or a trailer
    in an unsigned commit do not get it through."""
    base = upstream.commit({"f.yaml": "a: 1\n"}, ssh_key=keys["alice"])
    src = GitSource(upstream.file_url, tmp_path / "cache", verify_mode="all", allowed_signers=allowed)
    assert src.poll(None).commit == base
    unsigned = upstream.commit({"f.yaml": "a: 2\n"}, "hotfix pushed without signing")
    assert src.poll(base).reason == "UnsignedCommit"
    upstream.commit({"f.yaml": "a: 3\n"}, "signed, says nothing", ssh_key=keys["alice"])
    assert src.poll(base).reason == "UnsignedCommit"
    upstream.commit({"f.yaml": "a: 4\n"}, f"wrong one\n\nApprove-Unsigned: {'0' * 40}\n", ssh_key=keys["alice"])
    assert src.poll(base).reason == "UnsignedCommit"
    upstream.commit({"f.yaml": "a: 5\n"}, f"self-approved\n\nApprove-Unsigned: {unsigned}\n")
    assert src.poll(base).reason == "UnsignedCommit"
    tip = upstream.commit({"f.yaml": "a: 6\n"}, f"reviewed the hotfix\n\nApprove-Unsigned: {unsigned}\n",
                          ssh_key=keys["alice"])
    r = src.poll(base)
    assert r.reason == "UnsignedCommit" and r.commit == base  # the self-approved commit above is unsigned too
    tip = upstream.commit({"f.yaml": "a: 7\n"}, "approve both\n\n"
                          f"Approve-Unsigned: {unsigned}\nApprove-Unsigned: {git(upstream.work, 'rev-parse', 'HEAD~1')}\n",
                          ssh_key=keys["alice"])
    r = src.poll(base)
    assert r.commit == tip and r.changed, r.message
    assert "approved unsigned" in next(c for c in r.conditions if c.type == "SourceVerified").message
    assert git(upstream.work, "rev-list", "--count", f"{base}..{tip}") == "6"  # no history rewritten
