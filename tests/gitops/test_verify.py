"""Signature verdicts: the pure judge, and Verifier against commits signed with real ssh-keygen keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.gitops.verify import CommitSignature, GitError, Verifier, judge, run_git, signature_format
from tests._git_fixtures import Upstream, make_ssh_key, write_allowed_signers


def sig(fmt: str, status: str, signer: str | None = None, key: str | None = "SHA256:abc") -> CommitSignature:
    return CommitSignature("c" * 40, fmt, status, signer, key)


def test_signature_format_from_raw_commit() -> None:
    base = b"tree t\nauthor a <a> 1 +0000\ncommitter a <a> 1 +0000\n"
    assert signature_format(base + b"\nmsg\n") == "none"
    assert signature_format(base + b"gpgsig -----BEGIN SSH SIGNATURE-----\n x\n\nmsg") == "ssh"
    assert signature_format(base + b"gpgsig -----BEGIN PGP SIGNATURE-----\n x\n\nmsg") == "gpg"
    # A signature-looking line in the message body is not a signature.
    assert signature_format(base + b"\ngpgsig -----BEGIN SSH SIGNATURE-----\n") == "none"


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
])
def test_judge(s: CommitSignature, ssh: bool, gpg: bool, ok: bool, reason: str) -> None:
    r = judge(s, ssh_trusted=ssh, gpg_trusted=gpg)
    assert (r.ok, r.reason) == (ok, reason)
    if not ok and s.format != "none":
        assert r.signer in (s.signer, s.key)


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
