"""Credentials a device uses to reach its Git host and TUF repository, read from files only.

A :class:`Credentials` holds *paths*, never secret values: a user name (not secret) with a password/token
file, a bearer token file (TUF), an SSH private key with a pinned known-hosts file, and a CA bundle. Secret
files are checked like ssh checks a private key (:func:`read_secret`): a regular file, owned by the agent's
user or root, neither group- nor world-readable — so a key left 0644 is refused with a clear error instead of
being used. systemd's ``LoadCredential=`` fits: ``$CREDENTIALS_DIRECTORY`` files are 0400 and owned by the
service user. Values are read at the moment of use, so rotating a file takes effect on the next request:
each use checks the file again (one ``stat``) and reads it again unless it is the very file read last time
(same inode, size, modification and change times, last changed more than a second ago — timestamps are only
as fine as the kernel's clock tick, so a file changed within the last second is always read again, as git
does with its "racily clean" index entries).
"""

from __future__ import annotations

import base64
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.reasons import CREDENTIALS_UNREADABLE

MAX_SECRET_BYTES = 64 * 1024
MAX_CACHED_SECRETS = 64
_RACY_SECONDS = 1.0
_read_secrets: dict[tuple[str, int, int, int, int, int], str] = {}  # (path, stat identity) -> value


class CredentialError(Exception):
    """A credential file is missing, unreadable or too open; ``reason`` is :data:`CREDENTIALS_UNREADABLE`."""

    reason = CREDENTIALS_UNREADABLE


@dataclass(frozen=True)
class Credentials:
    """Where one endpoint's credentials are (see ``credentials`` in the AgentConfig schema)."""

    username: str | None = None
    password_file: Path | None = None
    bearer_token_file: Path | None = None
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    ca_file: Path | None = None
    #: A CA added to the system store (or to ``ca_file``), where ``ca_file`` replaces it.
    extra_ca_file: Path | None = None
    #: Client certificate (mutual TLS), PEM; its key in ``client_key_file`` or in the same file.
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    #: The endpoint's proxy (a URL, or :data:`reconciler.core.proxy.DIRECT`); None: the environment's.
    proxy: str | None = None
    #: The proxy's own Basic credentials (whichever proxy the endpoint uses), the password from a secret file.
    proxy_username: str | None = None
    proxy_password_file: Path | None = None
    #: Where derived files go (the combined CA bundle git needs for ``extra_ca_file``): the agent's state dir.
    bundle_dir: Path | None = None

    @property
    def empty(self) -> bool:
        return not any((self.username, self.password_file, self.bearer_token_file, self.ssh_key_file,
                        self.known_hosts_file, self.ca_file, self.extra_ca_file, self.client_cert_file,
                        self.proxy))

    @property
    def client_key_path(self) -> Path | None:
        """The file holding the client certificate's private key (checked like every secret file)."""
        return self.client_key_file or self.client_cert_file

    def check_client_key(self) -> None:
        """CredentialError unless the client key file (if any) is private; called at each use."""
        if (key := self.client_key_path) is not None:
            check_private_file(key)

    def authorization(self) -> str | None:
        """The ``Authorization`` header value (Basic or Bearer), read from the files now; None without one.
        The client key file, if any, is checked here too: every request asks for its header first."""
        self.check_client_key()
        if self.bearer_token_file is not None:
            return "Bearer " + read_secret(self.bearer_token_file)
        if self.password_file is not None:
            return basic_authorization(self.username or "", read_secret(self.password_file))
        return None

    def proxy_authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value for the proxy, read from its file now; None without one."""
        if self.proxy_password_file is None:
            return None
        return basic_authorization(self.proxy_username or "", read_secret(self.proxy_password_file))

    def secret_values(self) -> tuple[str, ...]:
        """The secrets themselves (for scrubbing text that might echo them); unreadable files are skipped."""
        out: list[str] = []
        for p in (self.password_file, self.bearer_token_file, self.proxy_password_file):
            if p is not None:
                try:
                    out.append(read_secret(p))
                except CredentialError:
                    pass
        return tuple(out)


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def check_private_file(path: Path) -> os.stat_result:
    """Refuse a secret file that is not a regular file, is owned by someone else, or is group/world-readable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CredentialError(f"credential file {path} does not exist") from None
    except OSError as exc:
        raise CredentialError(f"cannot read credential file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"credential file {path} is not a regular file")
    if st.st_uid not in (os.geteuid(), 0):
        raise CredentialError(f"credential file {path} is owned by uid {st.st_uid}, not by the agent's user or root")
    if st.st_mode & 0o077:
        raise CredentialError(f"permissions {stat.S_IMODE(st.st_mode):04o} for credential file {path} are too open "
                              f"(it must not be readable by group or others: chmod 600 {path})")
    return st


def read_secret(path: Path) -> str:
    """The secret in ``path`` (surrounding whitespace stripped), after :func:`check_private_file`."""
    st = check_private_file(path)
    key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _read_secrets.get(key)
    if cached is not None and time.time() - max(st.st_mtime, st.st_ctime) > _RACY_SECONDS:
        return cached
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise CredentialError(f"cannot read credential file {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise CredentialError(f"credential file {path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"credential file {path} is not UTF-8 text") from None
    if not value or "\n" in value or "\r" in value:
        raise CredentialError(f"credential file {path} must hold exactly one line")
    if len(_read_secrets) >= MAX_CACHED_SECRETS:
        _read_secrets.clear()
    _read_secrets[key] = value
    return value

