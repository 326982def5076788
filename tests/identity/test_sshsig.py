"""SSH signatures made in-process interoperate with OpenSSH and git, both ways (real ssh-keygen and git)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.identity import keys, sshsig
from reconciler.identity.commitsig import CommitFormatError, sign_commit, split_signed_commit


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text() if path.suffix else Path(f"{path}.pub").read_text()


def test_our_signature_verifies_with_ssh_keygen(tmp_path: Path) -> None:
    key = keys.generate(tmp_path / "k")
    msg = b"hello status\n"
    (tmp_path / "allowed").write_text(f"dev {keys.public_line(key)}\n")
    (tmp_path / "sig").write_text(sshsig.sign(msg, key))
    ok = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "dev", "-n", "git",
                         "-s", str(tmp_path / "sig")], input=msg, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "dev", "-n", "git",
                          "-s", str(tmp_path / "sig")], input=msg + b"x", capture_output=True)
    assert bad.returncode != 0


def test_ssh_keygen_signature_verifies_here(tmp_path: Path) -> None:
    pub = _keygen(tmp_path / "id")
    msg = b"payload"
    (tmp_path / "m").write_bytes(msg)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(tmp_path / "id"), "-n", "git", str(tmp_path / "m")],
                   check=True)
    armored = (tmp_path / "m.sig").read_text()
    blob = sshsig.parse_public_key(pub)
    sshsig.verify(msg, armored, blob)
    with pytest.raises(sshsig.SignatureError, match="bad signature"):
        sshsig.verify(msg + b"!", armored, blob)
    with pytest.raises(sshsig.SignatureError, match="namespace"):
        sshsig.verify(msg, armored, blob, namespace="file")
    other = sshsig.public_key_blob(keys.generate(tmp_path / "other").public_key())
    with pytest.raises(sshsig.SignatureError, match="another key"):
        sshsig.verify(msg, armored, other)


def test_signed_commit_verifies_with_git(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    blob = subprocess.run(["git", "--git-dir", str(repo), "hash-object", "-w", "--stdin"], input=b"x\n",
                          capture_output=True, check=True).stdout.decode().strip()
    tree = subprocess.run(["git", "--git-dir", str(repo), "mktree"], input=f"100644 blob {blob}\tf\n".encode(),
                          capture_output=True, check=True).stdout.decode().strip()
    who = "dev <dev@devices.modelfleet> 1700000000 +0000"
    payload = f"tree {tree}\nauthor {who}\ncommitter {who}\n\nstatus\n".encode()
    key = keys.generate(tmp_path / "k")
    raw = sign_commit(payload, key)
    sha = subprocess.run(["git", "--git-dir", str(repo), "hash-object", "-t", "commit", "-w", "--stdin"], input=raw,
                         capture_output=True, check=True).stdout.decode().strip()
    (tmp_path / "allowed").write_text(f"dev {keys.public_line(key)}\n")
    out = subprocess.run(["git", "--git-dir", str(repo), "-c", f"gpg.ssh.allowedSignersFile={tmp_path / 'allowed'}",
                          "log", "-1", "--format=%G?%x1f%GS", sha], capture_output=True, check=True).stdout.decode()
    assert out.strip() == "G\x1fdev"
    split = split_signed_commit(raw)
    assert split.payload == payload and split.signature is not None
    sshsig.verify(split.payload, split.signature, sshsig.public_key_blob(key.public_key()))


def test_split_refuses_two_signature_headers_and_sha256_header(tmp_path: Path) -> None:
    key = keys.generate(tmp_path / "k")
    payload = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <a> 1 +0000\ncommitter a <a> 1 +0000\n\nm\n"
    signed = sign_commit(payload, key)
    head, _, body = signed.partition(b"\n\n")
    decoy = head.replace(b"\ngpgsig ", b"\ngpgsig-sha256 junk\ngpgsig ") + b"\n\n" + body
    with pytest.raises(CommitFormatError, match="2 signature headers"):
        split_signed_commit(decoy)
    with pytest.raises(CommitFormatError, match="gpgsig-sha256"):
        split_signed_commit(signed.replace(b"\ngpgsig ", b"\ngpgsig-sha256 "))


def test_public_key_parsing_refuses_other_types() -> None:
    with pytest.raises(sshsig.SignatureError, match="not supported"):
        sshsig.parse_public_key("ssh-rsa AAAAB3NzaC1yc2E= x")
    with pytest.raises(sshsig.SignatureError, match="base64"):
        sshsig.parse_public_key("ssh-ed25519 !!!")


def test_key_file_is_private_and_refused_when_readable(tmp_path: Path) -> None:
    path = tmp_path / "id" / "status_ed25519"
    key = keys.generate(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.public_line(keys.load(path)) == keys.public_line(key)
    path.chmod(0o644)
    with pytest.raises(keys.CredentialError, match="too open"):
        keys.load(path)
    with pytest.raises(keys.KeyError_, match="exists already"):
        keys.generate(path)
