"""The agent's state journal and its failure memory.

Workflow: the agent loads the journal at start (``Journal.load``) to serve the last good models before it touches
the network; after every pass that changed something it saves the whole journal atomically (temp + fsync +
rename, :mod:`reconciler.core.fsutil`), so ``kill -9`` or power loss leaves the previous or the next journal, never a
mix. The journal records the applied commit, for each endpoint the active and previous version (with the target
digests needed to reload them offline from the store), and the failure memory.

Failure memory is pure logic (no I/O): a (commit, endpoint, digest) triple that failed its health check is held
back until the desired state changes or a bounded exponential backoff expires, so the agent never loops
apply → rollback → apply on every poll.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.conditions import isoformat, parse_time
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.redact import redact_tree

JOURNAL_FORMAT = 1
JOURNAL_FILE = "journal.json"

# Failure backoff: 5 min, 10 min, 20 min, … capped at 6 h (bounded: a failed model is retried eventually, in
# case the failure was environmental, e.g. memory pressure during the health check).
FAILURE_BACKOFF_BASE = 300.0
FAILURE_BACKOFF_MAX = 6 * 3600.0
MAX_FAILURES = 64
MAX_ATTEMPTS = 5


class JournalError(Exception):
    """The journal file exists but cannot be read (corrupt beyond the atomic-write guarantee)."""


@dataclass
class TargetRecord:
    """One verified target in the local store: enough to reload it without the network."""

    path: str
    digest: str
    length: int
    encrypted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "length": self.length, "encrypted": self.encrypted}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetRecord:
        return cls(str(d["path"]), str(d["digest"]), int(d.get("length", 0)), bool(d.get("encrypted", False)))


@dataclass
class EndpointRecord:
    """A version an endpoint served (active) or keeps for rollback (previous)."""

    name: str
    deployment: str
    model: str
    version: str
    variant: str
    runtime: str
    targets: list[TargetRecord]
    commit: str | None = None
    probe: TargetRecord | None = None
    spec: dict[str, Any] = field(default_factory=dict)  # the DesiredEndpoint fields needed to rebuild it

    @property
    def digest(self) -> str:
        """sha256 of the primary model file (the first target)."""
        return self.targets[0].digest if self.targets else ""

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON data (``dataclasses.asdict`` without its deep copy: the journal is saved several
        times per pass, and the copy was most of the cost)."""
        return {"name": self.name, "deployment": self.deployment, "model": self.model, "version": self.version,
                "variant": self.variant, "runtime": self.runtime, "targets": [t.to_dict() for t in self.targets],
                "commit": self.commit, "probe": self.probe.to_dict() if self.probe is not None else None,
                "spec": self.spec}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndpointRecord:
        probe = d.get("probe")
        return cls(
            name=str(d["name"]),
            deployment=str(d.get("deployment", "")),
            model=str(d.get("model", "")),
            version=str(d.get("version", "")),
            variant=str(d.get("variant", "")),
            runtime=str(d.get("runtime", "")),
            targets=[TargetRecord.from_dict(t) for t in d.get("targets", [])],
            commit=d.get("commit"),
            probe=TargetRecord.from_dict(probe) if probe else None,
            spec=dict(d.get("spec") or {}),
        )


@dataclass
class EndpointState:
    active: EndpointRecord | None = None
    previous: EndpointRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.to_dict() if self.active else None,
            "previous": self.previous.to_dict() if self.previous else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndpointState:
        a, p = d.get("active"), d.get("previous")
        return cls(EndpointRecord.from_dict(a) if a else None, EndpointRecord.from_dict(p) if p else None)


@dataclass(frozen=True)
class Failure:
    """One held-back (commit, endpoint, digest) triple."""

    commit: str
    endpoint: str
    digest: str
    version: str
    reason: str
    failed_at: str
    retry_after: str
    count: int = 1

    def to_status(self) -> dict[str, Any]:
        """The DeviceStatus ``failures[]`` item."""
        return {
            "commit": self.commit,
            "endpoint": self.endpoint,
            "digest": self.digest,
            "version": self.version,
            "reason": self.reason[:1024],
            "failedAt": self.failed_at,
            "retryAfter": self.retry_after,
            "count": self.count,
        }

    @classmethod
    def from_status(cls, d: dict[str, Any]) -> Failure:
        return cls(
            commit=str(d["commit"]),
            endpoint=str(d["endpoint"]),
            digest=str(d["digest"]),
            version=str(d.get("version", "")),
            reason=str(d.get("reason", "")),
            failed_at=str(d["failedAt"]),
            retry_after=str(d["retryAfter"]),
            count=int(d.get("count", 1)),
        )


# --- failure memory: pure functions ------------------------------------------------------------------------


def failure_backoff(count: int, base: float = FAILURE_BACKOFF_BASE, cap: float = FAILURE_BACKOFF_MAX) -> float:
    """Seconds before the ``count``-th failure of the same triple may be retried: base·2^(count-1), capped."""
    return min(cap, base * (2 ** max(0, min(count - 1, 30))))


def find_failure(failures: list[Failure], commit: str | None, endpoint: str, digest: str) -> Failure | None:
    for f in failures:
        if f.commit == (commit or "") and f.endpoint == endpoint and f.digest == digest:
            return f
    return None


def blocking_failure(
    failures: list[Failure], commit: str | None, endpoint: str, digest: str, now: _dt.datetime
) -> Failure | None:
    """The failure that holds this triple back at ``now``, or None if the agent may try it.

    A new commit or a new digest is a changed desired state: no record matches, so it is tried at once.
    """
    f = find_failure(failures, commit, endpoint, digest)
    if f is None or now >= parse_time(f.retry_after):
        return None
    return f


def record_failure(
    failures: list[Failure],
    commit: str | None,
    endpoint: str,
    digest: str,
    version: str,
    reason: str,
    now: _dt.datetime,
    base: float = FAILURE_BACKOFF_BASE,
    cap: float = FAILURE_BACKOFF_MAX,
) -> list[Failure]:
    """A new failure list with this triple's failure recorded (count incremented if it failed before)."""
    old = find_failure(failures, commit, endpoint, digest)
    count = old.count + 1 if old else 1
    new = Failure(
        commit=commit or "",
        endpoint=endpoint,
        digest=digest,
        version=version,
        reason=reason,
        failed_at=isoformat(now),
        retry_after=isoformat(now + _dt.timedelta(seconds=failure_backoff(count, base, cap))),
        count=count,
    )
    rest = [f for f in failures if f is not old]
    return ([new] + rest)[:MAX_FAILURES]


def clear_failures(failures: list[Failure], endpoint: str, digest: str | None = None) -> list[Failure]:
    """Forget the endpoint's failures (all, or those of one digest): it now serves successfully."""
    return [f for f in failures if not (f.endpoint == endpoint and (digest is None or f.digest == digest))]


def prune_failures(failures: list[Failure], desired: dict[str, str],
                   also: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset()) -> list[Failure]:
    """Keep only failures of what is still desired (endpoint → digest, and the (endpoint, digest) pairs in
    ``also``: shadow candidates); the rest can never block anything."""
    return [f for f in failures if desired.get(f.endpoint) == f.digest or (f.endpoint, f.digest) in also]


# --- the journal file ---------------------------------------------------------------------------------------


@dataclass
class Journal:
    applied_commit: str | None = None
    attempted_commit: str | None = None
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    #: Shadow evaluation per endpoint (reconciler.agent.shadowing): the candidate's key, when its comparison
    #: started, its final verdict and numbers, and whether the device agreed (``switch: onAgreement``).
    shadows: dict[str, dict[str, Any]] = field(default_factory=dict)
    _saved: dict[str, str] = field(default_factory=dict, repr=False, compare=False)  # path → text last written

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": JOURNAL_FORMAT,
            "appliedCommit": self.applied_commit,
            "attemptedCommit": self.attempted_commit,
            "endpoints": {k: v.to_dict() for k, v in sorted(self.endpoints.items())},
            "failures": [f.to_status() for f in self.failures],
            "attempts": self.attempts[:MAX_ATTEMPTS],
            "conditions": self.conditions,
            **({"shadows": self.shadows} if self.shadows else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Journal:
        if d.get("format") != JOURNAL_FORMAT:
            raise JournalError(f"unsupported journal format {d.get('format')!r}")
        return cls(
            applied_commit=d.get("appliedCommit"),
            attempted_commit=d.get("attemptedCommit"),
            endpoints={k: EndpointState.from_dict(v) for k, v in (d.get("endpoints") or {}).items()},
            failures=[Failure.from_status(f) for f in d.get("failures") or []],
            attempts=list(d.get("attempts") or [])[:MAX_ATTEMPTS],
            conditions=list(d.get("conditions") or []),
            shadows={str(k): dict(v) for k, v in (d.get("shadows") or {}).items() if isinstance(v, dict)},
        )

    def shadow_agreed(self) -> dict[str, str]:
        """Deployment → candidate version this device agreed on in shadow (``switch: onAgreement``)."""
        return {str(r["deployment"]): str(r["version"]) for r in self.shadows.values()
                if r.get("agreed") and r.get("deployment") and r.get("version")}

    def add_attempt(self, attempt: dict[str, Any]) -> None:
        self.attempts = ([attempt] + self.attempts)[:MAX_ATTEMPTS]

    def record_active(self, rec: EndpointRecord) -> None:
        """``rec`` now serves its endpoint; what served before becomes the previous version."""
        st = self.endpoints.setdefault(rec.name, EndpointState())
        if st.active is not None and st.active.digest != rec.digest:
            st.previous = st.active
        st.active = rec

    def referenced_digests(self) -> set[str]:
        """Every store blob the journal may need to serve offline (active and previous, probes included)."""
        out: set[str] = set()
        for st in self.endpoints.values():
            for rec in (st.active, st.previous):
                if rec is None:
                    continue
                out.update(t.digest for t in rec.targets)
                baseline = rec.spec.get("driftBaselineTarget")  # the drift baseline is reloaded offline too
                if isinstance(baseline, dict) and baseline.get("digest"):
                    out.add(str(baseline["digest"]))
                if rec.probe is not None:
                    out.add(rec.probe.digest)
        for shadow in self.shadows.values():  # a shadow candidate's files, while its comparison lasts
            out.update(str(d) for d in shadow.get("digests") or [])
        return out

    @staticmethod
    def path_in(state_dir: str | os.PathLike[str]) -> Path:
        return Path(state_dir) / JOURNAL_FILE

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> Journal:
        """The journal in ``state_dir``; an empty one if there is none yet."""
        path = cls.path_in(state_dir)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalError(f"{path}: unreadable journal: {exc}") from exc

    def save(self, state_dir: str | os.PathLike[str]) -> None:
        path = self.path_in(state_dir)
        # Messages in the journal quote git and TUF errors: redacted again (URL userinfo, Authorization values).
        text = json.dumps(redact_tree(self.to_dict()), sort_keys=True) + "\n"  # no indent: the C encoder, ~10x faster
        if text == self._saved.get(str(path)) and path.exists():
            return  # already durable: an unchanged journal is not rewritten (and fsynced) again
        atomic_write_text(path, text)
        self._saved = {str(path): text}


def record_rollback(journal: Journal, endpoint: str, commit: str | None, reason: str, now: _dt.datetime,
                    state_dir: Path | None = None) -> EndpointRecord | None:
    """The runtime switched ``endpoint`` back to its previous version (e.g. ``drift.action: rollback``):
    swap active/previous in the journal and hold the abandoned version back in the failure memory, so the next
    pass does not apply it again before its backoff ends or the desired state changes. Returns the abandoned
    record (None when there was nothing to roll back to)."""
    st = journal.endpoints.get(endpoint)
    if st is None or st.active is None or st.previous is None:
        return None
    bad = st.active
    st.active, st.previous = st.previous, bad
    journal.failures = record_failure(journal.failures, commit, endpoint, bad.digest, bad.version, reason, now)
    if state_dir is not None:
        journal.save(state_dir)  # the runtime already switched: make it durable before it is reported
    return bad
