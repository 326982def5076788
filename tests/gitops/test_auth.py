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


def test_proxy_and_client_certificate_go_to_git_environment_never_argv(tmp_path: Path) -> None:
    cert, key = tmp_path / "dev.pem", tmp_path / "dev.key"
    cert.write_text("cert")
    key.write_text("key")
    os.chmod(key, 0o600)
    creds = Credentials(client_cert_file=cert, client_key_file=key, proxy="http://proxy.corp:3128")
    env = GitAuth("https://git.example.com/ops/fleet.git", creds).env()
    pairs = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))}
    assert pairs == {"http.https://git.example.com/.proxy": "http://proxy.corp:3128"}
    assert (env["GIT_SSL_CERT"], env["GIT_SSL_KEY"]) == (str(cert), str(key))
    # `direct`: git's empty http.proxy, which overrides https_proxy of the environment
    env = GitAuth("https://git.example.com/ops/fleet.git", Credentials(proxy="direct")).env()
    assert env["GIT_CONFIG_KEY_0"] == "http.https://git.example.com/.proxy" and env["GIT_CONFIG_VALUE_0"] == ""


def test_a_client_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    from reconciler.core.credentials import CredentialError

    cert, key = tmp_path / "dev.pem", tmp_path / "dev.key"
    cert.write_text("cert")
    key.write_text("key")
    os.chmod(key, 0o644)
    creds = Credentials(client_cert_file=cert, client_key_file=key)
    with pytest.raises(CredentialError, match="permissions 0644 for credential file .*dev.key are too open"):
        GitAuth("https://h/fleet.git", creds).env()
    with pytest.raises(CredentialError, match="too open"):  # the in-process clients ask for their header first
        creds.authorization()


def test_extra_ca_makes_one_bundle_of_the_system_store_and_the_ca(tmp_path: Path) -> None:
    from reconciler.gitops.cabundle import system_bundle

    extra = tmp_path / "private-ca.pem"
    extra.write_text("-----BEGIN CERTIFICATE-----\nprivate\n-----END CERTIFICATE-----\n")
    creds = Credentials(extra_ca_file=extra, bundle_dir=tmp_path / "state" / "tls")
    bundle = Path(GitAuth("https://h/fleet.git", creds).env()["GIT_SSL_CAINFO"])
    assert bundle.parent == tmp_path / "state" / "tls"
    data = bundle.read_bytes()
    assert data.startswith(system_bundle().read_bytes().rstrip(b"\n")) and data.endswith(extra.read_bytes())
    assert GitAuth("https://h/fleet.git", creds).env()["GIT_SSL_CAINFO"] == str(bundle)  # same content: same file
    extra.write_text("-----BEGIN CERTIFICATE-----\nrotated\n-----END CERTIFICATE-----\n")
    rotated = Path(GitAuth("https://h/fleet.git", creds).env()["GIT_SSL_CAINFO"])
    assert rotated != bundle and rotated.read_bytes().endswith(b"rotated\n-----END CERTIFICATE-----\n")
    # on top of caFile instead of the system store
    base = tmp_path / "ca.pem"
    base.write_text("base\n")
    both = Credentials(ca_file=base, extra_ca_file=extra, bundle_dir=tmp_path / "state" / "tls")
    assert Path(GitAuth("https://h/f.git", both).env()["GIT_SSL_CAINFO"]).read_bytes().startswith(b"base\n")
    assert not list((tmp_path / "state" / "tls").glob(".ca-*"))  # no temp file left behind


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
    ("https://h/r.git requires a client certificate and none is configured (HTTP 400)", "ClientCertificateRefused"),
    ("fatal: unable to access 'https://h/r/': OpenSSL/3.0.11: error:0A00045C:SSL routines::tlsv13 alert "
     "certificate required", "ClientCertificateRefused"),
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
