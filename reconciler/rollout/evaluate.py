"""The pure core of a rollout: which devices each step targets, what they report, the gates, the phase.

    evaluate(fleet, deployment, devices, step_landed=..., head=..., now=...) -> RolloutStatus

No I/O and no clock: the caller passes the loaded fleet, every device it knows (inventory devices and devices
that only have a status branch, with their latest parsed ``DeviceStatus``), when the current step's commit
landed (from Git history, see :func:`step_landed`) and ``now``.

A targeted device is, for the deployment's endpoint and the rollout's ``version``:

- **failed** — its failure memory holds the version, or the endpoint is ``Failed`` while asking for it
  (a failure is a fact however old the report);
- **unknown** — no status, an unreadable one, or a heartbeat older than ``unknownAfterHeartbeats`` ×
  the fleet's heartbeat interval; unknown devices are left out of every percentage (so they never block a
  step by themselves) and never count as healthy;
- **healthy** — serving the version (state ``Serving``); **updated** — reporting the version in any state;
- **pending** — reporting, but not on the version yet.

With ``rollout.shadow``, the devices the current step newly targets first run ``version`` *beside* ``from``
(:mod:`reconciler.shadow`) until ``rollout.shadowPassed`` is that step; until then they are classified by their
endpoint's ``shadow`` section: **healthy** while the candidate compares (whatever its agreement: that is the
``minShadowAgreement`` gate's business), **failed** when it failed in shadow (raised, NaN, its health check),
**pending** before it runs or when the device refused it (no room). A device that already switched
(``switch: onAgreement``) is classified as serving the version.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.conditions import parse_time
from reconciler.core.units import parse_duration
from reconciler.fleet.desired import rollout_step_of, step_label
from reconciler.fleet.repository import FleetRepo
from reconciler.fleet.selectors import device_labels, matches
from reconciler.shadow import gate as shadow_gate
from reconciler.shadow.spec import AFTER_GATE, DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_SAMPLES, ShadowSettings

DEFAULT_HEARTBEAT = 300.0  # the fleet schema's default heartbeatInterval (5m)

PROGRESSING, READY, FAILED, PAUSED, COMPLETE = "Progressing", "Ready", "Failed", "Paused", "Complete"
DEVICE_STATES = ("healthy", "updated", "failed", "pending", "unknown")


@dataclass(frozen=True)
class Gates:
    """The gates of a rollout with their documented defaults (schemas/deployment.schema.json)."""

    min_reporting: int = 1
    min_healthy_percent: float = 95.0
    max_failed_percent: float = 5.0
    min_soak: float = 0.0  # seconds
    max_drift_score: float | None = None
    unknown_after_heartbeats: float = 3.0
    min_shadow_agreement: float | None = None  # percent; None: the shadow's minAgreement (only with shadow)

    @classmethod
    def from_spec(cls, gates: Mapping[str, Any] | None) -> Gates:
        g = gates or {}
        healthy = g.get("minHealthyPercent", g.get("minReadyPercent", cls.min_healthy_percent))
        return cls(
            min_reporting=int(g.get("minReporting", cls.min_reporting)),
            min_healthy_percent=float(healthy),
            max_failed_percent=float(g.get("maxFailedPercent", cls.max_failed_percent)),
            min_soak=parse_duration(g["minSoak"]) if g.get("minSoak") else 0.0,
            max_drift_score=float(g["maxDriftScore"]) if g.get("maxDriftScore") is not None else None,
            min_shadow_agreement=(float(g["minShadowAgreement"]) if g.get("minShadowAgreement") is not None
                                  else None),
            unknown_after_heartbeats=float(g.get("unknownAfterHeartbeats", cls.unknown_after_heartbeats)),
        )


@dataclass(frozen=True)
class Device:
    """One device as the operator side knows it: labels/facts and its latest status (None: never reported)."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] | None = None
    error: str | None = None  # the status branch exists but could not be read


@dataclass
class DeviceVerdict:
    device: str
    step: int  # first step that includes the device
    state: str  # one of DEVICE_STATES
    version: str | None  # what it reports serving on the endpoint
    heartbeat: str | None
    age_seconds: float | None
    reason: str = ""
    shadow: dict[str, Any] | None = None  # the device's shadow comparison (a shadow step's new devices)


@dataclass
class StepStats:
    index: int
    name: str
    targeted: int = 0  # devices in steps 0..index (cumulative)
    new: int = 0  # devices this step adds
    updated: int = 0
    healthy: int = 0
    failed: int = 0
    pending: int = 0
    unknown: int = 0
    shadowing: int = 0  # devices new in this step reporting a shadow comparison (while the step shadows)
    shadow_samples: int = 0
    shadow_agreed: int = 0

    @property
    def shadow_agreement(self) -> float | None:
        return None if self.shadow_samples == 0 else 100.0 * self.shadow_agreed / self.shadow_samples


@dataclass
class GateResult:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    message: str


@dataclass
class RolloutStatus:
    deployment: str
    model: str
    endpoint: str
    version: str
    from_version: str | None
    step: int
    steps: list[StepStats]
    gates: list[GateResult]
    phase: str
    message: str
    paused: bool
    in_rollout: bool
    head: str | None
    step_commit: str | None
    step_landed: str | None
    seconds_in_step: float | None
    generated: str
    unknown_after_seconds: float
    devices: list[DeviceVerdict]  # the current step's targets
    shadow: dict[str, Any] | None = None  # rollout.shadow as evaluated (None: no shadow)
    shadow_pending: bool = False  # the current step shadows: the next promote ends it (afterGate: shadowPassed)

    @property
    def current(self) -> StepStats:
        return self.steps[self.step]

    @property
    def last_step(self) -> bool:
        return self.step >= len(self.steps) - 1

    def gate(self, name: str) -> GateResult:
        return next(g for g in self.gates if g.name == name)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (docs/rollouts.md documents every field)."""
        def stats(s: StepStats) -> dict[str, Any]:
            out = {"index": s.index, "name": s.name, "targeted": s.targeted, "new": s.new, "updated": s.updated,
                   "healthy": s.healthy, "failed": s.failed, "pending": s.pending, "unknown": s.unknown}
            if self.shadow is not None:
                agreement = s.shadow_agreement
                out["shadow"] = {"devices": s.shadowing, "samples": s.shadow_samples,
                                 "agreement": None if agreement is None else round(agreement, 3)}
            return out

        def device(d: DeviceVerdict) -> dict[str, Any]:
            out = {"device": d.device, "step": d.step, "state": d.state, "version": d.version,
                   "heartbeat": d.heartbeat, "ageSeconds": None if d.age_seconds is None else round(d.age_seconds, 1),
                   "reason": d.reason}
            if d.shadow is not None:
                out["shadow"] = d.shadow
            return out

        extra: dict[str, Any] = {}
        if self.shadow is not None:
            extra["shadow"] = {**self.shadow, "pending": self.shadow_pending}
        return {
            "apiVersion": "modelfleet/v1", "kind": "RolloutStatus",
            "deployment": self.deployment, "model": self.model, "endpoint": self.endpoint,
            "version": self.version, "from": self.from_version, "inRollout": self.in_rollout,
            "step": self.step, "lastStep": self.last_step, "paused": self.paused,
            "phase": self.phase, "message": self.message,
            "head": self.head, "stepCommit": self.step_commit, "stepLanded": self.step_landed,
            "secondsInStep": None if self.seconds_in_step is None else round(self.seconds_in_step, 1),
            "generated": self.generated, "unknownAfterSeconds": self.unknown_after_seconds,
            "steps": [stats(s) for s in self.steps],
            "gates": [{"name": g.name, "value": None if g.value is None else round(g.value, 2),
                       "threshold": g.threshold, "passed": g.passed, "message": g.message} for g in self.gates],
            "devices": [device(d) for d in self.devices], **extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- Git history: when did the current step land? -------------------------------------------------------------

def step_key(spec: Mapping[str, Any] | None) -> str | None:
    """What identifies "the current step" of a deployment spec; pausing or retuning gates does not change it.
    Ending a step's shadow (``shadowPassed``) does: the step's devices then switch, and soak again."""
    if not spec:
        return None
    rollout = spec.get("rollout") or {}
    key: list[Any] = [spec.get("version"), rollout.get("from"), rollout.get("steps"), rollout.get("step", 0),
                      bool(rollout)]
    if "shadowPassed" in rollout:
        key.append(rollout["shadowPassed"])
    return json.dumps(key, sort_keys=True, default=str)


def step_landed(history: Sequence[tuple[str, _dt.datetime, str | None]], current: str | None
                ) -> tuple[str, _dt.datetime] | None:
    """The commit (and its time) that put the current step in place.

    ``history`` lists the commits that touched the deployment, newest first, each with :func:`step_key` of the
    deployment at that commit; the landing commit is the oldest of the newest unbroken run equal to ``current``.
    """
    landed: tuple[str, _dt.datetime] | None = None
    for commit, when, key in history:
        if key != current:
            break
        landed = (commit, when)
    return landed


# -- classification ----------------------------------------------------------------------------------------

def _endpoint_entry(status: Mapping[str, Any], endpoint: str) -> Mapping[str, Any] | None:
    for e in status.get("endpoints") or []:
        if isinstance(e, Mapping) and e.get("name") == endpoint:
            return e
    return None


def _drift_score(entry: Mapping[str, Any] | None) -> float | None:
    """The drift score a device reports for the endpoint (``drift.score``; ``driftScore`` also read), if any."""
    if entry is None:
        return None
    value = entry["drift"].get("score") if isinstance(entry.get("drift"), Mapping) else None
    if value is None:
        value = entry.get("driftScore")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def classify(dev: Device, *, endpoint: str, version: str, now: _dt.datetime, unknown_after: float
             ) -> tuple[str, str | None, str | None, float | None, str]:
    """(state, reported version, heartbeat, age, reason) of one targeted device."""
    if dev.status is None:
        return "unknown", None, None, None, dev.error or "no status reported"
    st = dev.status.get("status") or {}
    hb = st.get("heartbeat") if isinstance(st.get("heartbeat"), str) else None
    age: float | None = None
    if hb is not None:
        try:
            age = max(0.0, (now - parse_time(hb)).total_seconds())
        except ValueError:
            age = None
    entry = _endpoint_entry(st, endpoint)
    reported = None if entry is None or entry.get("version") is None else str(entry.get("version"))
    for f in st.get("failures") or []:
        if isinstance(f, Mapping) and f.get("endpoint") == endpoint and str(f.get("version")) == version:
            return "failed", reported, hb, age, str(f.get("reason") or "failed its health check")[:200]
    if entry is not None and entry.get("state") == "Failed" and str(entry.get("desiredVersion")) == version:
        return "failed", reported, hb, age, str(entry.get("message") or "endpoint Failed")[:200]
    if age is None or age > unknown_after:
        why = "heartbeat unreadable" if age is None else f"last heartbeat {int(age)}s ago"
        return "unknown", reported, hb, age, why
    if reported == version:
        if entry is not None and entry.get("state") == "Serving":
            return "healthy", reported, hb, age, ""
        return "updated", reported, hb, age, f"endpoint {entry.get('state') if entry else '?'}"
    state = entry.get("state") if entry else "absent"
    return "pending", reported, hb, age, f"endpoint {state} at {reported or '-'}"


def shadow_summary(section: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers of a device's ``shadow`` section that ``rollout status`` shows per device."""
    keep = ("version", "state", "reason", "stopped", "samples", "agreed", "agreement", "errors", "nanOutputs",
            "dropped", "mirrored", "memoryMB")
    out = {k: section.get(k) for k in keep if k in section}
    lat = section.get("latencyMs")
    if isinstance(lat, Mapping):
        out["latencyMs"] = {k: lat.get(k) for k in ("p50", "p99", "liveP50", "liveP99") if k in lat}
    return out


def _shadow_reason(sh: Mapping[str, Any]) -> str:
    agreement = sh.get("agreement")
    text = f"shadow {sh.get('state')}: {sh.get('samples', 0)} samples"
    if isinstance(agreement, (int, float)):
        text += f", agreement {agreement:.2f}%"
    mirrored = sh.get("mirrored")
    if isinstance(mirrored, (int, float)) and not isinstance(mirrored, bool):
        # A busy device runs fewer than sampleRate of its requests in shadow: the reason it is short of minSamples.
        text += f", {mirrored:.1f}% of requests mirrored"
    return text


def classify_shadow(dev: Device, *, endpoint: str, version: str, now: _dt.datetime, unknown_after: float
                    ) -> tuple[str, str | None, str | None, float | None, str, dict[str, Any] | None]:
    """Like :func:`classify`, for a device that runs ``version`` in shadow; also its shadow section."""
    state, reported, hb, age, reason = classify(dev, endpoint=endpoint, version=version, now=now,
                                                unknown_after=unknown_after)
    entry = _endpoint_entry((dev.status or {}).get("status") or {}, endpoint) if dev.status else None
    raw = entry.get("shadow") if entry is not None else None
    sh = raw if isinstance(raw, Mapping) and str(raw.get("version")) == version else None
    summary = shadow_summary(sh) if sh is not None else None
    if state in ("failed", "unknown") or reported == version:  # a failure, silence, or switched (onAgreement)
        return state, reported, hb, age, reason, summary
    if sh is None:
        return "pending", reported, hb, age, f"not shadowing {version} yet (endpoint at {reported or '-'})", None
    sstate = sh.get("state")
    why = str(sh.get("message") or sh.get("reason") or "")[:200]
    if sstate == shadow_gate.FAILED:
        return "failed", reported, hb, age, f"failed in shadow: {sh.get('reason')}: {why}"[:200], summary
    if sstate in shadow_gate.COMPARED and entry is not None and entry.get("state") == "Serving":
        return "healthy", reported, hb, age, _shadow_reason(sh), summary
    if sstate == shadow_gate.REFUSED:
        return "pending", reported, hb, age, f"shadow refused: {sh.get('reason')}: {why}"[:200], summary
    return "pending", reported, hb, age, f"shadow {sstate}" + (f": {why}" if why else ""), summary


# -- gates and phase ---------------------------------------------------------------------------------------

def _pct(n: int, d: int) -> float | None:
    return None if d == 0 else 100.0 * n / d


def check_gates(cur: StepStats, gates: Gates, *, seconds_in_step: float | None,
                drift_scores: Sequence[float], shadow: tuple[float, shadow_gate.GateVerdict] | None = None
                ) -> list[GateResult]:
    known = cur.targeted - cur.unknown
    empty = cur.targeted == 0
    out: list[GateResult] = []
    need = min(gates.min_reporting, known if known > 0 else cur.targeted)
    out.append(GateResult("minReporting", float(cur.updated), float(need), empty or cur.updated >= need,
                          "no device targeted" if empty else
                          f"{cur.updated} of {known} reporting devices report the new version (need {need})"))
    healthy = _pct(cur.healthy, known)
    out.append(GateResult("minHealthyPercent", healthy, gates.min_healthy_percent,
                          empty or (healthy is not None and healthy >= gates.min_healthy_percent),
                          f"{cur.healthy} healthy of {known} reporting ({cur.unknown} unknown left out)"))
    failed = _pct(cur.failed, known)
    out.append(GateResult("maxFailedPercent", failed, gates.max_failed_percent,
                          failed is None or failed <= gates.max_failed_percent,
                          f"{cur.failed} failed of {known} reporting"))
    if seconds_in_step is None:
        out.append(GateResult("minSoak", None, gates.min_soak, gates.min_soak == 0,
                              "the step's commit was not found in the history"))
    else:
        out.append(GateResult("minSoak", seconds_in_step, gates.min_soak, seconds_in_step >= gates.min_soak,
                              f"{int(seconds_in_step)}s since the step's commit (need {int(gates.min_soak)}s)"))
    if gates.max_drift_score is not None:
        worst = max(drift_scores) if drift_scores else None
        out.append(GateResult("maxDriftScore", worst, gates.max_drift_score,
                              worst is None or worst <= gates.max_drift_score,
                              "no device reports a drift score" if worst is None else
                              f"highest drift score of {len(drift_scores)} reporting devices"))
    if shadow is not None:
        threshold, verdict = shadow
        out.append(GateResult("minShadowAgreement", verdict.value, threshold, empty or verdict.passed,
                              "no device targeted" if empty else verdict.message))
    return out


@dataclass(frozen=True)
class Where:
    """What the phase message names: the deployment, the current step (of how many) and the versions."""

    deployment: str = "DEPLOYMENT"
    step: int = 0
    steps: Sequence[str] = ("all",)
    version: str = "?"
    from_version: str | None = None


def decide_phase(in_rollout: bool, paused: bool, gates: list[GateResult], where: Where = Where()
                 ) -> tuple[str, str]:
    """The phase and its message; a ``Ready`` message says exactly what the next ``promote`` does."""
    if not in_rollout:
        return COMPLETE, "no rollout in progress: every selected device runs the version"
    failing = [g for g in gates if not g.passed]
    if any(g.name == "maxFailedPercent" for g in failing):
        g = next(g for g in failing if g.name == "maxFailedPercent")
        return FAILED, f"step failed: {g.value:.1f}% failed > maxFailedPercent {g.threshold:g}% ({g.message})"
    if paused:
        return PAUSED, f"paused: `modelfleet rollout resume {where.deployment}` to continue"
    if failing:
        return PROGRESSING, "waiting for " + "; ".join(f"{g.name} ({g.message})" for g in failing)
    promote = f"`modelfleet rollout promote {where.deployment}`"
    if where.step + 1 < len(where.steps):
        nxt = where.step + 1
        return READY, f"all gates pass: {promote} moves to step {nxt} ({where.steps[nxt]})"
    # The last step is promoted once more, deliberately: its gates guard the widest step, and until the rollout
    # completes `abort` can still send every device back to `from`.
    back = f", and `abort` back to {where.from_version} with it" if where.from_version is not None else ""
    return READY, (f"all gates pass at the last step: {promote} completes the rollout ({where.version} on every "
                   f"selected device; the rollout block goes{back})")


def _shadow_config(rollout: Mapping[str, Any], gates: Gates) -> tuple[ShadowSettings, float] | None:
    """The rollout's shadow settings and the ``minShadowAgreement`` threshold (None: no shadow)."""
    if rollout.get("shadow") is None or rollout.get("from") is None:
        return None
    try:
        settings = ShadowSettings.from_section(rollout.get("shadow"))
    except ValueError:
        settings = ShadowSettings(min_samples=DEFAULT_MIN_SAMPLES, min_agreement=DEFAULT_MIN_AGREEMENT)
    threshold = gates.min_shadow_agreement if gates.min_shadow_agreement is not None else settings.min_agreement
    return settings, threshold


# -- the whole evaluation ----------------------------------------------------------------------------------

def fleet_devices(fleet: FleetRepo, statuses: Mapping[str, Mapping[str, Any] | str]) -> list[Device]:
    """The inventory's devices, each with its latest status.

    ``statuses`` maps device id to its parsed (trusted) status document, or to why it cannot be used (unreadable,
    untrusted). Step membership comes from the inventory alone: labels are the Device manifest's, never what a
    status branch claims, and a status branch of a device the inventory does not list is ignored.
    """
    out = []
    for dev_id in sorted(fleet.devices):
        inv = fleet.devices[dev_id]
        raw = statuses.get(dev_id)
        doc = raw if isinstance(raw, Mapping) else None
        facts = dict(inv.spec.get("facts") or {})
        if doc is not None:  # a trusted device's own facts choose its variant; they never choose its step
            reported = (doc.get("status") or {}).get("facts")
            facts.update(reported if isinstance(reported, Mapping) else {})
        out.append(Device(dev_id, dict(inv.labels), facts, doc, raw if isinstance(raw, str) else None))
    return out


def heartbeat_interval(fleet: FleetRepo) -> float:
    text = (fleet.fleet_spec.get("defaults") or {}).get("heartbeatInterval")
    try:
        return parse_duration(text) if text else DEFAULT_HEARTBEAT
    except ValueError:
        return DEFAULT_HEARTBEAT


def evaluate(fleet: FleetRepo, deployment: str, devices: Sequence[Device], *, now: _dt.datetime,
             landed: tuple[str, _dt.datetime] | None = None, head: str | None = None) -> RolloutStatus:
    """The rollout status of ``deployment``; ``KeyError`` if the fleet has no such deployment."""
    dep = fleet.deployments[deployment]
    spec = dep.spec
    version = str(spec["version"])
    rollout = spec.get("rollout") or {}
    in_rollout = bool(rollout)
    steps = rollout.get("steps") or [{"percent": 100, "name": "all"}]
    current = min(int(rollout.get("step", 0)), len(steps) - 1) if in_rollout else 0
    gates = Gates.from_spec(rollout.get("gates"))
    unknown_after = gates.unknown_after_heartbeats * heartbeat_interval(fleet)
    endpoint = spec["serveAs"]
    stats = [StepStats(i, step_label(s)) for i, s in enumerate(steps)]
    verdicts: list[DeviceVerdict] = []
    drift: list[float] = []
    shadow_cfg = _shadow_config(rollout, gates) if in_rollout else None
    shadow_step = shadow_cfg is not None and rollout.get("shadowPassed") != current
    shadow_reports: list[tuple[str, Mapping[str, Any]]] = []
    for dev in devices:
        labels = device_labels(dev.labels, dev.facts)
        if not matches(spec.get("selector"), labels):
            continue
        first = rollout_step_of(rollout, deployment, version, dev.id, labels) if in_rollout else 0
        if first is None:
            continue
        summary = None
        if shadow_step and first == current:
            state, reported, hb, age, reason, summary = classify_shadow(
                dev, endpoint=endpoint, version=version, now=now, unknown_after=unknown_after)
            if summary is not None and state not in ("failed", "unknown"):
                shadow_reports.append((dev.id, summary))
                if summary.get("state") in shadow_gate.COMPARED:
                    stats[first].shadowing += 1
                    stats[first].shadow_samples += int(summary.get("samples") or 0)
                    stats[first].shadow_agreed += int(summary.get("agreed") or 0)
        else:
            state, reported, hb, age, reason = classify(dev, endpoint=endpoint, version=version, now=now,
                                                        unknown_after=unknown_after)
        stats[first].new += 1
        for s in stats[first:]:
            s.targeted += 1
            setattr(s, state, getattr(s, state) + 1)
            if state == "healthy":
                s.updated += 1
        if first <= current:
            verdicts.append(DeviceVerdict(dev.id, first, state, reported, hb, age, reason, summary))
            if state in ("healthy", "updated") and dev.status is not None:
                score = _drift_score(_endpoint_entry(dev.status.get("status") or {}, endpoint))
                if score is not None:
                    drift.append(score)
    seconds = None if landed is None else max(0.0, (now - landed[1]).total_seconds())
    shadow_verdict = None
    if shadow_step and shadow_cfg is not None:
        settings, threshold = shadow_cfg
        shadow_verdict = (threshold, shadow_gate.agreement_gate(shadow_reports, threshold=threshold,
                                                                min_samples=settings.min_samples))
    results = check_gates(stats[current], gates, seconds_in_step=seconds, drift_scores=drift, shadow=shadow_verdict)
    paused = bool(rollout.get("paused", False))
    phase, message = decide_phase(in_rollout, paused, results, Where(
        deployment, current, [s.name for s in stats], version,
        None if rollout.get("from") is None else str(rollout["from"])))
    shadow_doc = None
    if shadow_cfg is not None:
        settings, threshold = shadow_cfg
        shadow_doc = {"switch": settings.switch, "sampleRate": settings.sample_rate,
                      "minSamples": settings.min_samples, "minAgreement": threshold,
                      "passed": rollout.get("shadowPassed"), "stepShadows": shadow_step}
        if shadow_step and phase == READY:
            message += (f" (promote ends the shadow of step {current}: its devices switch to {version})"
                        if settings.switch == AFTER_GATE else "")
    return RolloutStatus(
        deployment=deployment, model=str(spec["model"]), endpoint=endpoint, version=version,
        from_version=None if rollout.get("from") is None else str(rollout["from"]), step=current, steps=stats,
        gates=results, phase=phase, message=message, paused=paused, in_rollout=in_rollout, head=head,
        step_commit=landed[0] if landed else None,
        step_landed=landed[1].astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if landed else None,
        seconds_in_step=seconds, generated=now.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        unknown_after_seconds=unknown_after, devices=sorted(verdicts, key=lambda v: (v.step, v.device)),
        shadow=shadow_doc,
        shadow_pending=shadow_step and shadow_cfg is not None and shadow_cfg[0].switch == AFTER_GATE,
    )
