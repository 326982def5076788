"""A deployment's ``drift`` section with its defaults, and the pure status decisions made from a window.

Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.core import conditions as C, reasons as R
from reconciler.drift import stats

ACTIONS = ("alert", "rollback", "pin")
DEFAULT_WINDOW = 1000
DEFAULT_MIN_SAMPLES = 200
DEFAULT_REPORT_INTERVAL = 300.0
DEFAULT_QUEUE = 1024
# Monitored requests per second at most (after sampleRate): a window of 1000 still fills in seconds on a busy
# endpoint, and the monitor's cost stops growing with the request rate (docs/monitoring.md "Cost").
DEFAULT_MAX_PER_SECOND = 200
DEFAULT_TOP_K = 5
# Degraded: a share of errors above this (with at least MIN_REQUESTS requests in the window).
DEFAULT_MAX_ERROR_RATE = 0.05
MIN_REQUESTS = 20
# Degraded by feedback: labelled rows needed before the accuracy or error thresholds are judged.
DEFAULT_MIN_LABELLED = 100


@dataclass(frozen=True)
class FeedbackSettings:
    """``drift.feedback``: thresholds on the online accuracy (classifiers) or error (regressors) from ground
    truth. None: not judged (the numbers are still reported)."""

    min_accuracy: float | None = None
    max_mae: float | None = None
    max_rmse: float | None = None
    min_labelled: int = DEFAULT_MIN_LABELLED

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> FeedbackSettings:
        d = dict(section or {})

        def num(key: str) -> float | None:
            return float(d[key]) if d.get(key) is not None else None

        return cls(num("minAccuracy"), num("maxMae"), num("maxRmse"), int(d.get("minLabelled", DEFAULT_MIN_LABELLED)))


@dataclass(frozen=True)
class DriftSettings:
    enabled: bool = True
    method: str = "psi"
    window: int = DEFAULT_WINDOW
    half_life: float | None = None  # seconds; set → time-decayed window instead of count-based
    warn: float = stats.DEFAULT_THRESHOLDS["psi"][0]
    alert: float = stats.DEFAULT_THRESHOLDS["psi"][1]
    min_samples: int = DEFAULT_MIN_SAMPLES
    sample_rate: float = 1.0
    max_per_second: int | None = DEFAULT_MAX_PER_SECOND  # None: no limit
    action: str = "alert"
    latency_p99_ms: float | None = None
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    report_interval: float = DEFAULT_REPORT_INTERVAL
    top_k: int = DEFAULT_TOP_K
    queue: int = DEFAULT_QUEUE
    feedback: FeedbackSettings = FeedbackSettings()

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> DriftSettings:
        """From a (schema-valid) deployment ``drift`` section; every field optional."""
        from reconciler.core.units import parse_duration

        d = dict(section or {})
        method = str(d.get("method", "psi"))
        warn_default, alert_default = stats.DEFAULT_THRESHOLDS.get(method, stats.DEFAULT_THRESHOLDS["psi"])
        alert = float(d.get("alert", d.get("psiThreshold", alert_default)) if method == "psi"
                      else d.get("alert", alert_default))
        window = int(d.get("window", DEFAULT_WINDOW))
        return cls(
            enabled=bool(d.get("enabled", True)),
            method=method,
            window=window,
            half_life=parse_duration(d["halfLife"]) if d.get("halfLife") else None,
            warn=float(d.get("warn", min(warn_default, alert))),
            alert=alert,
            min_samples=int(d.get("minSamples", min(DEFAULT_MIN_SAMPLES, window))),
            sample_rate=float(d.get("sampleRate", 1.0)),
            max_per_second=int(d.get("maxPerSecond", DEFAULT_MAX_PER_SECOND)) or None,
            action=str(d.get("action", "alert")),
            latency_p99_ms=float(d["latencyP99Ms"]) if d.get("latencyP99Ms") is not None else None,
            max_error_rate=float(d.get("maxErrorRate", DEFAULT_MAX_ERROR_RATE)),
            report_interval=parse_duration(d["reportInterval"]) if d.get("reportInterval") else DEFAULT_REPORT_INTERVAL,
            top_k=int(d.get("topK", DEFAULT_TOP_K)),
            queue=int(d.get("queueSize", DEFAULT_QUEUE)),
            feedback=FeedbackSettings.from_section(d.get("feedback")),
        )


def encode_counts(counts: Sequence[float]) -> str:
    """Compact bin counts for the status document: ``"12 40 33 0"`` (rounded; decayed counts are fractional)."""
    return " ".join(str(int(round(c))) for c in counts)


def decode_counts(text: str) -> list[float]:
    return [float(x) for x in str(text).split()]


def feedback_breaches(feedback: Mapping[str, Any], s: DriftSettings) -> list[str]:
    """Which ``drift.feedback`` thresholds the online accuracy or error breaks (empty: none), once at least
    ``minLabelled`` rows are labelled. Right labels never breach: accuracy 1.0 and error 0 pass any threshold."""
    f = s.feedback
    labelled = int(feedback.get("labelled") or 0)
    if labelled < f.min_labelled:
        return []
    out = []
    acc, mae, rmse = feedback.get("accuracy"), feedback.get("mae"), feedback.get("rmse")
    if f.min_accuracy is not None and acc is not None and acc < f.min_accuracy:
        out.append(f"accuracy {acc:.3f} < {f.min_accuracy:g} over the last {labelled} labelled rows")
    if f.max_mae is not None and mae is not None and mae > f.max_mae:
        out.append(f"MAE {mae:.4g} > {f.max_mae:g} over the last {labelled} labelled rows")
    if f.max_rmse is not None and rmse is not None and rmse > f.max_rmse:
        out.append(f"RMSE {rmse:.4g} > {f.max_rmse:g} over the last {labelled} labelled rows")
    return out


def degraded_reasons(ops: Mapping[str, Any], s: DriftSettings) -> list[str]:
    """Why an endpoint is degraded (empty: it is not), from its operational signals and the feedback
    thresholds it breaches (``ops["feedback"]["breaches"]``)."""
    out = []
    requests = int(ops.get("requests", 0))
    errors = int(ops.get("errors", 0))
    if requests >= MIN_REQUESTS and errors / requests > s.max_error_rate:
        out.append(f"error rate {errors / requests:.1%} > {s.max_error_rate:.1%}")
    if int(ops.get("nanOutputs", 0)) > 0:
        out.append(f"{ops['nanOutputs']} request(s) with NaN/inf outputs")
    p99 = (ops.get("latencyMs") or {}).get("p99")
    if s.latency_p99_ms is not None and p99 is not None and p99 > s.latency_p99_ms:
        out.append(f"p99 latency {p99:.2f} ms > {s.latency_p99_ms:g} ms")
    out.extend((ops.get("feedback") or {}).get("breaches") or [])
    return out


def device_conditions(endpoints: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool, str, str]]:
    """The device-level ``DriftDetected`` and ``Degraded`` conditions from the endpoints' ``drift`` and
    ``operational`` sections: (type, status, reason, message)."""
    drifting, degraded, judged, operational = [], [], 0, False
    for e in endpoints:
        d = e.get("drift") or {}
        if d.get("level") in ("OK", "Warning", "Alert"):
            judged += 1
        if d.get("level") in ("Warning", "Alert"):
            worst = ", ".join(f"{w['feature']}={w['score']:.3g}" for w in (d.get("worst") or [])[:3])
            drifting.append((d["level"], f"{e['name']}@{e.get('version')}: {d.get('method')} {d.get('score'):.3g} "
                                          f"({d['level'].lower()}; worst {worst})"))
        reasons = (e.get("operational") or {}).get("degraded") or []
        if reasons:
            degraded.append(f"{e['name']}@{e.get('version')}: {'; '.join(reasons)}")
            breaches = ((e.get("operational") or {}).get("feedback") or {}).get("breaches") or []
            operational = operational or any(r not in breaches for r in reasons)
    if drifting:
        alert = any(lv == "Alert" for lv, _ in drifting)
        drift = (C.DRIFT_DETECTED, True, R.DRIFT_ALERT if alert else R.DRIFT_WARNING, "; ".join(m for _, m in drifting))
    else:
        drift = (C.DRIFT_DETECTED, False, R.NO_DRIFT if judged else R.INSUFFICIENT_DATA,
                 f"{judged} endpoint(s) within thresholds" if judged else "no endpoint has a verdict yet")
    deg = ((C.DEGRADED, True, R.OPERATIONAL_SIGNALS if operational else R.FEEDBACK_BELOW_THRESHOLD,
            "; ".join(degraded)) if degraded else (C.DEGRADED, False, R.HEALTHY, ""))
    return [drift, deg]


def rollback_reason(endpoint: Mapping[str, Any]) -> str | None:
    """Why this status endpoint must go back to its previous version (``drift.action: rollback`` and an
    ``Alert`` verdict, with a previous version to go to); None when it must not."""
    d = endpoint.get("drift") or {}
    if d.get("level") != "Alert" or d.get("action") != "rollback" or not endpoint.get("previousVersion"):
        return None
    worst = ", ".join(f"{w['feature']}={w['score']:.3g}" for w in (d.get("worst") or [])[:3])
    return (f"{R.DRIFT_ALERT}: {d.get('method')} {d.get('score'):.3g} >= {d.get('alertAt', d.get('alert')):.3g} "
            f"(worst {worst}); rolled back to "
            f"{endpoint['previousVersion']}")


def pin_reason(serving: Mapping[str, Any] | None, desired_action: str | None) -> str | None:
    """Why a switch of this endpoint away from its serving version must be held (``drift.action: pin``): the
    serving version's last verdict (``serving``: its status endpoint from the previous pass) is ``Alert`` and
    the desired state still says ``pin``. None when the switch may go ahead: no verdict for the serving version
    yet, the verdict cleared, or the action in Git is no longer ``pin``."""
    if serving is None or desired_action != "pin":
        return None
    d = serving.get("drift") or {}
    if d.get("level") != "Alert":
        return None
    worst = ", ".join(f"{w['feature']}={w['score']:.3g}" for w in (d.get("worst") or [])[:3])
    return (f"{R.DRIFT_PINNED}: {serving.get('version')} is pinned, {d.get('method')} {d.get('score'):.3g} >= "
            f"{d.get('alertAt', d.get('alert')):.3g} (worst {worst}); held until the drift clears or drift.action "
            "changes")
