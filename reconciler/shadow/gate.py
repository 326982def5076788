"""Verdicts from the aggregates: the device's own (:func:`device_verdict`) and the rollout gate
``minShadowAgreement`` the operator checks before a promote (:func:`agreement_gate`). Pure: no clock — the time
the comparison has run is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.core import reasons as R
from reconciler.shadow.spec import ON_AGREEMENT, ShadowSettings
from reconciler.shadow.stats import ShadowStats

# The states of an endpoint's ``shadow`` section in the device's status.
LOADING, COMPARING, AGREEING, DISAGREEING = "Loading", "Comparing", "Agreeing", "Disagreeing"
FAILED, REFUSED, SWITCHED = "Failed", "Refused", "Switched"
STATES = (LOADING, COMPARING, AGREEING, DISAGREEING, FAILED, REFUSED, SWITCHED)
#: States in which the device has a comparison the gate can use.
COMPARED = (COMPARING, AGREEING, DISAGREEING, SWITCHED)


@dataclass(frozen=True)
class Verdict:
    state: str
    reason: str = ""
    message: str = ""
    stopped: bool = False  # maxDuration reached: the candidate is unloaded, the numbers are final
    switch: bool = False  # switch: onAgreement and agreeing — the device serves the candidate now

    @property
    def failed(self) -> bool:
        return self.state == FAILED


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def device_verdict(stats: ShadowStats, settings: ShadowSettings, *, elapsed: float) -> Verdict:
    """The device's verdict on its candidate after ``elapsed`` seconds of comparison."""
    if stats.errors:
        return Verdict(FAILED, R.SHADOW_CANDIDATE_ERROR,
                       f"the candidate failed on {stats.errors} of {stats.requests} mirrored request(s): "
                       f"{stats.last_error or 'error'}")
    if stats.nonfinite:
        return Verdict(FAILED, R.SHADOW_NON_FINITE_OUTPUT,
                       f"the candidate returned NaN/Inf on {stats.nonfinite} row(s) where the serving version "
                       f"did not ({stats.samples} compared)")
    stopped = elapsed >= settings.max_duration
    agreement = stats.agreement
    if stats.samples < settings.min_samples:
        msg = f"{stats.samples} of {settings.min_samples} samples compared (agreement so far {_pct(agreement)})"
        if stopped:
            return Verdict(COMPARING, R.SHADOW_MAX_DURATION, f"stopped after maxDuration: {msg}", stopped=True)
        return Verdict(COMPARING, "", msg)
    assert agreement is not None
    reason = R.SHADOW_MAX_DURATION if stopped else ""
    if agreement >= settings.min_agreement:
        return Verdict(AGREEING, reason, f"agreement {_pct(agreement)} >= {settings.min_agreement:g}% over "
                       f"{stats.samples} samples", stopped, switch=settings.switch == ON_AGREEMENT)
    return Verdict(DISAGREEING, reason or R.SHADOW_DISAGREEMENT,
                   f"agreement {_pct(agreement)} < {settings.min_agreement:g}% over {stats.samples} samples"
                   + (f"; last mismatch: {stats.last_mismatch}" if stats.last_mismatch else ""), stopped)


# -- the operator's gate ---------------------------------------------------------------------------------------

def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class GateVerdict:
    value: float | None  # the lowest agreement (percent) among the devices that compared enough
    passed: bool
    message: str
    samples: int = 0
    agreement: float | None = None  # over every compared row of these devices


def agreement_gate(reports: Sequence[tuple[str, Mapping[str, Any]]], *, threshold: float,
                   min_samples: int) -> GateVerdict:
    """``minShadowAgreement`` over the shadow sections (device id, ``shadow``) of a step's comparing devices.

    Passes when every device that compares has at least ``min_samples`` samples and the lowest agreement is at
    least ``threshold`` percent. Devices whose candidate failed or was refused are not here: they are the step's
    failed or pending devices (``maxFailedPercent``, ``minHealthyPercent``).
    """
    comparing = [(dev, s) for dev, s in reports if s.get("state") in COMPARED]
    if not comparing:
        return GateVerdict(None, False, "no device reports a shadow comparison yet")
    total = sum(int(_number(s.get("samples")) or 0) for _, s in comparing)
    agreed = sum(int(_number(s.get("agreed")) or 0) for _, s in comparing)
    overall = 100.0 * agreed / total if total else None
    short = sorted(((int(_number(s.get("samples")) or 0), dev) for dev, s in comparing
                    if (_number(s.get("samples")) or 0) < min_samples))
    enough = [(float(_number(s.get("agreement")) or 0.0), dev, int(_number(s.get("samples")) or 0))
              for dev, s in comparing if (_number(s.get("samples")) or 0) >= min_samples]
    low = min(enough) if enough else None
    value = low[0] if low else None
    below = [dev for a, dev, _ in enough if a < threshold]
    parts = []
    if low is not None:
        parts.append(f"lowest agreement {low[0]:.2f}% ({low[1]}, {low[2]} samples)")
    if below:
        parts.append(f"{len(below)} of {len(comparing)} device(s) below {threshold:g}%")
    if short:
        parts.append(f"{len(short)} of {len(comparing)} device(s) have fewer than minSamples ({min_samples}) "
                     f"compared (fewest: {short[0][1]} with {short[0][0]})")
    if overall is not None:
        parts.append(f"{overall:.2f}% over {total} samples of {len(comparing)} device(s)")
    passed = not short and not below and value is not None
    return GateVerdict(value, passed, "; ".join(parts), total, overall)
