"""Redaction of URLs and messages, and secret files checked like ssh checks a private key (pure + local files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.credentials import CredentialError, Credentials, basic_authorization, read_secret
from reconciler.core.redact import (
    has_password,
    redact,
    redact_tree,
    redact_url,
    split_userinfo,
    userinfo_problem,
)


@pytest.mark.parametrize(("url", "shown"), [
    # The whole userinfo goes: a user name may be the token itself (GitHub's https://<token>@github.com).
    ("https://ops:s3cret@git.example.com/fleet.git", "https://***@git.example.com/fleet.git"),
    ("https://x-access-token:ghs_abc123@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://ghp_abc123@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://ghp_abc123:x-oauth-basic@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("HTTPS://ghp_abc123@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://x-access-token%3Aghp_abc123@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://ghp_abc123%40github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://ops:p@ss@word@git.example.com/r.git", "https://***@git.example.com/r.git"),
    ("ssh://git:s3cret@git.example.com/fleet.git", "ssh://git:***@git.example.com/fleet.git"),
    ("https://git.example.com/fleet.git?private_token=abc123&x=1", "https://git.example.com/fleet.git?private_token=***&x=1"),
    ("ssh://git@git.example.com:2222/fleet.git", "ssh://git@git.example.com:2222/fleet.git"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ("https://git.example.com/fleet.git", "https://git.example.com/fleet.git"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    in_text = shown if not url.startswith("HTTPS") else shown.replace("https", "HTTPS")  # text keeps the case
    assert redact(f"fatal: unable to access '{url}': 401") == f"fatal: unable to access '{in_text}': 401"
    assert "abc123" not in redact_tree({"m": [f"see {url}"]})["m"][0] and "s3cret" not in redact(url)


def test_redact_text_masks_headers_and_known_secrets() -> None:
    text = "Authorization: Basic b3BzOnB3MQ== then token hunter2-xyz at http://u:p@h/x"
    out = redact(text, ("hunter2-xyz",))
    assert "b3BzOnB3MQ" not in out and "hunter2-xyz" not in out and "http://***@h/x" in out


def test_split_userinfo() -> None:
    assert split_userinfo("https://ops:p%40ss@h:8443/r.git") == ("https://h:8443/r.git", "ops", "p@ss")
    assert split_userinfo("https://h/r.git") == ("https://h/r.git", None, None)
    assert has_password("https://ops:x@h/r") and not has_password("ssh://git@h/r")


@pytest.mark.parametrize("url", [
    "https://ops@h/r.git", "https://ghp_tok@h/r.git", "https://ops:pw@h/r.git", "https://x-access-token%3Atok@h/r",
    "https://tok%40h/r", "HTTPS://tok@h/r", "http://tok@h/r", "file://tok@h/r", "  https://tok@h/r",
    "ssh://git:pw@h/r",
])
def test_userinfo_problem_refuses_any_userinfo(url: str) -> None:
    assert userinfo_problem(url, ssh_login=True)


@pytest.mark.parametrize("url", ["https://h/r.git", "ssh://git@h:22/r.git", "git+ssh://git@h/r", "git@h:o/r.git",
                                 "/srv/fleet.git", "file:///srv/fleet.git", "https://h/r?user=a@b"])
def test_userinfo_problem_keeps_ssh_logins_and_plain_urls(url: str) -> None:
    assert userinfo_problem(url, ssh_login=True) is None
    assert userinfo_problem("ssh://git@h/r") is not None  # where no SSH URL belongs (TUF, capture), none is allowed


def test_redact_tree_copies_only_what_it_masks() -> None:
    doc = {"a": ["x", 1, None], "b": {"c": "plain = text"}}
    assert redact_tree(doc) is doc
    out = redact_tree({"keep": doc, "msg": "fatal: 'https://tok@h/r' 403"})
    assert out == {"keep": doc, "msg": "fatal: 'https://***@h/r' 403"} and out["keep"] is doc


def _secret(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_secret_files_are_checked_like_ssh_keys(tmp_path: Path) -> None:
    assert read_secret(_secret(tmp_path / "ok", "tok3n\n", 0o600)) == "tok3n"
    with pytest.raises(CredentialError, match="0644 .* too open"):
        read_secret(_secret(tmp_path / "open", "tok3n", 0o644))
    with pytest.raises(CredentialError, match="does not exist"):
        read_secret(tmp_path / "missing")
    with pytest.raises(CredentialError, match="exactly one line"):
        read_secret(_secret(tmp_path / "two", "a\nb\n", 0o600))
    with pytest.raises(CredentialError, match="not a regular file"):
        read_secret(tmp_path)
    creds = Credentials(username="dev", password_file=tmp_path / "ok")
    assert creds.authorization() == basic_authorization("dev", "tok3n") == "Basic ZGV2OnRvazNu"
    assert Credentials(bearer_token_file=tmp_path / "ok").authorization() == "Bearer tok3n"
    _secret(tmp_path / "ok", "rotated", 0o600)  # read at use: rotation needs no restart
    assert creds.authorization() == basic_authorization("dev", "rotated")


def test_a_secret_rewritten_in_place_is_read_again_even_within_one_clock_tick(tmp_path: Path) -> None:
    path = _secret(tmp_path / "tok", "first-1", 0o600)
    assert read_secret(path) == "first-1"
    # Same size, same inode, rewritten at once: the timestamps may not have moved (coarse kernel clock).
    with open(path, "w") as fh:
        fh.write("second2")
    assert read_secret(path) == "second2"
    old = os.stat(path).st_mtime - 5
    os.utime(path, (old, old))
    assert read_secret(path) == "second2"  # settled: now answered from what was read
    with open(path, "w") as fh:
        fh.write("third-3")
    os.utime(path, (old, old))  # even a writer that puts the old mtime back changes the ctime
    assert read_secret(path) == "third-3"
    os.chmod(path, 0o644)
    with pytest.raises(CredentialError, match="too open"):  # checked on every use, cached or not
        read_secret(path)
