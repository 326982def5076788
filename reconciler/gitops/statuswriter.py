"""Status write-back: the device's ``DeviceStatus`` as ``status.yaml`` on its own ``status/<device-id>`` branch.

Workflow: :meth:`StatusWriter.submit` validates and trims the document and parks it as *the newest* status
(never blocks; a document whose content was validated before is not validated again). A background thread
commits it — blob, tree and commit written as loose objects in-process, no worktree, signed in-process with the
device's own key (:mod:`reconciler.identity`) — when the content changed — ignoring ``status.heartbeat`` — or the heartbeat interval passed,
then pushes with retry, jittered exponential backoff: over smart HTTP(S) in-process
(:mod:`~reconciler.gitops.smartpush`: on a kept-alive connection, one request once the writer knows the branch's
tip on the server), otherwise with ``git push``. While the server is down new statuses
replace the unpushed commit (its parent stays the last pushed one), so on recovery exactly the newest is
pushed. A rejected (non-fast-forward) push means the device lost its local state: the writer fetches the
branch and commits on top. Each device owns its branch, so devices never conflict with each other.

``preferred`` (a site gateway's status repository, docs/gateway.md) is pushed to first and ``url`` is the
fallback (:class:`~reconciler.gitops.failover.Failover`: an endpoint that failed is tried last for a while). The
same branch may then be ahead on one and behind on the other; a push the server refuses because its branch is
at an older commit of ours is a fast-forward, and ``git push`` sends the commits it lacks. Only a branch that
holds commits we do not have is fetched and built upon, as before. The gateway relays the commits upstream;
it cannot sign, so it cannot alter them.

``push_spread`` (``status.pushSpread``, default 0): a new status waits a random time up to that many seconds
before it is committed and pushed; statuses submitted meanwhile are folded into the same commit, and
:meth:`StatusWriter.flush` or :meth:`StatusWriter.close` cut the wait short. After a fleet-wide change every
device has news within one poll interval; the spread keeps those pushes (the Git server's most expensive
request) from arriving as one burst that competes with the same devices' fetches and polls (docs/scale.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.conditions import isoformat, utcnow
from reconciler.core.credentials import CredentialError, Credentials
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.proxy import ProxyURLError
from reconciler.core.reasons import GIT_TIMEOUT, GIT_UNAVAILABLE, PUSH_REJECTED, PUSHED
from reconciler.core.redact import redact, redact_tree, redact_url
from reconciler.fleet.schemas import fast_check, validator
from reconciler.gitops.auth import GitAuth, classify, explain
from reconciler.gitops.failover import Failover
from reconciler.gitops.smartpush import (
    PushCertificateRefused,
    PushDenied,
    PushRejected,
    PushUnavailable,
    PushUnsupported,
    SmartPush,
)
from reconciler.gitops.verify import GitError, git_message, init_bare, run_git
from reconciler.identity import keys as device_keys
from reconciler.identity.commitsig import sign_commit

log = logging.getLogger(__name__)

MAX_STATUS_BYTES = 64 * 1024
STATUS_FILE = "status.yaml"


class _NoAliasDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml: ~10x faster
    # Shared sub-objects must be written out in full: readers use safe, alias-limited loaders.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_status(doc: dict[str, Any]) -> bytes:
    return yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=120).encode("utf-8")


def content_key(doc: dict[str, Any]) -> str:
    """Canonical form of a status without its heartbeat: equal keys mean "nothing to report"."""
    st = dict(doc.get("status") or {})  # copies of the two levels changed below; the rest is only read
    st.pop("heartbeat", None)
    if isinstance(st.get("reporting"), dict):
        st["reporting"] = {k: v for k, v in st["reporting"].items() if k != "lastPushTime"}  # a push is no news
    return json.dumps({**doc, "status": st}, sort_keys=True, separators=(",", ":"))


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def trim_status(doc: dict[str, Any], limit: int = MAX_STATUS_BYTES, dumped: bytes | None = None) -> dict[str, Any]:
    """Shrink a status until its YAML fits in ``limit`` bytes: messages first, then old attempts and failures,
    last the endpoints' drift bin counts. ``dumped``: ``dump_status(doc)`` when the caller has it already.

    Raises ``ValueError`` if even the trimmed document is too big.
    """
    if len(dumped if dumped is not None else dump_status(doc)) <= limit:
        return doc
    d = copy.deepcopy(doc)
    st = d.setdefault("status", {})
    steps: list[Callable[[], None]] = []

    def shorten_messages(n: int) -> Callable[[], None]:
        def run() -> None:
            for key in ("conditions", "endpoints", "attempts"):
                for item in st.get(key) or []:
                    if isinstance(item.get("message"), str):
                        item["message"] = _cut(item["message"], n)
            for f in st.get("failures") or []:
                if isinstance(f.get("reason"), str):
                    f["reason"] = _cut(f["reason"], n)
        return run

    def keep(key: str, n: int) -> Callable[[], None]:
        def run() -> None:
            if isinstance(st.get(key), list):
                st[key] = st[key][:n]
        return run

    def drop_drift_bins() -> None:  # the verdict and worst features stay; only the mergeable counts go
        for e in st.get("endpoints") or []:
            if isinstance(e.get("drift"), dict):
                e["drift"].pop("bins", None)

    steps += [shorten_messages(256), keep("attempts", 2), keep("failures", 20), shorten_messages(64),
              keep("attempts", 1), keep("failures", 0), drop_drift_bins]
    for step in steps:
        step()
        if len(dump_status(d)) <= limit:
            return d
    raise ValueError(f"status document is {len(dump_status(d))} bytes even after trimming (limit {limit})")


class StatusWriter:
    """Background committer/pusher of one device's status branch; see the module docstring."""

    def __init__(self, url: str, device_id: str, work_dir: Path, *, branch_prefix: str = "status/",
                 heartbeat_interval: float = 300, signing_key: Path | None = None, timeout: float = 30,
                 retry_base: float = 1.0, retry_max: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 agent_version: str | None = None, credentials: Credentials | None = None,
                 on_push: Callable[[bool, str], None] | None = None, push_spread: float = 0.0,
                 rand: Callable[[], float] = random.random,
                 preferred: list[tuple[str, Credentials | None]] | None = None) -> None:
        if push_spread < 0:
            raise ValueError("push_spread must not be negative")
        self.url = url
        self.display_url = redact_url(url)
        self.auth = GitAuth(url, credentials or Credentials())
        self.pushed_to: str | None = None  # display URL of the endpoint the last push landed on
        self.on_push = on_push  # (landed?, reason) after every push attempt: the agent's metrics
        self.device_id = device_id
        self.work_dir = Path(work_dir)
        self.branch = f"{branch_prefix}{device_id}"
        self.ref = f"refs/heads/{self.branch}"
        self.heartbeat_interval = heartbeat_interval
        self.signing_key = Path(signing_key) if signing_key else None
        # Loaded once (0600 checked): every status commit is signed with the device's own key (docs/security.md).
        self._key = device_keys.load(self.signing_key) if self.signing_key else None
        self.timeout = timeout
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.push_spread = push_spread
        self._rand = rand
        self._hurry = False  # flush()/close() asked for the pending status now, not after the spread
        self.clock = clock
        self.git_dir = self.work_dir / "status.git"
        self.pushes = 0
        self.commits = 0
        self.push_failures = 0
        self.queued = 0  # statuses submitted but not pushed yet (superseded ones included)
        self.last_push_ok: bool | None = None
        self.last_error: str | None = None
        self.last_reason: str | None = None
        self.last_push_time: str | None = None  # wall clock (RFC 3339) of the last push that landed
        self.consecutive_failures = 0
        self._pending: dict[str, Any] | None = None
        self._pending_key: str | None = None  # content_key of _pending
        self._pending_yaml: bytes | None = None  # dump_status(_pending) when submit made it, else None
        self._checked_key: str | None = None  # content_key of the last submitted document that needed no trimming
        self._pushed: str | None = None  # the commit the server has, as far as we know
        self._tip: str | None = None  # our newest commit (== _pushed when in sync)
        self._tip_key: str | None = None
        self._tip_time: float | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._busy = False
        self._built: tuple[str, str | None, list[tuple[str, bytes]]] | None = None  # (commit, parent, objects)
        # Where pushes go, in preference order: the gateway's status repository (if any), then ``url``.
        self._endpoints = [_PushEndpoint(u, c, timeout, anonymous=True) for u, c in (preferred or [])]
        self._endpoints.append(_PushEndpoint(url, credentials, timeout))
        self._failover = Failover(self._endpoints, base=30.0, maximum=600.0)
        self._smart = self._endpoints[-1].smart  # the primary's in-process push (tests look at it)
        self._ensure_repo()
        self._thread = threading.Thread(target=self._run, name=f"status-writer-{device_id}", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------------------------

    def submit(self, status: dict[str, Any]) -> None:
        """Queue ``status`` (a full DeviceStatus) as the newest one; returns at once.

        Raises ``ValueError`` if the document is not a valid DeviceStatus (a caller bug, caught early).
        """
        doc = status = redact_tree(status)  # what goes to Git never carries URL userinfo or Authorization values
        attempts = (status.get("status") or {}).get("attempts")
        if isinstance(attempts, list) and len(attempts) > 5:  # keep the newest 5 (newest first, per the schema)
            doc = copy.deepcopy(status)
            doc["status"]["attempts"] = attempts[:5]
        key = content_key(doc)
        data: bytes | None = None
        if key != self._checked_key:  # the same content with a new heartbeat was trimmed and validated already
            # New content: dumped once here, for the size check and, when it fits, as the committed file.
            data = dump_status(doc)
            trimmed = trim_status(doc, dumped=data)
            errors = _status_errors(trimmed)
            if errors:
                e = errors[0]
                where = "/".join(str(p) for p in e.path) or "(root)"
                raise ValueError(f"invalid DeviceStatus at {where}: {e.message}")
            # Only a document well inside the limit is taken as is next time (timestamps may grow it a little).
            untouched = trimmed is doc and len(data) < MAX_STATUS_BYTES - 1024
            if trimmed is not doc:
                doc, key, data = trimmed, content_key(trimmed), None
            self._checked_key = key if untouched else None
        with self._cv:
            if self._closed:
                raise RuntimeError("StatusWriter is closed")
            if self._synced() and self._tip is not None and not self._due(key):
                self.queued = 0  # nothing to report that is not on the server already: no need to wake the thread
                return
            self._pending, self._pending_key, self._pending_yaml = doc, key, data
            self.queued += 1
            self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted is committed and pushed; False if that did not happen in time."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._hurry = True
            self._cv.notify_all()
            try:
                while not self._synced():
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        return False
                    self._cv.wait(min(left, 0.1))
                return True
            finally:
                self._hurry = False

    def in_sync(self) -> bool:
        """Whether the server has the newest status submitted (nothing waiting, being written or unpushed)."""
        with self._cv:
            return self._synced()

    @property
    def tip(self) -> str | None:
        """The newest status commit this writer made (pushed or not); None before the first."""
        with self._cv:
            return self._tip

    def _synced(self) -> bool:  # with self._cv held
        return self._pending is None and not self._busy and self._tip == self._pushed

    def close(self, timeout: float = 5.0) -> None:
        """Try to push what is queued for up to ``timeout`` seconds, then stop the thread."""
        self.flush(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout + self.timeout)
        for ep in self._endpoints:
            ep.close()

    def reporting(self) -> dict[str, Any]:
        """Where status reporting stands: ``pushed`` (True/False/None = not tried yet), reason, times, error."""
        with self._cv:
            return {"pushed": self.last_push_ok, "reason": self.last_reason, "lastPushTime": self.last_push_time,
                    "lastError": self.last_error, "failedPushes": self.consecutive_failures, "branch": self.branch}

    # -- git plumbing -------------------------------------------------------------------------------------

    def _git(self, *args: str, input: bytes | None = None, check: bool = True, network: bool = False):
        env = {**(self.auth.env() if network else {}),"GIT_AUTHOR_NAME": self.device_id, "GIT_AUTHOR_EMAIL": f"{self.device_id}@devices.modelfleet",
               "GIT_COMMITTER_NAME": self.device_id, "GIT_COMMITTER_EMAIL": f"{self.device_id}@devices.modelfleet"}
        return run_git(list(args), git_dir=self.git_dir, input=input, check=check, env=env,
                       timeout=self.timeout if network else max(self.timeout, 30))

    def _ensure_repo(self) -> None:
        if not (self.git_dir / "HEAD").is_file():
            init_bare(self.git_dir, timeout=self.timeout)
        tip = self._git("rev-parse", "--verify", "--quiet", self.ref, check=False).stdout.decode().strip()
        pushed = self._git("rev-parse", "--verify", "--quiet", f"refs/pushed/{self.branch}",
                           check=False).stdout.decode().strip()
        self._tip, self._pushed = tip or None, pushed or None
        if self._tip:
            blob = self._git("cat-file", "blob", f"{self._tip}:{STATUS_FILE}", check=False)
            if blob.returncode == 0:
                try:
                    self._tip_key = content_key(yaml.safe_load(blob.stdout))
                except yaml.YAMLError:
                    self._tip_key = None

    def _write_object(self, kind: str, body: bytes) -> str:
        """Store a loose object as ``git hash-object -w`` would (no process: a status commit is three tiny
        objects, and forking git for each cost more than everything else the writer does)."""
        data = f"{kind} {len(body)}\0".encode() + body
        sha = hashlib.sha1(data).hexdigest()  # noqa: S324 - Git's object id, not a security hash
        path = self.git_dir / "objects" / sha[:2] / sha[2:]
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.parent / f"tmp_obj_{sha[2:]}_{threading.get_ident()}"
            tmp.write_bytes(zlib.compress(data))
            os.replace(tmp, path)  # like git, loose objects are not fsynced; the ref that names them is
        return sha

    def _update_ref(self, ref: str, sha: str) -> None:
        atomic_write_text(self.git_dir / ref, f"{sha}\n")  # a loose ref overrides a packed one

    def _store(self, kind: str, body: bytes, built: list[tuple[str, bytes]]) -> str:
        built.append((kind, body))
        return self._write_object(kind, body)

    def _commit(self, doc: dict[str, Any], parent: str | None, data: bytes | None = None) -> str:
        """Commit ``doc`` (``data``: its ``dump_status``, when already made) on top of ``parent``."""
        st = doc.get("status", {})
        ready = next((c.get("status") for c in st.get("conditions", []) if c.get("type") == "Ready"), "Unknown")
        applied = (st.get("appliedCommit") or "none")[:12]
        msg = f"status: {self.device_id} Ready={ready} applied={applied}\n\nheartbeat {st.get('heartbeat')}\n"
        built: list[tuple[str, bytes]] = []  # the objects this commit adds on top of its parent
        blob = self._store("blob", data if data is not None else dump_status(doc), built)
        tree = self._store("tree", f"100644 {STATUS_FILE}\0".encode() + bytes.fromhex(blob), built)
        who = f"{self.device_id} <{self.device_id}@devices.modelfleet> {int(time.time())} +0000"
        head = f"tree {tree}\n" + (f"parent {parent}\n" if parent else "") + f"author {who}\ncommitter {who}\n\n"
        body = (head + msg).encode()
        if self._key is not None:  # signed in-process: what `git commit-tree -S` with gpg.format=ssh writes
            body = sign_commit(body, self._key)
        sha = self._store("commit", body, built)
        self._built = (sha, parent, built)
        self._update_ref(self.ref, sha)
        self.commits += 1
        return sha

    def _push(self, sha: str) -> None:
        """Push ``sha`` to the first endpoint that takes it (see the module docstring)."""
        last: Exception | None = None
        for idx, ep in self._failover.order():
            try:
                self._push_to(ep, sha)
            except _Rejected:
                raise  # about the branch, not the server: fetched and built upon by _push_tip
            except Exception as exc:  # noqa: BLE001 - the next endpoint may take it; the last error is raised
                if len(self._endpoints) == 1:
                    raise
                self._failover.failed(idx)
                log.info("status push of %s to %s failed: %s", self.device_id, ep.display_url,
                         redact(str(exc), ep.auth.credentials.secret_values()))
                last = exc
                continue
            self._failover.succeeded(idx)
            self.pushed_to = ep.display_url
            self._update_ref(f"refs/pushed/{self.branch}", sha)
            return
        assert last is not None
        raise last

    def _is_ancestor(self, old: str, new: str) -> bool:
        """Whether ``old`` is a commit of this repository and an ancestor of ``new``."""
        return self._git("merge-base", "--is-ancestor", old, new, check=False).returncode == 0

    def _push_to(self, ep: _PushEndpoint, sha: str) -> None:
        if ep.smart is not None and self._built is not None and self._built[0] == sha:
            _, parent, objects = self._built
            try:
                ep.smart.push(self.ref, parent, sha, objects)
                return
            except PushRejected as exc:
                # The server's branch is elsewhere. At an older commit of ours (pushed to another endpoint
                # meanwhile), `git push` sends what it lacks; at a commit we do not have, we rebase onto it.
                if not (exc.server_tip and self._is_ancestor(exc.server_tip, sha)):
                    raise _Rejected(str(exc), ep) from None
                log.debug("status push of %s: %s; a fast-forward: git push", self.device_id, exc)
            except (PushUnavailable, PushDenied, PushCertificateRefused) as exc:
                raise GitError(str(exc)) from None  # retried after the backoff (HTTP 403: PermissionDenied)
            except PushUnsupported as exc:
                log.debug("status push of %s with git push: %s", self.device_id, exc)
        env = {**ep.auth.env(), **_identity_env(self.device_id)}
        proc = run_git(["push", "--quiet", "--porcelain", "--", ep.url, f"{sha}:{self.ref}"], git_dir=self.git_dir,
                       check=False, env=env, timeout=self.timeout)
        if proc.returncode == 0:
            return
        text = redact((proc.stdout + proc.stderr).decode(errors="replace"))
        if "[rejected]" in text or "non-fast-forward" in text or "fetch first" in text:
            raise _Rejected(text.strip(), ep)
        raise GitError(f"push to {ep.display_url} failed: {git_message(text, 500)}")

    # -- background thread --------------------------------------------------------------------------------

    def _due(self, key: str) -> bool:
        if self._tip is None or self._tip_key != key:
            return True
        return self._tip_time is None or self.clock() - self._tip_time >= self.heartbeat_interval

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cv:
                while not self._closed and self._pending is None and self._tip == self._pushed:
                    self._cv.wait()
                if self._closed:
                    return
                if self.push_spread > 0 and self._pending is not None and self._due(self._pending_key or ""):
                    # News: wait up to push_spread (newer statuses replace this one meanwhile), unless hurried.
                    deadline = time.monotonic() + self._rand() * self.push_spread
                    while not (self._closed or self._hurry) and (left := deadline - time.monotonic()) > 0:
                        self._cv.wait(left)
                    if self._closed:
                        return
                doc, key, data, self._pending = self._pending, self._pending_key, self._pending_yaml, None
                self._busy = True
            try:
                if doc is not None and key is not None and self._due(key):
                    # Replace an unpushed commit instead of stacking offline history: parent = last pushed.
                    self._tip = self._commit(doc, self._pushed, data)
                    self._tip_key, self._tip_time = key, self.clock()
                elif doc is not None and self._tip == self._pushed:
                    with self._cv:
                        self.queued = 0
                if self._tip is not None and self._tip != self._pushed:
                    self._push_tip()
                    failures = 0
                    with self._cv:
                        self.queued = 0 if self._pending is None else 1
                        self.last_push_ok, self.last_reason = True, None
                        self.last_push_time, self.consecutive_failures = isoformat(utcnow()), 0
                    self._notify(True, "")
            except Exception as exc:  # noqa: BLE001 - keep the thread alive whatever happens; retried below
                failures += 1
                self.push_failures += 1
                message = redact(str(exc), self.auth.credentials.secret_values())
                reason = _reason(exc, message)
                with self._cv:
                    self.last_push_ok, self.last_error, self.last_reason = False, message, reason
                    self.consecutive_failures = failures
                self._notify(False, reason)
                log.warning("status push for %s failed (attempt %d, %s): %s", self.device_id, failures, reason,
                            message)
                delay = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 20)) * (0.5 + random.random() / 2)
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                    # Keep the backoff even when newer statuses arrive (they replace the unpushed commit on
                    # the next round); only close() cuts it short.
                    deadline = time.monotonic() + delay
                    while not self._closed and (left := deadline - time.monotonic()) > 0:
                        self._cv.wait(left)
                continue
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _notify(self, ok: bool, reason: str) -> None:
        if self.on_push is not None:
            try:
                self.on_push(ok, reason)
            except Exception:  # noqa: BLE001 - metrics must never stop the writer
                log.exception("status push callback failed")

    def _push_tip(self) -> None:
        assert self._tip is not None
        try:
            self._push(self._tip)
        except _Rejected as rejected:
            # The server has history we do not (local state lost, or branch edited): rebase onto it.
            ep = rejected.endpoint or self._endpoints[-1]
            env = {**ep.auth.env(), **_identity_env(self.device_id)}
            run_git(["fetch", "--quiet", "--no-tags", "--depth=1", "--", ep.url,
                     f"+{self.ref}:refs/remote-status/{self.branch}"], git_dir=self.git_dir, env=env,
                    timeout=self.timeout)
            remote = self._git("rev-parse", f"refs/remote-status/{self.branch}").stdout.decode().strip()
            doc = yaml.safe_load(self._git("cat-file", "blob", f"{self._tip}:{STATUS_FILE}").stdout)
            self._tip = self._commit(doc, remote)
            self._push(self._tip)
        self._pushed = self._tip
        self.pushes += 1
        if self.pushes % 200 == 0:  # each status adds loose objects; let git pack them now and then
            self._git("-c", "gc.auto=1000", "-c", "gc.autoDetach=false", "gc", "--auto", "--quiet", check=False)


def _status_errors(doc: dict[str, Any]) -> list[Any]:
    """The DeviceStatus schema's errors for ``doc``, first by path; the compiled check first, as nearly every
    document passes (the full validator, ~25x slower, only to name what is wrong)."""
    try:
        fast_check("DeviceStatus")(doc)
        return []
    except (ValueError, TypeError):
        return sorted(validator("DeviceStatus").iter_errors(doc), key=lambda e: list(e.path))


def reporting_condition(rep: dict[str, Any]) -> tuple[str, str, str] | None:
    """(status, reason, message) of the ``StatusReported`` condition from :meth:`StatusWriter.reporting` (pure);
    None before the first push attempt. The True message is stable so it does not make a new status commit."""
    if rep.get("pushed") is None:
        return None
    if rep["pushed"]:
        return "True", PUSHED, f"{rep['branch']} is up to date in the fleet repository"
    last = rep.get("lastPushTime") or "never"
    reason = rep.get("reason") or GIT_UNAVAILABLE
    why = explain(reason, str(rep.get("lastError")), push_branch=rep.get("branch"))
    return "False", reason, f"last successful push: {last}; {why}"


def reporting_block(rep: dict[str, Any]) -> dict[str, Any]:
    """The ``status.reporting`` part of a DeviceStatus."""
    out: dict[str, Any] = {"lastPushTime": rep.get("lastPushTime"), "failedPushes": rep.get("failedPushes", 0)}
    if rep.get("lastError"):
        out["lastError"] = str(rep["lastError"])[:1024]
    return out


class _Rejected(Exception):
    def __init__(self, message: str, endpoint: _PushEndpoint | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class _PushEndpoint:
    """One place the status branch is pushed to: URL, credentials, in-process push when over HTTP(S)."""

    def __init__(self, url: str, credentials: Credentials | None, timeout: float, *, anonymous: bool = False) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.auth = GitAuth(url, credentials or Credentials())
        self.smart: SmartPush | None = None
        if self.auth.is_http:
            try:
                self.smart = SmartPush(url, authorization=self.auth.authorization, timeout=timeout,
                                       credentials=self.auth.credentials, anonymous=anonymous)
            except (ProxyURLError, CredentialError) as exc:  # `git push` meets the same proxy setting and names it
                log.warning("status push to %s: %s", self.display_url, exc)

    def close(self) -> None:
        if self.smart is not None:
            self.smart.close()


def _identity_env(device_id: str) -> dict[str, str]:
    email = f"{device_id}@devices.modelfleet"
    return {"GIT_AUTHOR_NAME": device_id, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": device_id,
            "GIT_COMMITTER_EMAIL": email}


def _reason(exc: Exception, message: str) -> str:
    """The named reason of a failed status push (docs/hosting.md)."""
    if isinstance(exc, CredentialError):
        return exc.reason
    if isinstance(exc, GitError) and exc.timed_out:
        return GIT_TIMEOUT
    named = classify(message)
    if named:
        return named
    if isinstance(exc, _Rejected) or "[remote rejected]" in message or "pre-receive hook declined" in message:
        return PUSH_REJECTED
    return GIT_UNAVAILABLE
