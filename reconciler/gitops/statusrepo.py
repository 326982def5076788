"""Operator side: every device's status branch read, bounded and verified, from one local cache.

Workflow: :class:`StatusRepo` makes ONE shallow fetch of ``refs/heads/status/*`` (plus the desired-state branch)
into a local cache repository — one fetch per status repository when the devices push their status elsewhere
(``status.url``, sharded at scale: docs/scale.md). :meth:`StatusRepo.read` then

1. loads the inventory at the desired-state head: which devices exist, their ``spec.statusKeys`` and the
   fleet's ``spec.status.requireSignatures`` (:class:`~reconciler.identity.trust.TrustPolicy`);
2. lists the status refs (``for-each-ref``) and asks git for every commit's and ``status.yaml``'s size
   (``cat-file --batch-check``) before reading anything: an object over its cap is never read;
3. reads the commits and the blobs within their caps through one ``cat-file --batch``;
4. judges each commit (:func:`~reconciler.identity.trust.judge_status`: in-process Ed25519, no process per
   device) and each branch against the newest commit this cache saw before (a rewritten or replayed branch);
5. parses only trusted statuses, through the manifests' bounded YAML loader and the DeviceStatus schema.

One device's bad branch makes that device's :class:`StatusRecord` untrusted or unreadable with a reason; the
rest of the fleet reads as before. 5,000 devices cost a handful of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.credentials import Credentials
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.redact import redact_url
from reconciler.fleet.repository import FleetRepo
from reconciler.fleet.schemas import fast_check
from reconciler.fleet.yamlsafe import YamlError, load_data
from reconciler.gitops.auth import GitAuth
from reconciler.gitops.verify import GitError, init_bare, run_git
from reconciler.identity.commitsig import MAX_COMMIT_BYTES
from reconciler.identity.trust import UNREADABLE, StatusTrust, TrustPolicy, judge_replay, judge_status


def status_shard(device_id: str, urls: Sequence[str]) -> str | None:
    """The status repository of ``device_id`` among ``urls`` (stable: a hash of the id), None when unsharded.
    The simulator's devices and a site gateway's relay place a device's branch by it; readers read every shard."""
    if not urls:
        return None
    return urls[int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:4], "big") % len(urls)]


MAX_STATUS_BYTES = 256 * 1024  # larger than any writer produces (64 KiB); bounds what a hostile branch can cost
MAX_STATUS_REPOS = 256  # status repositories one report reads (shards): each is one fetch
MAX_SCHEMA_ERRORS = 1


@dataclass
class StatusRecord:
    """One device's newest status commit as a reader judged it."""

    device: str
    commit: str
    committed: int  # committer time (Unix seconds)
    trust: StatusTrust
    doc: dict[str, Any] | None = None  # the parsed DeviceStatus; None when untrusted or unreadable
    error: str | None = None  # why a trusted commit's status.yaml could not be used

    @property
    def usable(self) -> bool:
        return self.trust.trusted and self.doc is not None


@dataclass
class FleetRead:
    """What one :meth:`StatusRepo.read` saw."""

    head: str | None
    fleet: FleetRepo | None  # None: no desired-state branch, or its manifests did not load
    policy: TrustPolicy
    records: dict[str, StatusRecord]

    @property
    def inventory(self) -> set[str]:
        return set(self.fleet.devices) if self.fleet is not None else set()


def parse_status(data: bytes, device: str | None = None) -> dict[str, Any]:
    """Parse one ``status.yaml`` with the manifests' node budget and the DeviceStatus schema; ``ValueError``
    (one line) when it is too large, not YAML, not a DeviceStatus, or names another device."""
    if len(data) > MAX_STATUS_BYTES:
        raise ValueError(f"status.yaml is {len(data)} bytes (limit {MAX_STATUS_BYTES})")
    try:
        doc = load_data(data, max_bytes=MAX_STATUS_BYTES)
    except YamlError as exc:
        raise ValueError(f"invalid YAML at line {exc.line}: {exc.message}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "DeviceStatus":
        raise ValueError("not a DeviceStatus document")
    try:
        fast_check("DeviceStatus")(doc)
    except ValueError as exc:
        raise ValueError(f"not a valid DeviceStatus: {exc}") from None
    if device is not None and doc["metadata"].get("name") != device:
        raise ValueError(f"the status names device {str(doc['metadata'].get('name'))[:64]!r}, not {device!r}")
    return doc


def _anchor(policy: TrustPolicy, device: str) -> str:
    """What a device's verdict depends on besides its commit: its listed keys and the fleet's setting."""
    keys = policy.keys.get(device)
    material = b"-" if keys is None else b"|".join(sorted(keys))
    return hashlib.sha256(material + (b"R" if policy.require_signatures else b"U")).hexdigest()[:32]


def default_cache_dir(url: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelfleet" / "fleet-status"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


def _sizes(git_dir: Path, specs: list[str], timeout: float) -> list[tuple[str, int] | None]:
    """(type, size) of each ``<rev>[:<path>]`` through one ``cat-file --batch-check``; None where missing."""
    if not specs:
        return []
    out = run_git(["cat-file", "--batch-check"], git_dir=git_dir, input=("\n".join(specs) + "\n").encode(),
                  timeout=timeout).stdout.decode(errors="replace").split("\n")
    result: list[tuple[str, int] | None] = []
    for line in out[:len(specs)]:
        parts = line.split()
        result.append((parts[1], int(parts[2])) if len(parts) == 3 and parts[2].isdigit() else None)
    return result


def read_blobs(git_dir: Path, specs: list[str], timeout: float = 120,
               limit: int | None = None) -> list[bytes | None]:
    """Contents of ``<rev>:<path>`` specs through one ``git cat-file --batch``; None where missing, not a blob,
    or (with ``limit``) larger than ``limit`` bytes — sizes are asked first, so such an object is never read."""
    if not specs:
        return []
    wanted = list(range(len(specs)))
    if limit is not None:
        sizes = _sizes(git_dir, specs, timeout)
        wanted = [i for i, s in enumerate(sizes) if s is not None and s[1] <= limit]
    result: list[bytes | None] = [None] * len(specs)
    if not wanted:
        return result
    out = run_git(["cat-file", "--batch"], git_dir=git_dir, input=("\n".join(specs[i] for i in wanted) + "\n").encode(),
                  timeout=timeout).stdout
    pos = 0
    for i in wanted:
        nl = out.index(b"\n", pos)
        header = out[pos:nl].split()
        if len(header) == 3 and header[1] in (b"blob", b"commit", b"tree", b"tag"):
            size = int(header[2])
            result[i] = out[nl + 1:nl + 1 + size]
            pos = nl + 1 + size + 1
        else:  # "<spec> missing" / "ambiguous"
            pos = nl + 1
    return result


class StatusRepo:
    """A local cache of a fleet repository's status branches (operator side)."""

    def __init__(self, url: str, cache_dir: Path | None = None, *, branch: str = "main", prefix: str = "status/",
                 timeout: float = 120, credentials: Credentials | None = None, authorization: str | None = None,
                 status_urls: Sequence[str] = (), subpath: str | None = None) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.auth = GitAuth(url, credentials or Credentials(), authorization)
        # Where the devices push status/<id>: the fleet repository itself, or the status repositories their
        # agent config names (`status.url`; several when the status repository is sharded, docs/scale.md).
        self.status_urls = list(dict.fromkeys(status_urls)) or [url]
        if len(self.status_urls) > MAX_STATUS_REPOS:
            raise ValueError(f"at most {MAX_STATUS_REPOS} status repositories, got {len(self.status_urls)}")
        self._status_auth = {u: GitAuth(u, credentials or Credentials(), authorization) for u in self.status_urls}
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.display_url)
        self.branch = branch
        self.prefix = prefix.rstrip("/") + "/"
        self.timeout = timeout
        self.subpath = subpath.strip("/") if subpath else None
        self.git_dir = self.cache_dir / "repo.git"
        self.seen_file = self.cache_dir / "seen-status.json"
        self.verdicts_file = self.cache_dir / "status-verdicts.json"

    def _ensure(self) -> None:
        if not (self.git_dir / "HEAD").is_file():
            init_bare(self.git_dir, timeout=self.timeout)

    def _local(self, index: int) -> str:
        """Local namespace of the status branches fetched from ``status_urls[index]`` (one per repository, so
        one repository's ``--prune`` never drops another's branches)."""
        return f"refs/fleet/{self.prefix}" if index == 0 else f"refs/fleet/shard-{index}/{self.prefix}"

    def fetch(self) -> str | None:
        """One shallow fetch of every status branch (from each status repository), then the desired-state
        branch; returns its head."""
        self._ensure()
        for index, url in enumerate(self.status_urls):
            self._fetch_statuses(url, self._local(index))
        return self.fetch_head()

    def _fetch_statuses(self, url: str, local: str) -> None:
        env = self._status_auth[url].env()
        try:
            run_git(["fetch", "--quiet", "--no-tags", "--prune", "--depth=1", "--no-write-fetch-head", "--", url,
                     f"+refs/heads/{self.prefix}*:{local}*"], git_dir=self.git_dir, timeout=self.timeout, env=env)
        except GitError as exc:
            # git 2.39 exits 1 without a word when the glob matches nothing: ask whether any status branch exists.
            if exc.timed_out or run_git(["ls-remote", "--heads", "--", url, f"refs/heads/{self.prefix}*"],
                                        timeout=self.timeout, env=env).stdout.strip():
                raise
            for ref in run_git(["for-each-ref", "--format=%(refname)", local], git_dir=self.git_dir,
                               timeout=self.timeout).stdout.decode().split():
                run_git(["update-ref", "-d", ref], git_dir=self.git_dir, timeout=self.timeout)

    def load_fleet(self, head: str | None) -> FleetRepo | None:
        """The manifests at ``head`` (None when there is no head or they do not load)."""
        if head is None:
            return None
        from reconciler.fleet.manifests import load_files, read_git

        try:
            load = load_files(read_git(self.git_dir, head, self.subpath))
        except Exception:  # noqa: BLE001 - without an inventory every status is untrusted; the caller says why
            return None
        return load.fleet if load.ok else None

    def _refs(self) -> dict[str, tuple[int, str]]:
        """device id -> (committer time, commit) of its newest status branch across the status repositories."""
        newest: dict[str, tuple[int, str]] = {}  # a device that moved shards: its newest status commit wins
        for index in range(len(self.status_urls)):
            local = self._local(index)
            refs = run_git(["for-each-ref", "--format=%(committerdate:unix) %(objectname) %(refname)", local],
                           git_dir=self.git_dir, timeout=self.timeout).stdout.decode().split("\n")
            for line in filter(None, refs):
                when, sha, ref = line.split(" ", 2)
                device = ref[len(local):]
                if device not in newest or int(when) > newest[device][0]:
                    newest[device] = (int(when), sha)
        return newest

    def _seen(self) -> dict[str, tuple[str, int]]:
        try:
            raw = json.loads(self.seen_file.read_text(encoding="utf-8"))
            return {str(d): (str(v[0]), int(v[1])) for d, v in raw.items()}
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return {}

    def read(self, *, head: str | None = None, fetched: bool = False, fleet: FleetRepo | None = None) -> FleetRead:
        """Fetch (unless ``fetched``), then judge and parse every device's newest status (module docstring);
        ``fleet``: the manifests at ``head`` when the caller loaded them already."""
        if not fetched:
            head = self.fetch()
        if fleet is None:
            fleet = self.load_fleet(head)
        if fleet is not None:
            policy = TrustPolicy.from_inventory(fleet.status_keys(), require_signatures=fleet.require_status_signatures)
        else:
            policy = TrustPolicy({}, True)
        refs = self._refs()
        devices = sorted(refs)
        shas = [refs[d][1] for d in devices]
        commits = read_blobs(self.git_dir, shas, self.timeout, limit=MAX_COMMIT_BYTES)
        seen = self._seen()
        memo = self._verdicts()
        verdicts: dict[str, list[Any]] = {}
        records: dict[str, StatusRecord] = {}
        to_parse: list[str] = []
        for device, raw in zip(devices, commits, strict=True):
            when, sha = refs[device]
            anchor = _anchor(policy, device)
            known = memo.get(device)
            if known and known[0] == sha and known[1] == anchor:  # the same commit under the same keys
                trust = StatusTrust(bool(known[2]), str(known[3]), str(known[4]), known[5])
            else:
                trust = judge_status(device, raw, policy)
            verdicts[device] = [sha, anchor, trust.trusted, trust.reason, trust.message, trust.key]
            if trust.trusted:
                trust = judge_replay(device, seen.get(device), (sha, when)) or trust
            records[device] = StatusRecord(device, sha, when, trust)
            if trust.trusted:
                to_parse.append(device)
        blobs = read_blobs(self.git_dir, [f"{records[d].commit}:status.yaml" for d in to_parse], self.timeout,
                           limit=MAX_STATUS_BYTES)
        for device, blob in zip(to_parse, blobs, strict=True):
            rec = records[device]
            if blob is None:
                rec.error = f"status.yaml is missing or larger than {MAX_STATUS_BYTES} bytes"
                continue
            try:
                rec.doc = parse_status(blob, device)
            except ValueError as exc:
                rec.error = str(exc)
        self._remember(seen, records)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.verdicts_file, json.dumps(verdicts, separators=(",", ":")), durable=False)
        return FleetRead(head, fleet, policy, records)

    def _verdicts(self) -> dict[str, list[Any]]:
        """The signature verdicts of the last read (device -> [commit, anchors, trusted, reason, message, key]):
        a commit judged under the same anchors is not verified again."""
        try:
            raw = json.loads(self.verdicts_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(d): v for d, v in raw.items() if isinstance(v, list) and len(v) == 6} if isinstance(raw, dict) else {}

    def _remember(self, seen: dict[str, tuple[str, int]], records: Mapping[str, StatusRecord]) -> None:
        """Keep each device's newest trusted status commit, so a later read notices a branch moved back."""
        changed = False
        for device, rec in records.items():
            old = seen.get(device)
            if rec.trust.trusted and (old is None or rec.committed > old[1]):
                seen[device] = (rec.commit, rec.committed)
                changed = True
        if changed:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.seen_file, json.dumps({d: list(v) for d, v in sorted(seen.items())}),
                              durable=False)

    def behind(self, commits: set[str], head: str | None) -> dict[str, int | None]:
        """For each applied commit: how many first-parent commits the head is ahead of it (None = not on it)."""
        if head is None or not commits:
            return {c: None for c in commits}
        order = run_git(["rev-list", "--first-parent", head], git_dir=self.git_dir,
                        timeout=self.timeout).stdout.decode().split()
        index = {sha: i for i, sha in enumerate(order)}
        out: dict[str, int | None] = {}
        for c in commits:
            if c in index:
                out[c] = index[c]
                continue
            # Applied commit on a merged side branch, abbreviated, or unknown.
            anc = run_git(["merge-base", "--is-ancestor", "--", c, head], git_dir=self.git_dir, check=False)
            if anc.returncode == 0:
                cnt = run_git(["rev-list", "--count", f"{c}..{head}"], git_dir=self.git_dir)
                out[c] = int(cnt.stdout.decode().strip())
            else:
                out[c] = None
        return out

    def history_docs(self, device: str, limit: int = 50) -> list[tuple[str, str, dict[str, Any] | str, StatusTrust]]:
        """(status commit, commit time, parsed DeviceStatus or why it is unusable, trust) of the device's newest
        ``limit`` status commits, newest first, judged against the inventory at the desired-state head.
        ``KeyError`` if the device has no status branch."""
        head = self.fetch_head()
        fleet = self.load_fleet(head)
        policy = (TrustPolicy.from_inventory(fleet.status_keys(), require_signatures=fleet.require_status_signatures)
                  if fleet is not None else TrustPolicy({}, True))
        ref = f"refs/fleet/history/{device}"
        for index, url in enumerate(self.status_urls):
            try:
                run_git(["fetch", "--quiet", "--no-tags", f"--depth={limit}", "--no-write-fetch-head", "--", url,
                         f"+refs/heads/{self.prefix}{device}:{ref}"], git_dir=self.git_dir, timeout=self.timeout,
                        env=self._status_auth[url].env())
                break
            except GitError as exc:
                if "couldn't find remote ref" not in str(exc):
                    raise
                if index == len(self.status_urls) - 1:
                    raise KeyError(device) from None
        log = run_git(["log", f"-n{limit}", "--format=%H %cI", ref], git_dir=self.git_dir,
                      timeout=self.timeout).stdout.decode().split("\n")
        commits = [line.split(" ", 1) for line in log if line]
        raws = read_blobs(self.git_dir, [sha for sha, _ in commits], self.timeout, limit=MAX_COMMIT_BYTES)
        blobs = read_blobs(self.git_dir, [f"{sha}:status.yaml" for sha, _ in commits], self.timeout,
                           limit=MAX_STATUS_BYTES)
        out: list[tuple[str, str, dict[str, Any] | str, StatusTrust]] = []
        for (sha, when), raw, blob in zip(commits, raws, blobs, strict=True):
            trust = judge_status(device, raw, policy)
            if not trust.trusted:
                out.append((sha, when, f"untrusted ({trust.reason}): {trust.message}", trust))
                continue
            try:
                out.append((sha, when, parse_status(blob if blob is not None else b"", device), trust))
            except ValueError as exc:
                out.append((sha, when, str(exc) if blob is not None else
                            f"status.yaml is missing or larger than {MAX_STATUS_BYTES} bytes", trust))
        return out

    def fetch_head(self) -> str | None:
        """Fetch only the desired-state branch (for the inventory); its head, None when it does not exist."""
        self._ensure()
        try:
            run_git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", self.url,
                     f"+refs/heads/{self.branch}:refs/fleet/head"], git_dir=self.git_dir, timeout=self.timeout,
                    env=self.auth.env())
        except GitError:
            return None  # no desired-state branch (status-only mirror): no inventory, "behind" is unknown
        return run_git(["rev-parse", "refs/fleet/head"], git_dir=self.git_dir).stdout.decode().strip()


__all__ = ["UNREADABLE", "FleetRead", "StatusRecord", "StatusRepo", "default_cache_dir", "parse_status",
           "read_blobs"]
