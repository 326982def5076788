"""Conditions, Flux/Kubernetes style: each reconcile step records one instead of throwing.

A :class:`Condition` says whether something holds (``True``/``False``/``Unknown``), with a CamelCase reason
and a message. :class:`ConditionSet` keeps ``lastTransitionTime`` stable while the status does not change, so a
status file only changes when something actually happened.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Well-known condition types.
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
SOURCE_AVAILABLE = "SourceAvailable"
SOURCE_VERIFIED = "SourceVerified"
MANIFESTS_VALID = "ManifestsValid"
ARTIFACTS_READY = "ArtifactsReady"
APPLIED = "Applied"
STATUS_REPORTED = "StatusReported"  # the device's status push landed (docs/hosting.md)
DRIFT_DETECTED = "DriftDetected"  # an endpoint's inputs/outputs moved away from its drift baseline (reconciler.drift)
DEGRADED = "Degraded"  # an endpoint's error rate, NaN outputs or latency are out of bounds
WORKERS_SERVING = "WorkersServing"  # with serving.workers > 1: every worker process serves (reconciler.serving.workers)


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def isoformat(t: _dt.datetime) -> str:
    """RFC 3339 with a ``Z``, second precision: ``2026-11-24T10:00:00Z``."""
    return t.astimezone(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""
    observed_commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "status": self.status}
        if self.reason:
            d["reason"] = self.reason
        if self.message:
            d["message"] = self.message[:2048]
        if self.last_transition_time:
            d["lastTransitionTime"] = self.last_transition_time
        if self.observed_commit:
            d["observedCommit"] = self.observed_commit
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Condition:
        return cls(
            type=d["type"],
            status=d["status"],
            reason=d.get("reason", ""),
            message=d.get("message", ""),
            last_transition_time=d.get("lastTransitionTime", ""),
            observed_commit=d.get("observedCommit"),
        )


@dataclass
class ConditionSet:
    """Ordered set of conditions keyed by type."""

    items: dict[str, Condition] = field(default_factory=dict)
    clock: Callable[[], _dt.datetime] = utcnow

    def set(
        self, type_: str, status: bool | str, reason: str = "", message: str = "", commit: str | None = None
    ) -> Condition:
        st = {True: "True", False: "False"}.get(status, status) if isinstance(status, bool) else status
        old = self.items.get(type_)
        ltt = old.last_transition_time if old is not None and old.status == st else isoformat(self.clock())
        cond = Condition(type_, st, reason, message, ltt, commit)
        self.items[type_] = cond
        return cond

    def get(self, type_: str) -> Condition | None:
        return self.items.get(type_)

    def is_true(self, type_: str) -> bool:
        c = self.items.get(type_)
        return c is not None and c.status == "True"

    def to_list(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.items.values()]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]], clock: Callable[[], _dt.datetime] = utcnow) -> ConditionSet:
        return cls({d["type"]: Condition.from_dict(d) for d in items}, clock)
