"""Operator side: the whole fleet's state, read from the devices' ``status/<device-id>`` branches.

Workflow: :class:`StatusRepo` makes ONE shallow fetch of ``refs/heads/status/*`` (plus the desired-state branch
for "behind by N") into a local cache repository — one per status repository when the devices push their status
elsewhere (``status.url``, sharded at scale: docs/scale.md) — lists the refs with ``for-each-ref`` and reads every
``status.yaml`` through a single ``git cat-file --batch`` — so 5,000 devices cost a handful of processes.
The pure functions (:func:`device_row`, :func:`summarize`, :func:`render`) turn parsed statuses into the
table/JSON/Markdown report; they do no I/O and are tested on their own.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections import Counter as _Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.conditions import isoformat, parse_time
from reconciler.core.credentials import Credentials
from reconciler.core.redact import redact_url
from reconciler.core.units import format_duration
from reconciler.gitops.auth import GitAuth
from reconciler.gitops.verify import GitError, init_bare, run_git

try:  # the C loader is ~10x faster on 5,000 files; both are safe loaders
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader

MAX_STATUS_BYTES = 256 * 1024  # larger than any writer produces; bounds what a hostile branch can cost us
MAX_STATUS_REPOS = 256  # status repositories one report reads (shards): each is one fetch


@dataclass
class EndpointView:
    name: str
    deployment: str | None
    model: str | None
    version: str | None
    state: str


@dataclass
class DeviceRow:
    device: str
    status_commit: str
    applied: str | None = None
    behind: int | None = None  # commits between the applied commit and the branch head; None = unknown
    ready: str = "Unknown"
    reason: str = ""
    endpoints: list[EndpointView] = field(default_factory=list)
    heartbeat: str | None = None
    age_seconds: float | None = None
    stale: bool = False
    error: str | None = None  # the status could not be read


@dataclass
class FleetReport:
    branch: str
    head: str | None
    generated: str
    stale_after: float
    rows: list[DeviceRow]
    versions: dict[str, dict[str, int]]  # deployment -> "model@version" -> devices
    totals: dict[str, int]
    never_reported: list[str] = field(default_factory=list)  # inventory devices without a status branch


def parse_status(data: bytes) -> dict[str, Any]:
    """Parse one ``status.yaml`` safely; ``ValueError`` if it is not a DeviceStatus mapping."""
    if len(data) > MAX_STATUS_BYTES:
        raise ValueError(f"status.yaml is {len(data)} bytes (limit {MAX_STATUS_BYTES})")
    try:
        doc = yaml.load(data, Loader=_Loader)  # noqa: S506 - CSafeLoader/SafeLoader only
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "DeviceStatus" or not isinstance(doc.get("status"), dict):
        raise ValueError("not a DeviceStatus document")
    return doc


def device_row(device: str, status_commit: str, doc: Mapping[str, Any], *, behind: Mapping[str, int | None],
               now: _dt.datetime, stale_after: float) -> DeviceRow:
    """One table row from a parsed status."""
    st = doc.get("status") or {}
    applied = st.get("appliedCommit") if isinstance(st.get("appliedCommit"), str) else None
    ready = next((c for c in st.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"), {})
    eps = [EndpointView(str(e.get("name", "?")), e.get("deployment"), e.get("model"),
                        None if e.get("version") is None else str(e.get("version")), str(e.get("state", "?")))
           for e in st.get("endpoints") or [] if isinstance(e, dict)]
    hb = st.get("heartbeat")
    age: float | None = None
    if isinstance(hb, str):
        try:
            age = max(0.0, (now - parse_time(hb)).total_seconds())
        except ValueError:
            age = None
    return DeviceRow(
        device=device, status_commit=status_commit, applied=applied,
        behind=behind.get(applied) if applied else None,
        ready=str(ready.get("status", "Unknown")), reason=str(ready.get("reason", "")),
        endpoints=eps, heartbeat=hb if isinstance(hb, str) else None, age_seconds=age,
        stale=age is None or age > stale_after,
    )


def summarize(rows: list[DeviceRow]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Devices per deployment and model@version, and fleet totals."""
    per: dict[str, _Counter[str]] = {}
    for r in rows:
        for e in r.endpoints:
            key = f"{e.model or e.name}@{e.version or '-'}"
            per.setdefault(e.deployment or "-", _Counter())[key] += 1
    versions = {dep: dict(sorted(c.items())) for dep, c in sorted(per.items())}
    totals = {
        "devices": len(rows),
        "ready": sum(r.ready == "True" for r in rows),
        "notReady": sum(r.ready != "True" for r in rows),
        "stale": sum(r.stale for r in rows),
        "behind": sum(bool(r.behind) for r in rows),
        "unreadable": sum(r.error is not None for r in rows),
    }
    return versions, totals


def build_report(branch: str, head: str | None, statuses: Mapping[str, tuple[str, bytes]],
                 behind: Mapping[str, int | None], *, now: _dt.datetime, stale_after: float,
                 inventory: set[str] | frozenset[str] = frozenset()) -> FleetReport:
    rows: list[DeviceRow] = []
    for device in sorted(statuses):
        commit, data = statuses[device]
        try:
            rows.append(device_row(device, commit, parse_status(data), behind=behind, now=now,
                                   stale_after=stale_after))
        except ValueError as exc:
            rows.append(DeviceRow(device, commit, stale=True, error=str(exc)))
    versions, totals = summarize(rows)
    never = sorted(inventory - set(statuses))
    totals["neverReported"] = len(never)
    return FleetReport(branch, head, isoformat(now), stale_after, rows, versions, totals, never)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds) if seconds >= 1 else "0s"


def _behind(r: DeviceRow) -> str:
    if r.applied is None:
        return "-"
    if r.behind is None:
        return "unknown"
    return "up to date" if r.behind == 0 else f"behind {r.behind}"


def _endpoints(r: DeviceRow) -> str:
    if r.error:
        return f"(unreadable: {r.error})"
    return ", ".join(f"{e.name}={e.model or '?'}@{e.version or '-'}" + ("" if e.state == "Serving" else f" ({e.state})")
                     for e in r.endpoints) or "-"


def _table_rows(report: FleetReport) -> list[list[str]]:
    return [[r.device, (r.applied or "-")[:12], _behind(r), r.ready + (f" ({r.reason})" if r.ready != "True" and r.reason else ""),
             _endpoints(r), _age(r.age_seconds) + (" STALE" if r.stale else "")] for r in report.rows]


HEADERS = ["DEVICE", "APPLIED", "VS HEAD", "READY", "ENDPOINTS", "HEARTBEAT"]


def render(report: FleetReport, fmt: str = "table") -> str:
    """``table`` (terminal), ``markdown`` (PR comments, wikis) or ``json`` (machines)."""
    if fmt == "json":
        return json.dumps({"branch": report.branch, "head": report.head, "generated": report.generated,
                           "staleAfterSeconds": report.stale_after, "totals": report.totals,
                           "versions": report.versions, "devices": [asdict(r) for r in report.rows],
                           "neverReported": report.never_reported}, indent=2)
    rows = _table_rows(report)
    head = f"{report.branch} at {(report.head or 'unknown')[:12]}"
    t = report.totals
    totals = (f"{t['devices']} devices: {t['ready']} ready, {t['notReady']} not ready, {t['stale']} stale, "
              f"{t['behind']} behind {report.branch}")
    if not report.rows:
        totals = "no device has reported yet"
    never = (f"never reported ({len(report.never_reported)} in the inventory): "
             + ", ".join(report.never_reported[:50]) + (" …" if len(report.never_reported) > 50 else "")
             if report.never_reported else "")
    if never:
        totals += "\n" + never
    summary = [(dep, ver, n) for dep, vs in report.versions.items() for ver, n in vs.items()]
    if fmt == "markdown":
        out = [f"**Fleet status** — {head}, generated {report.generated}", "",
               "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        out += ["", totals, "", "| DEPLOYMENT | MODEL@VERSION | DEVICES |", "|---|---|---|"]
        out += [f"| {d} | {v} | {n} |" for d, v, n in summary]
        return "\n".join(out)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADERS)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [f"Fleet status: {head}", line(HEADERS)] + [line(r) for r in rows] + ["", totals]
    if summary:
        sw = [max(len("DEPLOYMENT"), *(len(d) for d, _, _ in summary)),
              max(len("MODEL@VERSION"), *(len(v) for _, v, _ in summary))]
        out += ["", f"{'DEPLOYMENT'.ljust(sw[0])}  {'MODEL@VERSION'.ljust(sw[1])}  DEVICES"]
        out += [f"{d.ljust(sw[0])}  {v.ljust(sw[1])}  {n}" for d, v, n in summary]
    return "\n".join(out)


# -- git plumbing ---------------------------------------------------------------------------------------------

def default_cache_dir(url: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelfleet" / "fleet-status"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


def read_blobs(git_dir: Path, specs: list[str], timeout: float = 120) -> list[bytes | None]:
    """Contents of ``<rev>:<path>`` specs through one ``git cat-file --batch``; None where missing."""
    if not specs:
        return []
    out = run_git(["cat-file", "--batch"], git_dir=git_dir, input=("\n".join(specs) + "\n").encode(),
                  timeout=timeout).stdout
    result: list[bytes | None] = []
    pos = 0
    for _ in specs:
        nl = out.index(b"\n", pos)
        header = out[pos:nl].split()
        if len(header) == 3 and header[1] in (b"blob", b"commit", b"tree", b"tag"):
            size = int(header[2])
            result.append(out[nl + 1:nl + 1 + size] if header[1] == b"blob" else None)
            pos = nl + 1 + size + 1
        else:  # "<spec> missing" / "ambiguous"
            result.append(None)
            pos = nl + 1
    return result


class StatusRepo:
    """A local cache of a fleet repository's status branches (operator side)."""

    def __init__(self, url: str, cache_dir: Path | None = None, *, branch: str = "main", prefix: str = "status/",
                 timeout: float = 120, credentials: Credentials | None = None, authorization: str | None = None,
                 status_urls: Sequence[str] = ()) -> None:
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
        self.git_dir = self.cache_dir / "repo.git"

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
        try:
            run_git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", self.url,
                     f"+refs/heads/{self.branch}:refs/fleet/head"], git_dir=self.git_dir, timeout=self.timeout,
                    env=self.auth.env())
        except GitError:
            return None  # no desired-state branch (status-only mirror): "behind" is unknown
        return run_git(["rev-parse", "refs/fleet/head"], git_dir=self.git_dir).stdout.decode().strip()

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

    def inventory(self, head: str | None) -> set[str]:
        """Device ids of the ``Device`` manifests at ``head`` (the inventory; empty when unreadable)."""
        if head is None:
            return set()
        from reconciler.fleet.manifests import load_files, read_git

        try:
            return set(load_files(read_git(self.git_dir, head)).fleet.devices)
        except Exception:  # noqa: BLE001 - the inventory only adds "never reported"; the report stands without it
            return set()

    def statuses(self) -> dict[str, tuple[str, bytes]]:
        """device id -> (status commit, status.yaml bytes) for every fetched status branch."""
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
        pairs = [(device, sha) for device, (_, sha) in sorted(newest.items())]
        blobs = read_blobs(self.git_dir, [f"{sha}:status.yaml" for _, sha in pairs], self.timeout)
        return {dev: (sha, blob if blob is not None else b"") for (dev, sha), blob in zip(pairs, blobs, strict=True)}

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
            anc = run_git(["merge-base", "--is-ancestor", c, head], git_dir=self.git_dir, check=False)
            if anc.returncode == 0:
                cnt = run_git(["rev-list", "--count", f"{c}..{head}"], git_dir=self.git_dir)
                out[c] = int(cnt.stdout.decode().strip())
            else:
                out[c] = None
        return out

    def report(self, *, stale_after: float, now: _dt.datetime | None = None) -> FleetReport:
        head = self.fetch()
        statuses = self.statuses()
        applied: set[str] = set()
        for _, data in statuses.values():
            try:
                a = parse_status(data)["status"].get("appliedCommit")
            except ValueError:
                continue
            if isinstance(a, str):
                applied.add(a)
        now = now or _dt.datetime.now(_dt.timezone.utc)
        return build_report(self.branch, head, statuses, self.behind(applied, head), now=now,
                            stale_after=stale_after, inventory=self.inventory(head))

    def history_docs(self, device: str, limit: int = 50) -> list[tuple[str, str, dict[str, Any] | str]]:
        """(status commit, commit time, parsed DeviceStatus or why it is unreadable) of the device's newest
        ``limit`` status commits, newest first. ``KeyError`` if the device has no status branch."""
        self._ensure()
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
        blobs = read_blobs(self.git_dir, [f"{sha}:status.yaml" for sha, _ in commits], self.timeout)
        out: list[tuple[str, str, dict[str, Any] | str]] = []
        for (sha, when), blob in zip(commits, blobs, strict=True):
            try:
                out.append((sha, when, parse_status(blob or b"")))
            except ValueError as exc:
                out.append((sha, when, str(exc)))
        return out

    def history(self, device: str, limit: int = 50) -> list[dict[str, Any]]:
        """The device's status commits, newest first: when, which commit it ran, Ready, endpoint versions."""
        out: list[dict[str, Any]] = []
        for sha, when, doc in self.history_docs(device, limit):
            entry: dict[str, Any] = {"statusCommit": sha, "committed": when}
            if isinstance(doc, str):
                entry["error"] = doc
                out.append(entry)
                continue
            st = doc["status"]
            ready = next((c for c in st.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"), {})
            entry.update({
                "heartbeat": st.get("heartbeat"), "appliedCommit": st.get("appliedCommit"),
                "ready": ready.get("status", "Unknown"), "reason": ready.get("reason", ""),
                "endpoints": [{"name": e.get("name"), "model": e.get("model"), "version": e.get("version"),
                               "state": e.get("state")} for e in st.get("endpoints") or [] if isinstance(e, dict)],
            })
            out.append(entry)
        return out


def render_history(device: str, entries: list[dict[str, Any]], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps({"device": device, "history": entries}, indent=2)
    headers = ["HEARTBEAT", "APPLIED", "READY", "ENDPOINTS", "STATUS COMMIT"]
    rows = []
    for e in entries:
        if "error" in e:
            rows.append([e["committed"], "-", "-", f"(unreadable: {e['error']})", e["statusCommit"][:12]])
            continue
        eps = ", ".join(f"{x['name']}={x.get('model') or '?'}@{x.get('version') or '-'}"
                        + ("" if x.get("state") == "Serving" else f" ({x.get('state')})") for x in e["endpoints"]) or "-"
        ready = str(e["ready"]) + (f" ({e['reason']})" if e["ready"] != "True" and e["reason"] else "")
        rows.append([str(e.get("heartbeat") or e["committed"]), (e.get("appliedCommit") or "-")[:12], ready, eps,
                     e["statusCommit"][:12]])
    if fmt == "markdown":
        lines = [f"**History of {device}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]])
