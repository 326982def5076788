"""The gateway's read-only mirror of the fleet repository's branches.

A bare repository (``<dataDir>/repos/fleet.git``) set up as ``git clone --mirror`` would, but with fetch refspecs
for the configured branches only (a ``--mirror`` clone would also copy every device's status branch), served to
the site's devices by ``git http-backend`` with pushes off. :meth:`FleetMirror.refresh` asks upstream for the
branch heads in one protocol v2 ``ls-refs`` request (:func:`reconciler.gitops.lsrefs.remote_refs`: the devices'
own poll) and fetches only when one moved: the central server sees one poll per interval per site, and one
fetch per change, whatever the number of devices behind the gateway.

A failed poll or fetch is named as a device names it (:func:`failure_reason`: ``ClientCertificateRefused``,
``AuthenticationFailed``, ``TLSVerificationFailed``, …) in the gateway's state and log. The upstream's
``credentials`` (proxy, CAs, client certificate) reach both the in-process poll and git's fetch.

The mirror follows upstream as it is (a forced fetch): it verifies nothing, because it is not trusted — every
device verifies commits (signatures, history protection) as if it fetched from the central server.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from reconciler.core.credentials import CredentialError, Credentials
from reconciler.core.redact import redact, redact_url
from reconciler.gitops.auth import GitAuth, classify, explain
from reconciler.gitops.lsrefs import LsRefsClient, LsRefsError, remote_refs
from reconciler.gitops.verify import init_bare, run_git

log = logging.getLogger("reconciler.gateway")


def failure_reason(exc: BaseException) -> str | None:
    """The reason a device would give for this failure of a Git request (None: none of the named ones)."""
    if isinstance(exc, LsRefsError):
        return exc.reason
    if isinstance(exc, CredentialError):
        return exc.reason
    return classify(str(exc))


class FleetMirror:
    def __init__(self, git_dir: Path, url: str, branches: tuple[str, ...], *,
                 credentials: Credentials | None = None, timeout: float = 60.0) -> None:
        self.git_dir = Path(git_dir)
        self.url = url
        self.display_url = redact_url(url)
        self.branches = branches
        self.credentials = credentials or Credentials()
        self.auth = GitAuth(url, self.credentials)
        self.timeout = timeout
        self.polls = 0
        self.fetches = 0
        self.last_error: str | None = None
        self.last_reason: str | None = None  # the named reason of the last failure (reconciler.core.reasons)
        self.last_refresh: float | None = None  # time.time() of the last poll that reached upstream
        self._client: LsRefsClient | None = None

    def ensure(self) -> None:
        """Create the bare mirror if missing (its HEAD on the first branch; pushes refused)."""
        if (self.git_dir / "HEAD").is_file():
            return
        tmp = self.git_dir.with_name(self.git_dir.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        init_bare(tmp, timeout=self.timeout)
        for key, value in (("http.receivepack", "false"), ("http.uploadpack", "true"), ("gc.auto", "0"),
                           ("core.fsync", "committed"), ("uploadpack.allowFilter", "false")):
            run_git(["config", key, value], git_dir=tmp, timeout=self.timeout)
        run_git(["symbolic-ref", "HEAD", f"refs/heads/{self.branches[0]}"], git_dir=tmp, timeout=self.timeout)
        tmp.rename(self.git_dir)

    def local_heads(self) -> dict[str, str]:
        out = run_git(["for-each-ref", "--format=%(objectname) %(refname)", *self.refs()], git_dir=self.git_dir,
                      timeout=self.timeout).stdout.decode()
        return {ref: oid for oid, _, ref in (line.partition(" ") for line in out.splitlines())}

    def refs(self) -> list[str]:
        return [f"refs/heads/{b}" for b in self.branches]

    def _ls_refs(self, wanted: list[str]) -> dict[str, str]:
        """The exact ``wanted`` refs upstream: one ``ls-refs`` on a kept-alive connection over HTTP(S), else
        ``git ls-remote``."""
        if self.auth.is_http:
            if self._client is None:
                self._client = LsRefsClient(self.url, authorization=self.auth.authorization, timeout=self.timeout,
                                            credentials=self.credentials)
            got = self._client.ls_refs(wanted)
        else:
            got = {}
            for r in wanted:
                got.update(remote_refs(self.url, r, credentials=self.credentials, timeout=self.timeout))
        return {r: got[r] for r in wanted if r in got}

    def refresh(self) -> bool:
        """One poll upstream; a fetch when a branch moved. True when the mirror changed. Raises on failure."""
        self.polls += 1
        wanted = self.refs()
        try:
            heads = self._ls_refs(wanted)
        except Exception as exc:
            self._failed(exc)
            if self._client is not None:
                self._client.close()
                self._client = None
            raise
        self.last_refresh = time.time()
        if heads == self.local_heads():
            self.last_error = self.last_reason = None
            return False
        specs = [f"+{r}:{r}" for r in heads]
        try:
            run_git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--prune", "--", self.url, *specs],
                    git_dir=self.git_dir, timeout=max(self.timeout, 300), env=self.auth.env())
        except Exception as exc:
            self._failed(exc)
            raise
        self.fetches += 1
        self.last_error = self.last_reason = None
        log.info("mirror fetched %s", ", ".join(f"{r.removeprefix('refs/heads/')}={h[:12]}" for r, h in heads.items()))
        return True

    def _failed(self, exc: BaseException) -> None:
        """Name the failure as a device names it (``ClientCertificateRefused``, ``AuthenticationFailed``, …) and
        log it once per change; the message never holds a secret (git's is scrubbed of the credentials)."""
        self.last_reason = failure_reason(exc)
        text = redact(str(exc), self.credentials.secret_values())
        message = f"{self.last_reason}: {text}" if self.last_reason else f"{type(exc).__name__}: {text}"
        if message != self.last_error:
            log.warning("mirror refresh from %s failed: %s", self.display_url, explain(self.last_reason or "", message))
        self.last_error = message

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
