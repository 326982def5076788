"""Operator side: drift over time and across the fleet, from the devices' status history. Pure.

:func:`points_from_history` turns status documents into drift :class:`Point` s (one per status commit and
endpoint); :func:`aggregate` takes each device's newest point per deployment and version and merges the bin
counts per site and for the whole fleet — no raw data leaves the devices, the sums of their window counts are
scored against the baseline exactly like one big window. :func:`render` prints a table or JSON. Plots live in
:mod:`~.plots` (matplotlib, an optional extra).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from reconciler.core.conditions import parse_time
from reconciler.core.termsafe import escape
from reconciler.drift import stats
from reconciler.drift.baseline import Baseline
from reconciler.drift.settings import decode_counts


@dataclass
class Point:
    deployment: str
    version: str
    device: str
    site: str
    time: str
    level: str
    score: float | None
    method: str
    samples: float
    warn: float
    alert: float
    min_samples: int
    baseline: str
    worst: list[dict[str, Any]] = field(default_factory=list)
    bins: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    """One line of the report: a device, a site or the whole fleet for one deployment and version."""

    deployment: str
    version: str
    scope: str  # "fleet" | "site=<name>" | "device=<id>"
    devices: int
    samples: float
    level: str
    score: float | None
    method: str
    worst: list[tuple[str, float]]
    merged: bool  # the score comes from merged bin counts (else: the worst device's own score)


def points_from_history(device: str, docs: Iterable[dict[str, Any] | str], *, site_label: str = "site",
                        since: _dt.datetime | None = None, deployment: str | None = None) -> list[Point]:
    """Drift points of one device's status documents (unreadable ones, given as strings, are skipped)."""
    out = []
    for doc in docs:
        if isinstance(doc, str):
            continue
        st = doc.get("status") or {}
        hb = st.get("heartbeat")
        try:
            when = parse_time(hb) if isinstance(hb, str) else None
        except ValueError:
            when = None
        if when is None or (since is not None and when < since):
            continue
        site = str((st.get("labels") or {}).get(site_label, "-"))
        for e in st.get("endpoints") or []:
            d = e.get("drift") if isinstance(e, dict) else None
            if not isinstance(d, dict) or d.get("level") in (None, "Unavailable"):
                continue
            dep = str(e.get("deployment") or e.get("name"))
            if deployment is not None and dep != deployment:
                continue
            score = d.get("score")
            try:  # a device wrote this: one wrongly typed field skips that point, not the report
                out.append(Point(
                    deployment=dep, version=str(e.get("version")), device=device, site=site, time=hb,
                    level=str(d["level"]), score=None if score is None else float(score),
                    method=str(d.get("method", "psi")), samples=float(d.get("samples", 0)),
                    warn=float(d.get("warn", 0.1)), alert=float(d.get("alert", 0.25)),
                    min_samples=int(d.get("minSamples", 1)), baseline=str(d.get("baseline", "")),
                    worst=list(d.get("worst") or []), bins=dict(d.get("bins") or {})))
            except (TypeError, ValueError):
                continue
    return out


def _merged_row(dep: str, version: str, scope: str, pts: Sequence[Point],
                baselines: Mapping[str, Baseline]) -> Row:
    p0 = pts[0]
    samples = sum(p.samples for p in pts)
    base = baselines.get(p0.baseline)
    same = all(p.baseline == p0.baseline for p in pts)
    if base is not None and same:
        # a device with more than 64 features reports the worst 64: merge only what every device reported
        common = set.intersection(*(set(p.bins) for p in pts))
        try:
            merged = stats.merge_counts({f: decode_counts(c) for f, c in p.bins.items() if f in common} for p in pts)
            scores = {f.name: stats.score(p0.method, merged[f.name], f.reference)
                      for f in base.features if f.name in merged and merged[f.name].sum() > 0
                      and merged[f.name].size == f.width}
        except ValueError:
            scores = {}
        if scores:
            warn_at, alert_at = stats.thresholds_at(p0.warn, p0.alert, base.noise_floor(p0.method, samples))
            v = stats.verdict(scores, samples, warn=warn_at, alert=alert_at, min_samples=p0.min_samples)
            return Row(dep, version, scope, len(pts), samples, v.level, v.score, p0.method, list(v.worst), True)
    worst_dev = max(pts, key=lambda p: -1.0 if p.score is None else p.score)
    order = ["Insufficient", "OK", "Warning", "Alert"]
    level = max((p.level for p in pts), key=lambda lv: order.index(lv) if lv in order else -1)
    return Row(dep, version, scope, len(pts), samples, level, worst_dev.score, p0.method,
               [(w["feature"], float(w["score"])) for w in worst_dev.worst], False)


def latest_per_device(points: Iterable[Point]) -> dict[tuple[str, str], list[Point]]:
    """(deployment, version) → each device's newest point."""
    newest: dict[tuple[str, str, str], Point] = {}
    for p in points:
        key = (p.deployment, p.version, p.device)
        if key not in newest or parse_time(p.time) > parse_time(newest[key].time):
            newest[key] = p
    out: dict[tuple[str, str], list[Point]] = {}
    for (dep, ver, _), p in sorted(newest.items()):
        out.setdefault((dep, ver), []).append(p)
    return out


def aggregate(points: Sequence[Point], baselines: Mapping[str, Baseline]) -> list[Row]:
    """Fleet, site and device rows per deployment and version (fleet and sites from merged counts)."""
    rows: list[Row] = []
    for (dep, ver), pts in latest_per_device(points).items():
        rows.append(_merged_row(dep, ver, "fleet", pts, baselines))
        sites: dict[str, list[Point]] = {}
        for p in pts:
            sites.setdefault(p.site, []).append(p)
        if len(sites) > 1 or "-" not in sites:
            rows.extend(_merged_row(dep, ver, f"site={s}", sp, baselines) for s, sp in sorted(sites.items()))
        for p in pts:
            rows.append(Row(dep, ver, f"device={p.device}", 1, p.samples, p.level, p.score, p.method,
                            [(w["feature"], float(w["score"])) for w in p.worst], False))
    return rows


def render(rows: Sequence[Row], points: Sequence[Point], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps({"rows": [asdict(r) for r in rows],
                           "series": [{k: v for k, v in asdict(p).items() if k != "bins"} for p in points]}, indent=2)
    headers = ["DEPLOYMENT", "VERSION", "SCOPE", "DEVICES", "SAMPLES", "LEVEL", "SCORE", "WORST FEATURES"]
    table = [headers]
    for r in rows:
        score = "-" if r.score is None else f"{r.method} {r.score:.3f}" + ("" if r.merged or r.scope.startswith("device")
                                                                            else " (max)")
        worst = ", ".join(f"{f}={s:.3f}" for f, s in r.worst[:3]) or "-"
        table.append([escape(c) for c in (r.deployment, r.version, r.scope, str(r.devices), f"{r.samples:.0f}",
                                           r.level, score, worst)])  # what devices reported, shown not obeyed
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table)
