"""The I/O edge of rollouts: read the fleet, the status branches and the history from Git; write one commit.

:class:`RolloutRepo` reads through :class:`reconciler.gitops.statusrepo.StatusRepo` (one shallow fetch of
every ``status/*`` branch plus the desired-state branch into a local cache), then loads the manifests from
the head's tree and the deployment file's first-parent history (when the current step landed).

:meth:`RolloutRepo.write` applies an edit in a fresh clone and either pushes it to the branch (``commit``),
pushes it to a new branch for a pull request (``branch``) or returns it as a patch (``patch``). The commit is
made by the operator's ``git`` with their configuration, so it is signed when they configured signing
(``commit.gpgsign``), and it is refused when the branch moved since the gates were evaluated (the push is a
compare-and-swap: two promoters can never both advance a step). After a push to the branch,
:meth:`RolloutRepo.update_clone` fast-forwards the operator's own clone (``--repo PATH``) when that is safe.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.credentials import CredentialError, Credentials
from reconciler.core.errors import UserError
from reconciler.fleet.manifests import load_files, read_git
from reconciler.fleet.repository import FleetRepo
from reconciler.gitops.statusrepo import StatusRepo, read_blobs
from reconciler.gitops.verify import GitError, git_message, run_git
from reconciler.rollout.basetrust import BaseTrust, verify_base
from reconciler.rollout.edit import Edit, EditError
from reconciler.rollout.evaluate import RolloutStatus, evaluate, fleet_devices, step_key, step_landed

HISTORY_LIMIT = 500  # commits of the deployment file searched for the step's landing commit


@dataclass
class Snapshot:
    """What one fetch saw: the fleet at ``head`` and every device's latest status."""

    head: str
    fleet: FleetRepo
    statuses: dict[str, dict[str, Any] | str]


class RolloutRepo:
    def __init__(self, url: str, cache_dir: Path | None = None, *, branch: str = "main", prefix: str = "status/",
                 subpath: str | None = None, timeout: float = 120, credentials: Credentials | None = None,
                 authorization: str | None = None, status_urls: Sequence[str] = (),
                 base_trust: BaseTrust | None = None, clone: Path | None = None) -> None:
        self.status_repo = StatusRepo(url, cache_dir, branch=branch, prefix=prefix, timeout=timeout,
                                      credentials=credentials, authorization=authorization, status_urls=status_urls,
                                      subpath=subpath)
        self.url, self.branch, self.timeout = url, branch, timeout
        self.base_trust = base_trust or BaseTrust()  # no anchors: every write is refused (basetrust.py)
        self.subpath = subpath.strip("/") if subpath else None
        self.clone = clone  # the operator's clone of url (--repo PATH): fast-forwarded after a push to the branch

    @property
    def git_dir(self) -> Path:
        return self.status_repo.git_dir

    def snapshot(self) -> Snapshot:
        head = self.status_repo.fetch()
        if head is None:
            raise UserError(f"branch {self.branch!r} not found in the repository")
        load = load_files(read_git(self.git_dir, head, self.subpath))
        if not load.ok:
            first = load.errors[0]
            raise UserError(f"the fleet at {head[:12]} does not validate: {first.file}:{first.line}: {first.message}")
        read = self.status_repo.read(head=head, fetched=True, fleet=load.fleet)
        statuses: dict[str, dict[str, Any] | str] = {}
        for device, rec in read.records.items():
            if device not in load.fleet.devices:
                continue  # not in the inventory: never part of a step, whatever its branch claims
            if not rec.trust.trusted:
                statuses[device] = f"untrusted status ({rec.trust.reason}): {rec.trust.message}"
            elif rec.doc is None:
                statuses[device] = f"unreadable status: {rec.error}"
            else:
                statuses[device] = rec.doc
        return Snapshot(head, load.fleet, statuses)

    def _git_path(self, rel: str) -> str:
        return f"{self.subpath}/{rel}" if self.subpath else rel

    def landed(self, snap: Snapshot, deployment: str) -> tuple[str, _dt.datetime] | None:
        """The first-parent commit that put the deployment's current step in place, and its commit time."""
        dep = snap.fleet.deployments[deployment]
        path = self._git_path(dep.file)
        log = run_git(["log", "--first-parent", f"-n{HISTORY_LIMIT}", "--format=%H %cI", snap.head, "--", path],
                      git_dir=self.git_dir, timeout=self.timeout).stdout.decode().split("\n")
        commits = [line.split(" ", 1) for line in log if line]
        blobs = read_blobs(self.git_dir, [f"{sha}:{path}" for sha, _ in commits], self.timeout)
        history = [(sha, _dt.datetime.fromisoformat(when), _key_in(blob, deployment))
                   for (sha, when), blob in zip(commits, blobs, strict=True)]
        return step_landed(history, step_key(dep.spec))

    def status(self, deployment: str, *, now: _dt.datetime | None = None,
               snap: Snapshot | None = None) -> tuple[Snapshot, RolloutStatus]:
        snap = snap or self.snapshot()
        if deployment not in snap.fleet.deployments:
            known = ", ".join(sorted(snap.fleet.deployments)) or "none"
            raise UserError(f"no deployment {deployment!r} at {snap.head[:12]} (deployments: {known})")
        now = now or _dt.datetime.now(_dt.timezone.utc)
        devices = fleet_devices(snap.fleet, snap.statuses)
        return snap, evaluate(snap.fleet, deployment, devices, now=now, landed=self.landed(snap, deployment),
                              head=snap.head)

    # -- writing -----------------------------------------------------------------------------------------

    def write(self, snap: Snapshot, deployment: str, make_edit: Callable[[str], Edit], *, mode: str,
              message_body: str = "", branch_name: str | None = None) -> str:
        """Apply ``make_edit`` to the deployment file at ``snap.head``; returns the commit sha or the patch.

        ``snap.head`` is verified first (:func:`~reconciler.rollout.basetrust.verify_base`): nothing is ever
        committed on top of a commit the devices would refuse."""
        verify_base(self.base_trust, self.git_dir, snap.head, self.branch,
                    self.status_repo.cache_dir / f"verified-{self.branch.replace('/', '_')}", timeout=self.timeout)
        rel = self._git_path(snap.fleet.deployments[deployment].file)
        work = Path(tempfile.mkdtemp(prefix="modelfleet-rollout-"))
        try:
            env = self.status_repo.auth.env()  # credentials as environment: never in argv or .git/config
        except CredentialError as exc:
            raise UserError(str(exc)) from None
        try:
            _op_git(["clone", "--quiet", "--no-tags", "--single-branch", "--branch", self.branch, "--", self.url,
                     str(work / "repo")], cwd=work, timeout=self.timeout, env=env)
            repo = work / "repo"
            head = _op_git(["rev-parse", "HEAD"], cwd=repo).strip()
            if head != snap.head:
                raise UserError(f"{self.branch} moved to {head[:12]} since the rollout was evaluated at "
                                f"{snap.head[:12]}: run the command again")
            file = repo / rel
            try:
                edit = make_edit(file.read_text(encoding="utf-8"))
            except EditError as exc:
                raise UserError(f"{rel}: {exc}") from None
            if edit.delete:
                _op_git(["rm", "--quiet", "--", rel], cwd=repo)
            else:
                file.write_text(edit.text, encoding="utf-8")
                _op_git(["add", "--", rel], cwd=repo)
            message = edit.summary + ("\n\n" + message_body.strip() + "\n" if message_body.strip() else "\n")
            _op_git(["commit", "--quiet", "-F", "-"], cwd=repo, input=message)
            sha = _op_git(["rev-parse", "HEAD"], cwd=repo).strip()
            if mode == "patch":
                return _op_git(["format-patch", "-1", "--stdout", "HEAD"], cwd=repo)
            target = self.branch if mode == "commit" else branch_name
            _op_git(["push", "--quiet", "--porcelain", "--", "origin", f"HEAD:refs/heads/{target}"], cwd=repo,
                    timeout=self.timeout, what=f"push to {target}", env=env)
            return sha
        finally:
            shutil.rmtree(work, ignore_errors=True)


    def update_clone(self, sha: str) -> str | None:
        """After ``sha`` was pushed to the branch: bring the operator's clone (``clone``) along, so that their next
        ``git push`` is not rejected. Only a fast-forward of the branch checked out, clean and not ahead of
        ``sha``; otherwise it is left alone and the line returned says how to update it (None: no clone)."""
        if self.clone is None:
            return None
        try:
            env = self.status_repo.auth.env()
        except CredentialError:
            env = {}
        return fast_forward_clone(self.clone, self.branch, sha, env=env, timeout=self.timeout)


def _shown(path: Path) -> tuple[str, str]:
    """How to name the clone in a sentence, and the ``git`` prefix that runs in it."""
    rel = os.path.relpath(path)
    if rel == ".":
        return "your clone (the current directory)", "git"
    shown = rel if not rel.startswith("..") else str(path)
    return f"your clone {shown}", f"git -C {shlex.quote(shown)}"


def fast_forward_clone(clone: Path, branch: str, sha: str, *, env: dict[str, str] | None = None,
                       timeout: float = 60) -> str:
    """Fetch ``branch`` from the clone's ``origin`` and ``git merge --ff-only`` ``sha`` when the clone has
    ``branch`` checked out, has no uncommitted changes and no commit that ``sha`` lacks; the one line to print."""
    name, git = _shown(clone)

    def run(*args: str, network: bool = False) -> tuple[int, str]:
        try:
            proc = run_git(list(args), cwd=clone, timeout=timeout if network else 60, env=env, check=False)
        except GitError as exc:
            return 1, str(exc)
        return proc.returncode, git_message((proc.stdout if proc.returncode == 0 else proc.stderr).decode(
            errors="replace"), 300)

    def not_updated(why: str, how: str) -> str:
        return f"{name} is not updated ({why}): {how}"

    pull = f"`{git} pull --ff-only origin {branch}`"
    rc, current = run("symbolic-ref", "--quiet", "--short", "HEAD")
    if rc != 0 or current != branch:
        on = f"on {current}" if rc == 0 else "a detached HEAD"
        return not_updated(f"{on}, not {branch}", f"once {branch} is checked out, {pull}")
    rc, changes = run("status", "--porcelain", "--untracked-files=no")
    if rc != 0 or changes:
        return not_updated("it has uncommitted changes", f"commit or stash them, then {pull}")
    rc, out = run("fetch", "--quiet", "origin", branch, network=True)
    if rc != 0:
        return not_updated(f"fetching origin failed: {out}", pull)
    rc, ahead = run("rev-list", "--count", f"{sha}..HEAD")
    if rc != 0:
        return not_updated(f"{sha[:12]} is not in it after the fetch: {ahead}", pull)
    if ahead != "0":
        return not_updated(f"its {branch} has {ahead} commit(s) that are not on origin",
                           f"`{git} pull --rebase origin {branch}` puts them on top of {sha[:12]}")
    rc, out = run("merge", "--ff-only", "--quiet", sha)
    if rc != 0:
        return not_updated(f"the fast-forward failed: {out}", pull)
    return f"{name}: {branch} fast-forwarded to {sha[:12]}"


def _key_in(blob: bytes | None, deployment: str) -> str | None:
    if blob is None:
        return None
    try:
        for doc in yaml.safe_load_all(blob):
            if (isinstance(doc, dict) and doc.get("kind") == "Deployment"
                    and (doc.get("metadata") or {}).get("name") == deployment):
                return step_key(doc.get("spec"))
    except yaml.YAMLError:
        return None
    return None


def _op_git(args: list[str], *, cwd: Path, timeout: float = 60, input: str | None = None,
            what: str | None = None, env: dict[str, str] | None = None) -> str:
    """``git`` as the operator runs it (their identity and signing configuration), never prompting."""
    try:
        proc = run_git(args, cwd=cwd, timeout=timeout, input=None if input is None else input.encode(), check=False,
                       env=env)
    except GitError as exc:
        raise UserError(f"git {what or args[0]}: {exc}") from None
    if proc.returncode != 0:
        text = git_message((proc.stdout + proc.stderr).decode(errors="replace"), 500)
        if "rejected" in text or "non-fast-forward" in text or "fetch first" in text:
            raise UserError(f"git {what or args[0]} was rejected (the branch moved or exists): {text[-300:]}")
        raise UserError(f"git {what or args[0]} failed: {text}")
    return proc.stdout.decode(errors="replace")

