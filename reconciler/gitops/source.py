"""The device's view of the fleet Git repository: cheap polling, verified fetches, manifests read from trees.

Workflow of :meth:`GitSource.poll`:

1. one ``git ls-remote`` (the only request of an idle poll) gives the branch head;
2. if the head is the one seen last time, the cached verdict is returned — no fetch;
3. otherwise fetch it into a bare cache repository (``--depth=1`` the first time, incremental afterwards,
   hooks disabled), check it descends from the last applied commit (history protection), and verify the
   signatures of the head (``head``) or of every new commit (``all``);
4. a refused or unreachable head leaves the device on ``last_applied`` with a False ``SourceVerified`` /
   ``SourceAvailable`` condition; failures back off exponentially and recovery is automatic.

Nothing is ever checked out: :meth:`GitSource.read_files` reads blobs from the commit tree.
:meth:`GitSource.import_bundle` applies a ``git bundle`` (air-gapped update) with the same checks.

``mirrors`` (a site gateway's read-only mirror, docs/gateway.md) are asked first, the repository itself last
(:class:`~reconciler.gitops.failover.Failover`): a mirror that is down, answers a head the device must refuse
(an unsigned commit, a history rewrite) or is behind the last applied commit is passed over for the next one, in
the same poll, and tried last for a while. The mirror is not trusted: every check above runs on what it
serves. A mirror could still withhold new commits and keep answering an old, valid head; every
``upstream_check`` seconds a poll answered by a mirror also asks the repository itself (one ``ls-refs``), and a
newer head there wins — the bound on how long a mirror can freeze the device.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import git as gitpython
from prometheus_client import Counter

from reconciler.core import reasons as R
from reconciler.core.conditions import SOURCE_AVAILABLE, SOURCE_VERIFIED, Condition, isoformat, utcnow
from reconciler.core.credentials import CredentialError, Credentials
from reconciler.core.proxy import ProxyURLError
from reconciler.core.redact import redact, redact_url
from reconciler.fleet.repository import NonRegular
from reconciler.gitops.auth import GitAuth, classify, explain
from reconciler.gitops.failover import Failover
from reconciler.gitops.lsrefs import LsRefsClient, LsRefsError, NotV2
from reconciler.gitops.verify import (
    VERIFIED,
    GitError,
    Verifier,
    VerifyResult,
    git_message,
    init_bare,
    run_git,
)

log = logging.getLogger(__name__)

# Reasons specific to the source (signature reasons come from gitverify); the vocabulary is core.reasons.
HISTORY_REWRITE = R.HISTORY_REWRITE
GIT_UNAVAILABLE = R.GIT_UNAVAILABLE
GIT_TIMEOUT = R.GIT_TIMEOUT
BRANCH_NOT_FOUND = R.BRANCH_NOT_FOUND
BUNDLE_INVALID = R.BUNDLE_INVALID
SUCCEEDED = R.SUCCEEDED
NOT_VERIFIED = R.VERIFICATION_DISABLED

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_SHARED_VERDICTS = 256

_POLLS = Counter("modelfleet_git_polls_total", "Git source polls (one ls-remote each)")
_REQUESTS = Counter("modelfleet_git_requests_total", "Network requests made to the Git server (ls-remote, fetch)")
_FETCHES = Counter("modelfleet_git_fetches_total", "Fetches made because the branch head changed")
_BYTES = Counter("modelfleet_git_fetched_bytes_total", "Bytes of pack data received by fetches and bundles")
_FAILURES = Counter("modelfleet_git_poll_failures_total", "Polls that failed or refused the head", ["reason"])


@dataclass
class PollResult:
    commit: str | None
    changed: bool
    fetched: bool
    conditions: list[Condition]
    reason: str
    message: str
    signer: str | None = None
    next_poll_delay: float = 0.0
    head: str | None = None  # the remote head that was looked at, accepted or not

    @property
    def ok(self) -> bool:
        return all(c.status == "True" for c in self.conditions)


@dataclass
class _Verdict:
    """Outcome of checking one head against one last-applied commit (cached so idle polls cost nothing)."""

    accepted: bool
    reason: str
    message: str
    signer: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def backoff_delay(failures: int, *, base: float, maximum: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with 20% jitter: ``base * 2**(failures-1)``, capped at ``maximum``."""
    if failures <= 0:
        return base
    delay = min(maximum, base * (2 ** min(failures - 1, 30)))
    return delay * (0.8 + 0.2 * rng())


def parse_ls_remote(output: str, ref: str) -> str | None:
    """The object id ``ref`` points at in ``git ls-remote`` output, or None."""
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1] == ref:
            return parts[0]
    return None


class _Endpoint:
    """One place the repository is read from: its URL, credentials and ls-refs client."""

    def __init__(self, url: str, credentials: Credentials | None, timeout: float) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.auth = GitAuth(url, credentials or Credentials())
        self.lsrefs: LsRefsClient | None = None
        if self.auth.is_http:
            try:
                self.lsrefs = LsRefsClient(url, authorization=self.auth.authorization, timeout=timeout,
                                           credentials=self.auth.credentials)
            except (ProxyURLError, CredentialError) as exc:  # `git ls-remote` meets the same proxy setting and names it
                log.warning("ls-refs at %s: %s", self.display_url, exc)

    def close(self) -> None:
        if self.lsrefs is not None:
            self.lsrefs.close()


DEFAULT_UPSTREAM_CHECK = 3600.0  # s: how long a mirror can keep a device on an old head (docs/gateway.md)


class GitSource:
    """Polls one branch of one repository; see the module docstring."""

    max_packs = 40  # consolidate the cache's packs beyond this many

    def __init__(
        self,
        url: str,
        cache_dir: Path,
        *,
        branch: str = "main",
        subpath: str | None = None,
        verify_mode: str = "none",
        allowed_signers: Path | None = None,
        gpg_keyring: Path | None = None,
        allow_history_rewrite: bool = False,
        timeout: float = 30,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = 60.0,
        backoff_base: float = 5.0,
        max_backoff: float = 600.0,
        credentials: Credentials | None = None,
        verdicts: dict[tuple[str, str | None, tuple[object, ...]], _Verdict] | None = None,
        mirrors: list[tuple[str, Credentials | None]] | None = None,
        upstream_check: float = DEFAULT_UPSTREAM_CHECK,
    ) -> None:
        if verify_mode not in ("none", "head", "all"):
            raise ValueError(f"verify_mode must be none, head or all, not {verify_mode!r}")
        if verify_mode != "none" and allowed_signers is None and gpg_keyring is None:
            raise ValueError(f"verify mode {verify_mode!r} needs an allowed-signers file or a GPG keyring")
        self.url = url
        self.display_url = redact_url(url)  # the only form of the URL that is ever printed, logged or stored
        self._primary = _Endpoint(url, credentials, timeout)
        self.auth = self._primary.auth
        # Mirrors first, the repository itself last; each endpoint's failures move it back for a while.
        self._endpoints = [_Endpoint(u, c, timeout) for u, c in (mirrors or [])] + [self._primary]
        self._failover = Failover(self._endpoints, base=max(30.0, poll_interval), maximum=600.0, clock=clock)
        self.upstream_check = upstream_check
        self._upstream_seen: float | None = None  # clock() when the repository itself last answered a poll
        self.cache_dir = Path(cache_dir)
        self.branch = branch
        self.subpath = subpath.strip("/") if subpath else None
        if self.subpath and any(p in ("", ".", "..") for p in self.subpath.split("/")):
            raise ValueError(f"bad subpath {subpath!r}")
        self.verify_mode = verify_mode
        self.allowed_signers = Path(allowed_signers) if allowed_signers else None
        self.gpg_keyring = Path(gpg_keyring) if gpg_keyring else None
        self.allow_history_rewrite = allow_history_rewrite
        self.timeout = timeout
        self.clock = clock
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.git_dir = self.cache_dir / "repo.git"
        self.ref = f"refs/heads/{branch}"
        self.tracking_ref = f"refs/modelfleet/source/{branch}"
        self.polls = 0
        self.fetches = 0
        self.bytes_fetched = 0
        self.requests = 0
        self.failures = 0
        self.last_contact: float | None = None  # clock() of the last poll that reached the server
        # One device keeps only its newest verdict. Sources sharing a cache directory (the fleet simulator: one
        # object store for N devices with the same settings) may share the verdicts too: a verdict is a pure
        # function of (head, last applied, trust anchors) and of the objects, which are then the same.
        self._shared_verdicts = verdicts is not None
        self._verdicts: dict[tuple[str, str | None, tuple[object, ...]], _Verdict] = {} if verdicts is None else verdicts
        self._lock = threading.RLock()
        self._repo_lock = _repo_lock(self.git_dir)
        self._repo: gitpython.Repo | None = None

    # -- local repository ---------------------------------------------------------------------------

    def _ensure_repo(self) -> None:
        if (self.git_dir / "HEAD").is_file():
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / "repo.git.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        init_bare(tmp, timeout=self.timeout)
        for key, value in (("core.hooksPath", "/dev/null"), ("fetch.unpackLimit", "1"), ("gc.auto", "0"),
                           ("maintenance.auto", "false"), ("transfer.fsckObjects", "true")):
            run_git(["config", key, value], git_dir=tmp, timeout=self.timeout)
        tmp.rename(self.git_dir)

    def _has_commit(self, sha: str | None) -> bool:
        if not sha or not (self.git_dir / "HEAD").is_file():
            return False
        proc = run_git(["cat-file", "-e", f"{sha}^{{commit}}"], git_dir=self.git_dir, timeout=self.timeout, check=False)
        return proc.returncode == 0

    def _pack_bytes(self) -> dict[str, int]:
        pack_dir = self.git_dir / "objects" / "pack"
        if not pack_dir.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in pack_dir.glob("*.pack")}

    def _is_ancestor(self, old: str, new: str) -> bool:
        proc = run_git(["merge-base", "--is-ancestor", old, new], git_dir=self.git_dir, timeout=self.timeout,
                       check=False)
        return proc.returncode == 0

    def _is_shallow_boundary(self) -> bool:
        return (self.git_dir / "shallow").is_file()

    def _anchor_stamp(self) -> tuple[object, ...]:
        """Changes when a provisioned trust anchor changes, so a cached verdict is not reused after rotation."""
        out: list[object] = []
        for p in (self.allowed_signers, self.gpg_keyring):
            try:
                st = p.stat() if p is not None else None
                out.append((st.st_mtime_ns, st.st_size) if st else None)
            except OSError:
                out.append("missing")
        return tuple(out)

    # -- network ------------------------------------------------------------------------------------

    def _ls_remote(self, ep: _Endpoint) -> str | None:
        self.requests += 1
        _REQUESTS.inc()
        if ep.lsrefs is not None:
            try:
                return ep.lsrefs.ls_ref(self.ref)
            except LsRefsError as exc:
                if (exc.reason not in (R.AUTHENTICATION_FAILED, R.PERMISSION_DENIED)
                        or ep.auth.credentials.authorization() is not None):
                    raise
                # No configured credential: the service user's git credential helper or ~/.netrc may have one.
                ep.lsrefs.close()
                ep.lsrefs = None
            except NotV2 as exc:
                log.info("%s does not answer Git protocol v2 ls-refs (%s); polling with git ls-remote",
                         ep.display_url, redact(str(exc)))
                ep.lsrefs.close()
                ep.lsrefs = None
        out = run_git(["ls-remote", "--", ep.url, self.ref], timeout=self.timeout,
                      env=ep.auth.env()).stdout.decode()
        return parse_ls_remote(out, self.ref)

    def _fetch(self, head: str, last_applied: str | None, ep: _Endpoint) -> None:
        """Bring ``head`` (and, when needed, the history back to ``last_applied``) into the cache from ``ep``."""
        before = self._pack_bytes()
        refspec = f"+{self.ref}:{self.tracking_ref}"
        args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules"]
        have_any = run_git(["rev-parse", "--verify", "--quiet", self.tracking_ref], git_dir=self.git_dir,
                           timeout=self.timeout, check=False).returncode == 0
        if not have_any and last_applied is None:
            args.append("--depth=1")
        # Otherwise incremental: the server stops at commits we have, so a descendant costs only the new
        # commits. (Last applied commit unknown locally, e.g. cache wiped: the unshallow below finds it.)
        self.requests += 1
        _REQUESTS.inc()
        env = ep.auth.env()
        run_git([*args, "--", ep.url, refspec], git_dir=self.git_dir, timeout=self.timeout, env=env)
        self.fetches += 1
        _FETCHES.inc()
        if last_applied and not self._has_commit(last_applied) and self._is_shallow_boundary():
            self.requests += 1
            _REQUESTS.inc()
            run_git([*args, "--unshallow", "--", ep.url, refspec], git_dir=self.git_dir, timeout=self.timeout,
                    env=env)
        self._account_bytes(before)

    def _account_bytes(self, before: dict[str, int]) -> None:
        after = self._pack_bytes()
        received = sum(size for name, size in after.items() if name not in before)
        self.bytes_fetched += received
        _BYTES.inc(received)
        # Fetched packs are kept as received (fetch.unpackLimit=1, for the byte count); consolidate them
        # in the foreground once there are many, rather than letting git pick a moment in the background.
        if len(after) > self.max_packs:
            run_git(["-c", "gc.auto=6700", "-c", f"gc.autoPackLimit={self.max_packs}", "-c", "gc.autoDetach=false",
                     "gc", "--auto", "--quiet"], git_dir=self.git_dir, timeout=max(self.timeout, 300), check=False)

    # -- verification -------------------------------------------------------------------------------

    def _check(self, head: str, last_applied: str | None) -> _Verdict:
        """History protection, then signatures. Needs ``head`` (and ``last_applied`` if any) in the cache."""
        if last_applied and head != last_applied:
            if not self._has_commit(last_applied) and not self.allow_history_rewrite:
                return _Verdict(False, HISTORY_REWRITE,
                                f"last applied commit {last_applied[:12]} is not in the history of "
                                f"{self.branch} any more (force-push or rollback)")
            if not self._has_commit(last_applied) or not self._is_ancestor(last_applied, head):
                if not self.allow_history_rewrite:
                    behind = self._is_ancestor(head, last_applied)
                    what = "is an ancestor of" if behind else "does not descend from"
                    return _Verdict(False, HISTORY_REWRITE,
                                    f"new head {head[:12]} {what} the last applied commit {last_applied[:12]} "
                                    f"(force-push or repository rollback); refused because history rewrites "
                                    f"are not allowed")
                last_applied = None  # rewrite allowed: no range to check, verify the head only
        if self.verify_mode == "none":
            return _Verdict(True, NOT_VERIFIED, "signature verification is disabled")
        commits = [head]
        if self.verify_mode == "all" and last_applied and head != last_applied:
            out = run_git(["rev-list", f"{last_applied}..{head}"], git_dir=self.git_dir, timeout=self.timeout)
            commits = out.stdout.decode().split() or [head]
        verifier = Verifier(self.git_dir, allowed_signers=self.allowed_signers, gpg_keyring=self.gpg_keyring,
                            state_dir=self.cache_dir, timeout=self.timeout)
        res: VerifyResult = verifier.verify(commits)
        return _Verdict(res.ok, res.reason, res.message, res.signer)

    # -- results ------------------------------------------------------------------------------------

    def _conditions(self, available: tuple[bool, str, str], verified: tuple[str, str, str],
                    commit: str | None) -> list[Condition]:
        now = isoformat(utcnow())
        return [
            Condition(SOURCE_AVAILABLE, "True" if available[0] else "False", available[1], available[2], now, commit),
            Condition(SOURCE_VERIFIED, verified[0], verified[1], verified[2], now, commit),
        ]

    def _failure(self, reason: str, message: str, last_applied: str | None) -> PollResult:
        self.failures += 1
        _FAILURES.labels(reason).inc()
        conds = self._conditions((False, reason, message), ("Unknown", reason, "source not reachable"), last_applied)
        return PollResult(last_applied, False, False, conds, reason, message, None,
                          backoff_delay(self.failures, base=self.backoff_base, maximum=self.max_backoff))

    def _result(self, head: str, verdict: _Verdict, last_applied: str | None, fetched: bool) -> PollResult:
        self.failures = 0
        self.last_contact = self.clock()
        if verdict.accepted:
            verified = ("True", verdict.reason, verdict.message)
            commit = head
        else:
            _FAILURES.labels(verdict.reason).inc()
            verified = ("False", verdict.reason, verdict.message)
            commit = last_applied
        avail = (True, SUCCEEDED, f"{self.branch} at {head[:12]}")
        return PollResult(commit, commit != last_applied, fetched, self._conditions(avail, verified, head),
                          verdict.reason, verdict.message, verdict.signer, self.poll_interval, head)

    def poll(self, last_applied: str | None) -> PollResult:
        """Look at the branch head once; fetch and verify only when it changed. Never raises for Git trouble.

        With mirrors: the first endpoint (in :class:`Failover` order) whose head is accepted answers; see the
        module docstring."""
        with self._lock:
            self.polls += 1
            _POLLS.inc()
            if len(self._endpoints) == 1:
                return self._poll_one(self._primary, last_applied)
            result: PollResult | None = None
            for idx, ep in self._failover.order():
                res = self._poll_one(ep, last_applied)
                if res.ok:
                    self._failover.succeeded(idx)
                    if ep is self._primary:
                        self._upstream_seen = self.clock()
                    else:
                        res = self._check_upstream(res, last_applied)
                    return _annotated(res, ep.display_url, self._avoided())
                self._failover.failed(idx, res.reason)
                result = res
            assert result is not None
            return _annotated(result, None, self._avoided(but=idx))

    def _avoided(self, but: int | None = None) -> list[str]:
        """``<url>: <reason>`` of each endpoint asked last for now (it failed, in this poll or one before), so the
        condition says it for as long as it lasts, not only in the poll that passed it over."""
        avoided = [f"{self._endpoints[i].display_url}: {r}" for i, r in self._failover.avoided() if i != but]
        return avoided + ["asked last for now"] if avoided else []

    def _check_upstream(self, res: PollResult, last_applied: str | None) -> PollResult:
        """``res`` (a mirror's accepted answer), unless the repository itself, asked at most every
        ``upstream_check`` seconds, has an accepted head the mirror did not serve."""
        now = self.clock()
        if self._upstream_seen is not None and now - self._upstream_seen < self.upstream_check:
            return res
        self._upstream_seen = now
        direct = self._poll_one(self._primary, last_applied)
        if direct.ok and direct.head != res.head and direct.commit != last_applied:
            log.warning("mirror is behind the repository", extra={"mirror_head": (res.head or "")[:12],
                                                                   "head": (direct.head or "")[:12]})
            return _annotated(direct, self._primary.display_url, [f"mirror at {(res.head or '-')[:12]}: behind"])
        return res

    def _poll_one(self, ep: _Endpoint, last_applied: str | None) -> PollResult:
        try:
            head = self._ls_remote(ep)
        except (GitError, LsRefsError, CredentialError) as exc:
            return self._failure(*_named(exc), last_applied)
        if head is None:
            return self._failure(BRANCH_NOT_FOUND, f"branch {self.branch!r} not found at {ep.display_url}",
                                 last_applied)
        key = (head, last_applied, self._anchor_stamp())
        cached = self._verdicts.get(key)
        if cached is not None:
            return self._result(head, cached, last_applied, fetched=False)
        with self._repo_lock:  # one fetch per head for the sources sharing this repository
            cached = self._verdicts.get(key)
            if cached is not None:
                return self._result(head, cached, last_applied, fetched=False)
            fetched = False
            try:
                self._ensure_repo()
                if not self._has_commit(head) or (last_applied and not self._has_commit(last_applied)):
                    self._fetch(head, last_applied, ep)
                    fetched = True
                verdict = self._check(head, last_applied)
            except (GitError, CredentialError) as exc:
                return self._failure(*_named(exc), last_applied)
            if not self._shared_verdicts or len(self._verdicts) >= MAX_SHARED_VERDICTS:
                self._verdicts.clear()  # only the newest matters; bounded memory
            self._verdicts[key] = verdict
        return self._result(head, verdict, last_applied, fetched)

    def import_bundle(self, path: Path, last_applied: str | None) -> PollResult:
        """Apply a ``git bundle`` holding the branch, with the same history and signature checks as a fetch."""
        with self._lock:
            path = Path(path)
            try:
                self._ensure_repo()
                verify = run_git(["bundle", "list-heads", str(path)], git_dir=self.git_dir, timeout=self.timeout,
                                 check=False)
                if verify.returncode != 0:
                    raise GitError(git_message(verify.stderr.decode(errors="replace")) or "not a git bundle")
                head = parse_ls_remote(verify.stdout.decode().replace(" ", "\t"), self.ref)
                if head is None:
                    raise GitError(f"bundle has no {self.ref}")
                check = run_git(["bundle", "verify", "--quiet", str(path)], git_dir=self.git_dir,
                                timeout=self.timeout, check=False)
                if check.returncode != 0:
                    raise GitError("prerequisite commits missing: " + git_message(check.stderr.decode(errors="replace")))
                before = self._pack_bytes()
                run_git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", str(path),
                         f"+{self.ref}:refs/modelfleet/bundle/{self.branch}"], git_dir=self.git_dir,
                        timeout=self.timeout)
                self._account_bytes(before)
                verdict = self._check(head, last_applied)
            except GitError as exc:
                msg = f"bundle {path.name}: {exc}"
                _FAILURES.labels(BUNDLE_INVALID).inc()
                conds = self._conditions((True, BUNDLE_INVALID, msg), ("False", BUNDLE_INVALID, msg), last_applied)
                return PollResult(last_applied, False, False, conds, BUNDLE_INVALID, msg, None, self.poll_interval)
            res = self._result(head, verdict, last_applied, fetched=True)
            res.conditions[0] = Condition(SOURCE_AVAILABLE, "True", R.BUNDLE_IMPORTED, f"bundle {path.name}",
                                          res.conditions[0].last_transition_time, head)
            return res

    # -- reading ------------------------------------------------------------------------------------

    def _gp_repo(self) -> gitpython.Repo:
        if self._repo is None:
            self._repo = gitpython.Repo(self.git_dir, odbt=gitpython.GitCmdObjectDB)
        return self._repo

    def read_files(self, commit: str) -> dict[str, bytes | NonRegular]:
        """Every file under ``subpath`` at ``commit``, keyed by path relative to ``subpath``.

        Read from the object database (no checkout, nothing executable is ever written). A symlink or a
        submodule is returned as a :class:`~reconciler.fleet.repository.NonRegular` (never followed), so the
        loader reports it instead of it vanishing; a file larger than 16 MiB raises ``ValueError``.
        """
        with self._lock:
            repo = self._gp_repo()
            try:
                tree = repo.commit(commit).tree
                if self.subpath:
                    tree = tree / self.subpath
            except (ValueError, KeyError, gitpython.BadName) as exc:
                raise KeyError(f"{self.subpath or '/'} not found at commit {commit[:12]}: {exc}") from None
            files: dict[str, bytes | NonRegular] = {}
            prefix = len(tree.path) + 1 if tree.path else 0
            for item in tree.traverse():
                if isinstance(item, gitpython.Submodule):
                    files[item.path[prefix:]] = NonRegular("submodule", item.hexsha)
                    continue
                if not isinstance(item, gitpython.Blob):
                    continue
                if item.mode & 0o170000 == 0o120000:
                    files[item.path[prefix:]] = NonRegular("symlink", item.data_stream.read(4096).decode(
                        "utf-8", "replace"))
                    continue
                if item.mode & 0o170000 != 0o100000:
                    files[item.path[prefix:]] = NonRegular("special file")
                    continue
                if item.size > MAX_FILE_BYTES:
                    raise ValueError(f"{item.path} at {commit[:12]} is {item.size} bytes (limit {MAX_FILE_BYTES})")
                files[item.path[prefix:]] = item.data_stream.read()
            return files

    def close(self) -> None:
        with self._lock:
            for ep in self._endpoints:
                ep.close()
            if self._repo is not None:
                self._repo.close()
                self._repo = None


_REPO_LOCKS: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()  # live sources only
_REPO_LOCKS_GUARD = threading.Lock()


def _repo_lock(git_dir: Path) -> threading.Lock:
    """The process-wide lock of one cache repository (sources sharing it fetch one at a time)."""
    key = str(Path(git_dir).resolve())
    with _REPO_LOCKS_GUARD:
        lock = _REPO_LOCKS.get(key)
        if lock is None:
            lock = _REPO_LOCKS[key] = threading.Lock()
        return lock


def _annotated(res: PollResult, served_by: str | None, passed: list[str]) -> PollResult:
    """``res`` with its ``SourceAvailable`` message saying which endpoint answered and which were passed over
    (and why), when the source has mirrors."""
    note = (f" from {served_by}" if served_by else "") + (f" ({'; '.join(passed)[:300]})" if passed else "")
    if not note:
        return res
    conds = [dataclasses.replace(c, message=c.message + note) if c.type == SOURCE_AVAILABLE else c
             for c in res.conditions]
    return dataclasses.replace(res, conditions=conds, message=res.message + note if not res.ok else res.message)


def _named(exc: Exception) -> tuple[str, str]:
    """(reason, redacted message) of a failure to reach the repository."""
    message = redact(str(exc))
    if isinstance(exc, LsRefsError):
        return exc.reason, explain(exc.reason, message)
    if isinstance(exc, CredentialError):
        return exc.reason, message
    if isinstance(exc, GitError) and exc.timed_out:
        return GIT_TIMEOUT, message
    reason = classify(message) or GIT_UNAVAILABLE
    return reason, explain(reason, message)


__all__ = ["GitSource", "PollResult", "backoff_delay", "parse_ls_remote", "VERIFIED"]
