"""Signature verdicts: the pure judge, and Verifier against commits signed with real ssh-keygen keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.gitops.source import GitSource
from reconciler.gitops.verify import CommitSignature, GitError, Verifier, classify_signature, judge, run_git
from tests._git_fixtures import (
    GpgKey,
    SshKey,
    Upstream,
    commit_payload,
    git,
    gpg_signature,
    kill_gpg_agent,
    make_gpg_key,
    make_ssh_key,
    ssh_signature,
    write_allowed_signers,
    write_raw_commit,
)


def sig(fmt: str, status: str, signer: str | None = None, key: str | None = "SHA256:abc") -> CommitSignature:
    return CommitSignature("c" * 40, fmt, status, signer, key)


def test_signature_format_from_raw_commit() -> None:
    base = b"tree t\nauthor a <a> 1 +0000\ncommitter a <a> 1 +0000\n"
    ssh, pgp = b"-----BEGIN SSH SIGNATURE-----\n x\n", b"-----BEGIN PGP SIGNATURE-----\n x\n"
    assert classify_signature(base + b"\nmsg\n") == ("none", None)
    assert classify_signature(base + b"gpgsig " + ssh + b"\nmsg") == ("ssh", None)
    assert classify_signature(base + b"gpgsig " + pgp + b"\nmsg") == ("gpg", None)
    assert classify_signature(base + b"gpgsig -----BEGIN SIGNED MESSAGE-----\n x\n\nmsg") == ("x509", None)
    assert classify_signature(base + b"gpgsig-sha256 " + ssh + b"\nmsg", "sha256") == ("ssh", None)
    # git tells the format by how the signature starts, and refuses to read any other
    assert classify_signature(base + b"gpgsig x -----BEGIN SSH SIGNATURE-----\n\nmsg") == ("unknown", None)
    # A signature-looking line in the message body is not a signature.
    assert classify_signature(base + b"\ngpgsig -----BEGIN SSH SIGNATURE-----\n") == ("none", None)
    for headers, problem in [
        (b"gpgsig-sha256 junk\ngpgsig " + ssh, "2 signature headers (gpgsig-sha256, gpgsig)"),
        (b"gpgsig " + ssh + b"gpgsig " + pgp, "2 signature headers (gpgsig, gpgsig)"),
        (b"gpgsig " + ssh + b"gpgsig-x junk\n", "2 signature headers (gpgsig, gpgsig-x)"),
        (b"gpgsig-sha256 " + ssh, "only a gpgsig-sha256 signature header, which git does not verify in a sha1"),
    ]:
        fmt, why = classify_signature(base + headers + b"\nmsg")
        assert fmt == "ambiguous" and why and problem in why, why
    fmt, why = classify_signature(base + b"gpgsig " + ssh + b"\nmsg", "sha256")
    assert fmt == "ambiguous" and why and "in a sha256 repository (it verifies gpgsig-sha256)" in why


@pytest.mark.parametrize(("s", "ssh", "gpg", "ok", "reason"), [
    (sig("none", "N"), True, True, False, "UnsignedCommit"),
    (sig("ssh", "G", "alice"), True, False, True, "Verified"),
    (sig("ssh", "U"), True, False, False, "VerificationFailed"),  # key not in allowed signers
    (sig("ssh", "G", "alice"), False, True, False, "VerificationFailed"),  # no allowed-signers provisioned
    (sig("ssh", "B", "alice"), True, False, False, "VerificationFailed"),
    (sig("gpg", "U", "Rel <r@x>"), False, True, True, "Verified"),  # keyring is the trust anchor
    (sig("gpg", "E"), False, True, False, "VerificationFailed"),
    (sig("gpg", "Y", "Rel <r@x>"), False, True, False, "VerificationFailed"),
    (sig("x509", "G", "x"), True, True, False, "VerificationFailed"),
    (sig("unknown", "N", key=None), True, True, False, "VerificationFailed"),
    (CommitSignature("c" * 40, "ambiguous", "N", None, None, "carries 2 signature headers"), True, True, False,
     "AmbiguousSignature"),
])
def test_judge(s: CommitSignature, ssh: bool, gpg: bool, ok: bool, reason: str) -> None:
    r = judge(s, ssh_trusted=ssh, gpg_trusted=gpg)
    assert (r.ok, r.reason) == (ok, reason)
    if not ok and s.format not in ("none", "ambiguous"):
        assert r.signer in (s.signer, s.key)
    if s.problem:
        assert r.message == f"commit {'c' * 12} {s.problem}" and r.signer is None


def test_verifier_reports_signer_seen(tmp_path: Path) -> None:
    up = Upstream(tmp_path)
    keys = tmp_path / "keys"
    alice, bob = make_ssh_key(keys, "alice@example.com"), make_ssh_key(keys, "bob@example.com")
    allowed = write_allowed_signers(tmp_path / "allowed", alice)
    a = up.commit({"f": "1"}, ssh_key=alice)
    b = up.commit({"f": "2"}, ssh_key=bob)
    n = up.commit({"f": "3"})
    v = Verifier(up.bare, allowed_signers=allowed, state_dir=tmp_path / "state")
    sigs = v.signatures([n, b, a])
    assert [s.format for s in sigs] == ["none", "ssh", "ssh"]
    assert sigs[2].signer == "alice@example.com" and sigs[1].signer is None and sigs[1].key
    assert v.verify([a]).ok and v.verify([a]).signer == "alice@example.com"
    bad = v.verify([a, b])
    assert not bad.ok and bad.commit == b and bad.signer == sigs[1].key
    with pytest.raises(GitError):
        v.verify(["0" * 40])
    with pytest.raises(ValueError):
        Verifier(up.bare)


def test_run_git_timeout_and_error(tmp_path: Path) -> None:
    with pytest.raises(GitError) as e:
        run_git(["rev-parse", "HEAD"], cwd=tmp_path)
    assert not e.value.timed_out and e.value.returncode
    assert run_git(["--version"]).stdout.startswith(b"git version")


# -- signature headers git would not verify as the device classifies them ------------------------------------

@dataclass
class Anchors:
    alice: SshKey  # in the allowed signers
    evil: SshKey  # in no trust anchor
    release: GpgKey  # in the provisioned keyring
    allowed: Path


@pytest.fixture(scope="module")
def anchors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anchors]:
    d = tmp_path_factory.mktemp("anchors")
    alice, evil = make_ssh_key(d / "ssh", "alice@example.com"), make_ssh_key(d / "ssh", "evil@example.com")
    release = make_gpg_key(d / "gpg")
    try:
        yield Anchors(alice, evil, release, write_allowed_signers(d / "allowed_signers", alice))
    finally:
        kill_gpg_agent(release.home)


Headers = Callable[[Anchors, bytes], list[tuple[str, bytes]]]

#: Signature headers no signing tool writes: several of them, or one git does not verify in a SHA-1 repository.
AMBIGUOUS: dict[str, Headers] = {
    # The reported bypass: the junk first header made the device take the commit for GPG-signed, and accept
    # git's "U" (good signature, unknown key) that was about an SSH key in no trust anchor.
    "decoy-sha256-header-before-unknown-ssh-key":
        lambda a, p: [("gpgsig-sha256", b"junk"), ("gpgsig", ssh_signature(a.evil, p))],
    "two-ssh-signatures": lambda a, p: [("gpgsig", ssh_signature(a.alice, p)), ("gpgsig", ssh_signature(a.evil, p))],
    "ssh-and-gpg-both-valid":
        lambda a, p: [("gpgsig", ssh_signature(a.alice, p)), ("gpgsig", gpg_signature(a.release, p))],
    "gpg-and-ssh-sha256-both-valid":
        lambda a, p: [("gpgsig", gpg_signature(a.release, p)), ("gpgsig-sha256", ssh_signature(a.alice, p))],
    "sha256-header-alone-in-sha1-repo": lambda a, p: [("gpgsig-sha256", ssh_signature(a.alice, p))],
}


def genuine_ssh(a: Anchors, payload: bytes) -> list[tuple[str, bytes]]:
    return [("gpgsig", ssh_signature(a.alice, payload))]


def craft(repo: Path, headers: Headers, anchors: Anchors, message: str) -> str:
    """A commit on top of ``repo``'s HEAD with the given signature headers; HEAD moves to it."""
    payload = commit_payload(repo, message)
    sha = write_raw_commit(repo, payload, headers(anchors, payload))
    git(repo, "update-ref", "HEAD", sha)
    return sha


def both_anchors(repo: Path, anchors: Anchors, state: Path) -> Verifier:
    return Verifier(repo, allowed_signers=anchors.allowed, gpg_keyring=anchors.release.pubring, state_dir=state)


@pytest.mark.parametrize("variant", sorted(AMBIGUOUS))
def test_several_or_misplaced_signature_headers_are_refused(anchors: Anchors, tmp_path: Path, variant: str) -> None:
    up = Upstream(tmp_path)
    base = up.commit({"f": "1"}, ssh_key=anchors.alice, push=False)
    bad = craft(up.work, AMBIGUOUS[variant], anchors, variant)
    tip = craft(up.work, genuine_ssh, anchors, "signed tip")
    v = both_anchors(up.work / ".git", anchors, tmp_path / "state")
    assert v.verify([tip]).ok
    for commits in ([bad], [tip, bad, base]):  # what GitSource checks in `head` and in `all` mode
        r = v.verify(commits)
        assert (r.ok, r.reason, r.commit, r.signer) == (False, "AmbiguousSignature", bad, None), r.message
        assert bad[:12] in r.message and ("2 signature headers" in r.message or "sha1 repository" in r.message)


def test_genuine_signatures_verify_with_both_anchors_one_log_per_format(anchors: Anchors, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upstream(tmp_path)
    ssh_signed = up.commit({"f": "1"}, ssh_key=anchors.alice, push=False)
    gpg_signed = up.commit({"f": "2"}, gpg_key=anchors.release, push=False)
    more_ssh = up.commit({"f": "3"}, ssh_key=anchors.alice, push=False)
    v = both_anchors(up.work / ".git", anchors, tmp_path / "state")
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    r = v.verify([more_ssh, gpg_signed, ssh_signed])
    monkeypatch.delenv("GIT_TRACE")
    assert r.ok and r.signer == "alice@example.com" and "2 more commit(s)" in r.message, r.message
    assert len([ln for ln in trace.read_text().splitlines() if "built-in: git log " in ln]) == 2
    sigs = v.signatures([gpg_signed, ssh_signed])
    assert [(s.format, s.status) for s in sigs] == [("gpg", "U"), ("ssh", "G")]
    assert "release@example.com" in (sigs[0].signer or "")
    # A key in neither anchor is refused, whichever format it signs in.
    unknown = up.commit({"f": "4"}, ssh_key=anchors.evil, push=False)
    r = v.verify([unknown])
    assert (r.ok, r.reason) == (False, "VerificationFailed") and "not an allowed signer" in r.message


def test_each_format_is_checked_with_its_own_anchor_only(anchors: Anchors, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A signature git checks in the other format's run never comes back good or good-but-unknown ("U"), even
    when the service user's own git config and GNUPGHOME would verify it."""
    up = Upstream(tmp_path)
    ssh_signed = up.commit({"f": "1"}, ssh_key=anchors.alice, push=False)
    unknown_ssh = up.commit({"f": "2"}, ssh_key=anchors.evil, push=False)
    gpg_signed = up.commit({"f": "3"}, gpg_key=anchors.release, push=False)
    v = both_anchors(up.work / ".git", anchors, tmp_path / "state")
    user_config = tmp_path / "gitconfig"
    user_config.write_text(f'[gpg "ssh"]\n\tallowedSignersFile = {anchors.allowed}\n[gpg]\n\tprogram = gpg\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(user_config))
    monkeypatch.setenv("GNUPGHOME", str(anchors.release.home))
    refused = {"B", "E", "N"}  # bad, cannot check, none: the program that would verify it cannot start
    assert {s.status for s in v.check("gpg", [ssh_signed, unknown_ssh])} <= refused
    assert {s.status for s in v.check("ssh", [gpg_signed])} <= refused
    assert [s.status for s in v.check("gpg", [gpg_signed])] == ["U"]
    assert [(s.status, s.signer) for s in v.check("ssh", [ssh_signed])] == [("G", "alice@example.com")]


def test_sha256_repository_verifies_its_own_header_only(anchors: Anchors, tmp_path: Path) -> None:
    repo = tmp_path / "r256"
    git(tmp_path, "init", "--quiet", "--object-format=sha256", str(repo))
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "root")
    good = craft(repo, lambda a, p: [("gpgsig-sha256", ssh_signature(a.alice, p))], anchors, "good")
    v = both_anchors(repo / ".git", anchors, tmp_path / "state")
    r = v.verify([good])
    assert r.ok and r.signer == "alice@example.com", r.message
    sha1_header = craft(repo, lambda a, p: [("gpgsig", ssh_signature(a.alice, p))], anchors, "sha1 header")
    r = v.verify([sha1_header, good])
    assert (r.ok, r.reason, r.commit) == (False, "AmbiguousSignature", sha1_header) and "sha256 repository" in r.message


@pytest.mark.parametrize("mode", ["head", "all"])
def test_git_source_refuses_ambiguous_signatures(anchors: Anchors, tmp_path: Path, mode: str) -> None:
    up = Upstream(tmp_path)
    base = up.commit({"f.yaml": "a: 1\n"}, ssh_key=anchors.alice)
    src = GitSource(up.file_url, tmp_path / "cache", verify_mode=mode, allowed_signers=anchors.allowed,
                    gpg_keyring=anchors.release.pubring)
    assert src.poll(None).commit == base
    for variant, headers in AMBIGUOUS.items():
        bad = craft(up.work, headers, anchors, variant)
        up.push()
        r = src.poll(base)
        assert (r.commit, r.head, r.reason, r.changed) == (base, bad, "AmbiguousSignature", False), (variant, r.message)
    tip = craft(up.work, genuine_ssh, anchors, "signed tip")
    up.push()
    r = src.poll(base)
    if mode == "head":
        assert (r.commit, r.reason, r.signer) == (tip, "Verified", "alice@example.com"), r.message
    else:  # the crafted commits are between the last applied commit and the signed tip
        assert (r.commit, r.head, r.reason) == (base, tip, "AmbiguousSignature"), r.message
