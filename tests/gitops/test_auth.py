"""Git credentials as environment (never argv), failure names, and the protocol v2 ls-refs parser (pure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.credentials import Credentials
from reconciler.gitops.auth import GitAuth, classify
from reconciler.gitops.lsrefs import NotV2, ls_refs_request, parse_ls_refs, pkt


def test_http_credentials_go_to_git_config_env_scoped_to_the_origin(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret")
    os.chmod(pw, 0o600)
    env = GitAuth("https://git.example.com:8443/ops/fleet.git",
                  Credentials("dev", pw, ca_file=tmp_path / "ca.pem")).env()
    pairs = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))}
    assert pairs == {"credential.helper": "",
                     "http.https://git.example.com:8443/.extraHeader": "Authorization: Basic ZGV2OnMzY3JldA=="}
    assert env["GIT_SSL_CAINFO"] == str(tmp_path / "ca.pem")
    assert "GIT_SSH_COMMAND" not in env


def test_ssh_credentials_pin_key_and_host(tmp_path: Path) -> None:
    key = tmp_path / "deploy key"
    key.write_text("k")
    os.chmod(key, 0o600)
    env = GitAuth("ssh://git@h/fleet.git", Credentials(ssh_key_file=key, known_hosts_file=tmp_path / "kh")).env()
    cmd = env["GIT_SSH_COMMAND"]
    assert "BatchMode=yes" in cmd and "IdentitiesOnly=yes" in cmd and "StrictHostKeyChecking=yes" in cmd
    assert f"'{key}'" in cmd  # quoted: git runs it through a shell
    assert GitAuth("ssh://git@h/fleet.git").env() == {}  # nothing configured: core.sshCommand applies


@pytest.mark.parametrize(("message", "reason"), [
    ("fatal: Authentication failed for 'https://h/r.git/'", "AuthenticationFailed"),
    ("fatal: could not read Username for 'https://h': terminal prompts disabled", "AuthenticationFailed"),
    ("fatal: unable to access 'https://h/r/': The requested URL returned error: 401", "AuthenticationFailed"),
    # Valid credentials without the access (read-only token or key, protected branch): not a wrong password.
    ("fatal: unable to access 'https://h/r/': The requested URL returned error: 403", "PermissionDenied"),
    ("remote: Permission to o/r.git denied to dev-1.\nfatal: unable to access 'https://github.com/o/r.git/': "
     "The requested URL returned error: 403", "PermissionDenied"),
    ("remote: Write access to repository not granted.", "PermissionDenied"),
    ("ERROR: The key you are authenticating with has been marked as read only.", "PermissionDenied"),
    ("remote: error: GH006: Protected branch update failed for refs/heads/status/dev-1.", "PermissionDenied"),
    ("remote: GitLab: You are not allowed to push code to protected branches on this project.", "PermissionDenied"),
    ("https://h/r.git denied the push (HTTP 403)", "PermissionDenied"),
    ("git@h: Permission denied (publickey).", "AuthenticationFailed"),
    ("fatal: unable to access 'https://h/': SSL certificate problem: unable to get local issuer certificate",
     "TLSVerificationFailed"),
    ("server certificate verification failed. CAfile: /etc/ssl/certs/ca-certificates.crt", "TLSVerificationFailed"),
    ("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\n"
     "Host key verification failed.", "HostKeyVerificationFailed"),
    ("fatal: unable to connect to h: Connection refused", None),
])
def test_classify(message: str, reason: str | None) -> None:
    assert classify(message) == reason


def test_ls_refs_request_and_response() -> None:
    assert ls_refs_request("refs/heads/main", "a") == (
        b"0014command=ls-refs\n000cagent=a\n0001001fref-prefix refs/heads/main\n0000")
    oid = "a" * 40
    body = pkt(f"{oid} refs/heads/main\n".encode()) + pkt(f"{'b' * 40} refs/heads/main-old\n".encode()) + b"0000"
    assert parse_ls_refs(body) == {"refs/heads/main": oid, "refs/heads/main-old": "b" * 40}
    assert parse_ls_refs(b"0000") == {}
    for bad in (b"001e# service=git-upload-pack\n0000", b"<html>", pkt(b"ERR access denied") + b"0000",
                pkt(f"{oid} refs/heads/main\n".encode())):
        with pytest.raises(NotV2):
            parse_ls_refs(bad)
