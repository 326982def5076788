"""The status relay: the site's devices push ``status/<id>`` to the gateway, the gateway pushes them upstream.

The site's status repository (``<dataDir>/repos/status.git``) takes the devices' pushes through ``git
http-backend`` (the devices' one-request in-process push, as to a central server). A ``pre-receive`` hook keeps
it to ``refs/heads/<prefix>*`` and at most ``maxDevices`` branches; ``receive.denyNonFastForwards`` and
``receive.denyDeletes`` keep what landed; ``core.fsync=committed`` makes a landed push survive a crash of the
host, not only of the gateway. That repository is the relay's queue: bounded by its branch count, one entry per
device (a newer status replaces the older one's place, its history comes along).

:meth:`StatusRelay.relay_once` compares every branch's tip with the :class:`RelayJournal` — the commit upstream
last acknowledged for each branch, written temp + fsync + rename after every push — and sends what moved in
**one** ``git push`` per upstream status repository carrying many ref updates (at most ``maxRefsPerPush``; the
rest next time), each ``<commit>:<ref>`` so a device pushing meanwhile changes nothing in flight. A gateway
killed at any point loses nothing: what was not acknowledged is still pending, and pushing a commit upstream
already has again is a no-op.

A branch upstream refuses (a device pushed to the central server while the gateway was down, or lost its own
state and started over) is fetched from upstream: the gateway's branch moves to upstream's tip, so the
device's next push there is built on it (the device's writer rebases on a refused push). The relay never forces
anything upstream and holds no signing key: a status commit is signed by its device, and a gateway that altered
one would only make it untrusted (docs/security.md).

A failed push is named as a device names it (``ClientCertificateRefused``, ``AuthenticationFailed``, …) in
``status.reason`` of the gateway's state and in its log; git reports a server refusing the client certificate
as a bare HTTP 400, so then one in-process request reads the server's page to tell.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import urllib3

from reconciler.core.credentials import CredentialError, Credentials
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.reasons import CLIENT_CERTIFICATE_REFUSED
from reconciler.core.redact import redact, redact_url
from reconciler.gitops.auth import GitAuth, classify, explain
from reconciler.gitops.statusrepo import status_shard
from reconciler.gitops.verify import GitError, init_bare, run_git
from reconciler.net import clientcert
from reconciler.net.pools import Pools

log = logging.getLogger("reconciler.gateway")

ZERO = "0" * 40
HOOK = """#!/bin/sh
# modelfleet gateway: the site's devices push their status branches here, and nothing else.
prefix='refs/heads/{prefix}'
max={max_devices}
while read old new ref; do
  case "$ref" in
    "$prefix"*) ;;
    *) echo "modelfleet gateway: only $prefix* is accepted here" >&2; exit 1 ;;
  esac
  case "${{ref#"$prefix"}}" in
    ''|*[!a-z0-9.-]*) echo "modelfleet gateway: $ref is not a device's status branch" >&2; exit 1 ;;
  esac
  if [ "$old" = {zero} ]; then
    n=$(git for-each-ref --format=x "$prefix" | wc -l)
    if [ "$n" -ge "$max" ]; then echo "modelfleet gateway: $max status branches already" >&2; exit 1; fi
  fi
done
exit 0
"""


class RelayJournal:
    """ref -> the commit upstream acknowledged last (bounded by the status repository's branch count)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acked: dict[str, str] = {}
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("acked"), dict):
                self.acked = {str(k): str(v) for k, v in data["acked"].items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:  # a torn write cannot happen (rename); anything else: start over
            log.warning("relay journal %s unreadable (%s): every branch is pushed again (a no-op upstream)", path, exc)

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"version": 1, "acked": self.acked}, sort_keys=True) + "\n",
                          mode=0o600)


class StatusRelay:
    def __init__(self, git_dir: Path, journal: Path, upstream_urls: tuple[str, ...], *, prefix: str = "status/",
                 credentials: Credentials | None = None, max_refs_per_push: int = 2000, max_devices: int = 20000,
                 timeout: float = 120.0) -> None:
        self.git_dir = Path(git_dir)
        self.journal = RelayJournal(Path(journal))
        self.urls = list(upstream_urls)
        self.prefix = prefix
        self.ref_prefix = f"refs/heads/{prefix}"
        self.credentials = credentials or Credentials()
        self.max_refs_per_push = max_refs_per_push
        self.max_devices = max_devices
        self.timeout = timeout
        self.pushes = 0  # pushes upstream (each carrying many ref updates)
        self.refs_relayed = 0
        self.last_error: str | None = None
        self.last_reason: str | None = None  # the named reason of the last failure (reconciler.core.reasons)

    # -- the site's status repository

    def ensure(self) -> None:
        if not (self.git_dir / "HEAD").is_file():
            tmp = self.git_dir.with_name(self.git_dir.name + ".tmp")
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            init_bare(tmp, timeout=self.timeout)
            tmp.rename(self.git_dir)
        for key, value in (("http.receivepack", "true"), ("http.uploadpack", "true"),
                           ("receive.denyNonFastForwards", "true"), ("receive.denyDeletes", "true"),
                           ("receive.autogc", "false"), ("core.alternateRefsCommand", "true"),
                           ("core.fsync", "committed"), ("gc.auto", "0"), ("core.logAllRefUpdates", "false")):
            run_git(["config", key, value], git_dir=self.git_dir, timeout=self.timeout)
        hook = self.git_dir / "hooks" / "pre-receive"
        hook.parent.mkdir(exist_ok=True)
        text = HOOK.format(prefix=self.prefix, max_devices=self.max_devices, zero=ZERO)
        if not hook.is_file() or hook.read_text() != text:
            atomic_write_text(hook, text, mode=0o755)

    def local_tips(self) -> dict[str, str]:
        out = run_git(["for-each-ref", "--format=%(objectname) %(refname)", self.ref_prefix], git_dir=self.git_dir,
                      timeout=self.timeout).stdout.decode()
        return {ref: oid for oid, _, ref in (line.partition(" ") for line in out.splitlines())}

    def pending(self) -> dict[str, str]:
        """ref -> tip of every branch whose tip upstream has not acknowledged."""
        return {ref: sha for ref, sha in sorted(self.local_tips().items()) if self.journal.acked.get(ref) != sha}

    # -- relaying

    def relay_once(self) -> dict[str, int]:
        """Push what is pending: one push per upstream repository. Returns counts of this round."""
        pending = self.pending()
        by_url: dict[str, list[tuple[str, str]]] = {}
        for ref, sha in pending.items():
            url = status_shard(ref[len(self.ref_prefix):], self.urls) or self.urls[0]
            by_url.setdefault(url, []).append((ref, sha))
        stats = {"pending": len(pending), "pushes": 0, "relayed": 0, "rejected": 0, "failed": 0}
        errors: list[tuple[str | None, str]] = []
        for url, updates in by_url.items():
            batch = updates[: self.max_refs_per_push]
            try:
                ok, rejected = self._push(url, batch)
            except (GitError, CredentialError) as exc:
                stats["failed"] += len(batch)
                reason = exc.reason if isinstance(exc, CredentialError) else classify(str(exc))
                message = f"{reason}: {exc}" if reason else str(exc)
                if reason is None and (refusal := self._certificate_refusal(url, str(exc))):
                    reason, message = CLIENT_CERTIFICATE_REFUSED, f"{CLIENT_CERTIFICATE_REFUSED}: {refusal}"
                if message != self.last_error:
                    log.warning("relay push to %s failed: %s", redact_url(url), explain(reason or "", message))
                errors.append((reason, message))
                continue
            stats["pushes"] += 1
            self.pushes += 1
            self.journal.acked.update(ok)
            stats["relayed"] += len(ok)
            self.refs_relayed += len(ok)
            if rejected:
                stats["rejected"] += len(rejected)
                self._adopt_upstream(url, rejected)
            self.journal.save()
        self.last_reason, self.last_error = errors[-1] if errors else (None, None)
        return stats

    def _push(self, url: str, batch: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
        """One ``git push`` of ``batch``; (acknowledged ref -> sha, rejected ref -> sha)."""
        auth = GitAuth(url, self.credentials)
        specs = [f"{sha}:{ref}" for ref, sha in batch]
        proc = run_git(["push", "--porcelain", "--", url, *specs], git_dir=self.git_dir, check=False,
                       timeout=max(self.timeout, 10 + len(batch) * 0.05), env=auth.env())
        wanted = dict(batch)
        ok: dict[str, str] = {}
        rejected: dict[str, str] = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            flag, _, rest = line.partition("\t")
            spec = rest.split("\t", 1)[0]
            ref = spec.rpartition(":")[2]
            if ref not in wanted:
                continue
            if flag in (" ", "*", "=", "+"):
                ok[ref] = wanted[ref]
            elif flag == "!":
                rejected[ref] = wanted[ref]
        if not ok and not rejected and proc.returncode != 0:
            text = redact((proc.stdout + proc.stderr).decode(errors="replace"), self.credentials.secret_values())
            raise GitError(f"relay push to {redact_url(url)} failed: {text.strip()[-500:]}")
        return ok, rejected

    def _certificate_refusal(self, url: str, error: str) -> str | None:
        """Whether a push git reports as a bare HTTP 400 was the server refusing the client certificate (git does
        not show nginx's page saying so): one request for the push's ref advertisement, in-process, tells."""
        if "error: 400" not in error.lower() or not url.startswith("https://"):
            return None
        pools = Pools(self.credentials, retries=False, timeout=urllib3.Timeout(self.timeout))
        try:
            resp = pools.request("GET", f"{url.rstrip('/')}/info/refs?service=git-receive-pack", redirect=False,
                                 preload_content=False)
            status, body = resp.status, resp.read(4096)
            resp.release_conn()
        except (urllib3.exceptions.HTTPError, OSError, ValueError, CredentialError):
            return None
        finally:
            pools.clear()
        if not clientcert.refused_page(status, body):
            return None
        return clientcert.refusal_message(redact_url(url), cert_sent=self.credentials.client_cert_file is not None,
                                          detail=f"HTTP {status}")

    def _adopt_upstream(self, url: str, rejected: dict[str, str]) -> None:
        """Upstream holds commits of these branches the gateway does not (see the module docstring): fetch them
        and move the gateway's branch there, unless a device pushed meanwhile."""
        auth = GitAuth(url, self.credentials)
        specs = [f"+{ref}:refs/relay/upstream/{ref[len('refs/heads/'):]}" for ref in rejected]
        proc = run_git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", url, *specs],
                       git_dir=self.git_dir, check=False, timeout=self.timeout, env=auth.env())
        if proc.returncode != 0:
            log.warning("relay: cannot fetch %d refused branches from %s", len(rejected), redact_url(url))
            return
        out = run_git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/relay/upstream/"],
                      git_dir=self.git_dir, timeout=self.timeout).stdout.decode()
        upstream = {"refs/heads/" + ref.removeprefix("refs/relay/upstream/"): oid
                    for oid, _, ref in (line.partition(" ") for line in out.splitlines())}
        moves = {ref: (upstream[ref], ours) for ref, ours in rejected.items() if ref in upstream}
        # One transaction for all (each only if the branch is still where we pushed it from); if a device
        # pushed meanwhile the transaction fails as a whole, and each branch is moved on its own.
        script = "".join(f"update {ref} {theirs} {ours}\n" for ref, (theirs, ours) in moves.items())
        if run_git(["update-ref", "--stdin"], git_dir=self.git_dir, input=script.encode(), check=False,
                   timeout=self.timeout).returncode == 0:
            moved = list(moves)
        else:
            moved = [ref for ref, (theirs, ours) in moves.items()
                     if run_git(["update-ref", ref, theirs, ours], git_dir=self.git_dir, check=False,
                                timeout=self.timeout).returncode == 0]
        for ref in moved:
            self.journal.acked[ref] = moves[ref][0]
        if moved:
            log.info("relay: %d branches are further upstream (a device pushed there); the gateway follows",
                     len(moved))

    def status(self) -> dict[str, object]:
        return {"branches": len(self.local_tips()), "pending": len(self.pending()), "pushes": self.pushes,
                "relayed": self.refs_relayed, "lastError": self.last_error, "reason": self.last_reason,
                "upstream": [redact_url(u) for u in self.urls], "pid": os.getpid()}
