"""How git reaches a private fleet repository without a secret on any command line, and what its errors mean.

:class:`GitAuth` turns a :class:`~reconciler.core.credentials.Credentials` (paths only) into the environment of
one git process, read fresh from the files each time (rotation needs no restart):

- HTTP(S): ``http.<origin>.extraHeader = Authorization: …`` through
  ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n``, the CA bundle as ``GIT_SSL_CAINFO``. The header goes out with the first request
  (no 401 round trip), is scoped to the repository's origin (a redirect elsewhere does not get it), and lives
  in the child's environment, which Linux shows only to the same user and root — ``ps`` never shows it.
  ``credential.helper`` is emptied so a helper of the service user cannot substitute other credentials.
- SSH: ``GIT_SSH_COMMAND`` with the deploy key, ``IdentitiesOnly``, the pinned known-hosts file and
  ``StrictHostKeyChecking=yes`` (paths only; ssh reads the key itself). Without an SSH setting nothing is
  set, so the service user's ``core.sshCommand`` / ``~/.ssh/config`` apply unchanged.

:func:`classify` names a failure from git's message (``AuthenticationFailed``: the credentials were refused;
``PermissionDenied``: they were accepted but lack the access, HTTP 403, a read-only token or key, a protected
branch; ``TLSVerificationFailed``, ``HostKeyVerificationFailed``), shared by the source poll, the status push and
``fleet status``. :func:`explain` puts the hint of each in front of the message.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from reconciler.core.credentials import Credentials, check_private_file, read_secret
from reconciler.core.proxy import DIRECT, proxy_for, with_userinfo
from reconciler.core.reasons import (
    AUTHENTICATION_FAILED,
    CLIENT_CERTIFICATE_REFUSED,
    HOST_KEY_VERIFICATION_FAILED,
    PERMISSION_DENIED,
    TLS_VERIFICATION_FAILED,
)
from reconciler.gitops.cabundle import combined_bundle
from reconciler.net import clientcert

_AUTH_MARKERS = ("authentication failed", "http basic: access denied", "returned error: 401",
                 "could not read username", "could not read password", "permission denied (publickey",
                 "terminal prompts disabled", "http 401")
# Valid credentials without the access: git over HTTP says "The requested URL returned error: 403"; the hosts add
# their own words (GitHub "Permission to o/r.git denied to u." / "Write access to repository not granted." / a
# read-only deploy key over SSH; GitLab and Gitea "not allowed to push", protected branches).
_DENIED_MARKERS = ("returned error: 403", "http 403", "write access to repository not granted",
                   "marked as read only", "not allowed to push", "permission denied for writing", "protected branch")
_DENIED_RE = re.compile(r"permission to \S+ denied to ")
_TLS_MARKERS = ("ssl certificate problem", "server certificate verification failed", "certificate verify failed",
                "ssl: certificate", "unable to get local issuer certificate", "self-signed certificate",
                "self signed certificate")
# The in-process clients' own words (reconciler.net.clientcert), carried by a GitError to here.
_CLIENT_CERT_MARKERS = ("requires a client certificate", "refused the client certificate")
_HOSTKEY_MARKERS = ("host key verification failed", "remote host identification has changed",
                    "host key is known for", "no matching host key")


HINTS = {
    AUTHENTICATION_FAILED: "the server refused the credentials (check the credentials' username/passwordFile or "
                           "sshKeyFile, and that the key or token has access)",
    PERMISSION_DENIED: "the credentials are valid but lack access to the repository: give the device's token or "
                       "deploy key read access to it",
    TLS_VERIFICATION_FAILED: "the server's TLS certificate is not trusted (set credentials.caFile to its CA, or "
                             "extraCaFile to add it to the system's)",
    CLIENT_CERTIFICATE_REFUSED: "the server wants a client certificate it trusts (mutual TLS: set "
                                "credentials.clientCertFile and clientKeyFile)",
    HOST_KEY_VERIFICATION_FAILED: "the server's SSH host key is not in credentials.knownHostsFile (or changed)",
}


def push_denied_hint(branch: str) -> str:
    """What ``PermissionDenied`` means for a status push to ``branch``."""
    return (f"the credentials are valid but lack write access to {branch}: give the device's token write access "
            "to that branch, or check branch protection")


def explain(reason: str, message: str, *, push_branch: str | None = None) -> str:
    """``message`` prefixed with what to do about ``reason`` (unchanged for other reasons); ``push_branch``: the
    failure is a push to that branch (``PermissionDenied`` then asks for write access to it)."""
    hint = push_denied_hint(push_branch) if reason == PERMISSION_DENIED and push_branch else HINTS.get(reason)
    return f"{hint}: {message}" if hint else message


def classify(message: str) -> str | None:
    """The named reason for a git/HTTP failure message, or None when it is none of these four."""
    low = message.lower()
    if any(m in low for m in _HOSTKEY_MARKERS):
        return HOST_KEY_VERIFICATION_FAILED
    if any(m in low for m in _CLIENT_CERT_MARKERS) or clientcert.refused_alert(low):
        return CLIENT_CERTIFICATE_REFUSED
    if any(m in low for m in _TLS_MARKERS):
        return TLS_VERIFICATION_FAILED
    if any(m in low for m in _DENIED_MARKERS) or _DENIED_RE.search(low):
        return PERMISSION_DENIED
    if any(m in low for m in _AUTH_MARKERS):
        return AUTHENTICATION_FAILED
    return None


def http_origin(url: str) -> str | None:
    """``scheme://host[:port]/`` for an http(s) URL, else None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}/"


@dataclass
class GitAuth:
    """Credentials of one remote URL, as git environment (see the module docstring)."""

    url: str
    credentials: Credentials = field(default_factory=Credentials)
    inline_authorization: str | None = None  # taken out of a URL's userinfo (operator commands only)

    @property
    def is_http(self) -> bool:
        return http_origin(self.url) is not None

    def authorization(self) -> str | None:
        if not self.is_http:
            return None
        return self.inline_authorization or self.credentials.authorization()

    def env(self) -> dict[str, str]:
        """Environment for a git process talking to :attr:`url` (raises CredentialError for a bad file)."""
        creds = self.credentials
        out: dict[str, str] = {}
        config: list[tuple[str, str]] = []
        origin = http_origin(self.url)
        if origin is not None:
            auth = self.authorization()
            if auth is not None:
                config += [("credential.helper", ""), (f"http.{origin}.extraHeader", f"Authorization: {auth}")]
            if creds.extra_ca_file is not None:
                # git (libcurl) has no "add to the system store": a bundle of both, rebuilt when either changes.
                out["GIT_SSL_CAINFO"] = str(combined_bundle(creds.ca_file, creds.extra_ca_file, creds.bundle_dir))
            elif creds.ca_file is not None:
                # The variable, not http.sslCAInfo: an inherited GIT_SSL_CAINFO would win over any config.
                out["GIT_SSL_CAINFO"] = str(creds.ca_file)
            if creds.client_cert_file is not None:
                creds.check_client_key()
                # Variables like the CA: an inherited GIT_SSL_CERT would win over http.sslCert.
                out["GIT_SSL_CERT"], out["GIT_SSL_KEY"] = str(creds.client_cert_file), str(creds.client_key_path)
            proxy = creds.proxy
            if creds.proxy_password_file is not None and proxy != DIRECT:
                # git takes a proxy's credentials from http.proxy's userinfo: the proxy the endpoint uses, as
                # git would pick it, with them (in the environment of the process, like the header).
                chosen = proxy_for(self.url, os.environ, proxy)
                if chosen is not None:
                    proxy = with_userinfo(chosen, creds.proxy_username or "", read_secret(creds.proxy_password_file))
            if proxy is not None:
                # Scoped like the header; an empty http.proxy is git's "no proxy, whatever the environment says".
                config.append((f"http.{origin}.proxy", "" if proxy == DIRECT else proxy))
        if creds.ssh_key_file is not None or creds.known_hosts_file is not None:
            cmd = ["ssh", "-o", "BatchMode=yes", "-o", "IdentityAgent=none"]
            if creds.ssh_key_file is not None:
                check_private_file(creds.ssh_key_file)
                cmd += ["-i", str(creds.ssh_key_file), "-o", "IdentitiesOnly=yes"]
            if creds.known_hosts_file is not None:
                cmd += ["-o", f"UserKnownHostsFile={creds.known_hosts_file}", "-o", "GlobalKnownHostsFile=/dev/null",
                        "-o", "StrictHostKeyChecking=yes"]
            out["GIT_SSH_COMMAND"] = " ".join(shlex.quote(c) for c in cmd)
        if config:
            base = _int(os.environ.get("GIT_CONFIG_COUNT"))
            for i, (key, value) in enumerate(config, start=base):
                out[f"GIT_CONFIG_KEY_{i}"], out[f"GIT_CONFIG_VALUE_{i}"] = key, value
            out["GIT_CONFIG_COUNT"] = str(base + len(config))
        return out


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0
