"""Rendering an optimize outcome: a terminal table, the Markdown a pull request shows, or JSON. Pure."""

from __future__ import annotations

import json
from typing import Any

from reconciler.optimize.budget import format_metric
from reconciler.optimize.pipeline import Outcome, VariantResult


def _ratio(ref: float | None, val: float | None) -> str:
    if not ref or not val:
        return "-"
    return f"{ref / val:.2f}x"


def _accuracy(o: Outcome, r: VariantResult) -> str:
    a = r.agreement
    if a is None:
        return "-"
    if r is o.reference:
        return f"acc {a.accuracy_ref * 100:.2f}%" if a.accuracy_ref is not None else "-"
    if a.task == "classifier":
        text = f"top1 {format_metric('top1', a.top1)}"
        if a.accuracy is not None and a.accuracy_ref is not None:
            text += f", acc {a.accuracy * 100:.2f}% ({(a.accuracy - a.accuracy_ref) * 100:+.2f}pt)"
        return text
    return f"mean_rel {format_metric('mean_rel', a.mean_rel)}, max_abs {format_metric('max_abs', a.max_abs)}"


def rows(o: Outcome) -> list[dict[str, str]]:
    ref = o.reference
    out = []
    for r in [ref, *o.variants]:
        if r.status in ("skipped", "failed"):
            continue
        s, m = r.speed, r.memory
        out.append({
            "variant": r.kind,
            "runtime": r.runtime,
            "precision": r.precision,
            "status": r.status,
            "size MB": f"{r.size / 1e6:.2f}",
            "size vs fp32": _ratio(r.size, ref.size) if r is not ref else "1.00x",
            "p50 ms": f"{s.latency_p50_ms:.3f}" if s else "-",
            "p95 ms": f"{s.latency_p95_ms:.3f}" if s else "-",
            "speed-up p50": _ratio(ref.speed.latency_p50_ms if ref.speed else None, s.latency_p50_ms if s else None),
            f"batch {s.batch if s else ''} /s".replace("  ", " "): f"{s.throughput_per_s:.0f}" if s else "-",
            "load RSS MB": f"{m.load_rss_mb:.1f}" if m else "-",
            "accuracy vs fp32": _accuracy(o, r),
        })
    return out


def _others(o: Outcome) -> list[str]:
    return [f"{r.kind}: {r.status} — {r.reason}" for r in o.variants if r.status != "kept"]


def _routes(o: Outcome) -> list[str]:
    """How each built variant was made, with the routes that failed first (e.g. pre-processing)."""
    out = []
    for r in o.variants:
        if not r.route:
            continue
        line = f"{r.kind}: {r.route}"
        if r.attempts:
            line += f", after {len(r.attempts)} failed attempt(s): " + " | ".join(
                f"{i}. {a.text()}" for i, a in enumerate(r.attempts, 1))
        out.append(line)
    return out


def _header_notes(o: Outcome) -> list[str]:
    notes = [f"note: {n}" for n in o.notes]
    if o.quant:
        notes.append("quantizer options: " + ", ".join(f"{k}={v}" for k, v in o.quant.items()))
    return notes


def _budget(o: Outcome) -> str:
    return ", ".join(f"{k}={format_metric(k, v)}" for k, v in o.budget.items())


def render_table(o: Outcome) -> str:
    table = rows(o)
    lines = [f"{o.model}: {o.task}, {o.samples} samples ({o.calibration} calibration, "
             f"{o.samples - o.calibration} evaluation), budget {_budget(o)}", *_header_notes(o)]
    if table:
        cols = list(table[0])
        widths = {c: max(len(c), *(len(row[c]) for row in table)) for c in cols}
        lines.append("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
        lines += ["  ".join(row[c].ljust(widths[c]) for c in cols).rstrip() for row in table]
    routes = _routes(o)
    if routes:
        lines += ["built by:", *(f"  {x}" for x in routes)]
    lines += _others(o)
    if o.picks:
        lines.append("hardware class -> variant: " + "; ".join(f"{c} -> {v}" for c, v in o.picks.items()))
    return "\n".join(lines) + "\n"


def render_markdown(o: Outcome) -> str:
    table = rows(o)
    lines = [f"### `modelfleet optimize` — {o.model}", "",
             f"{o.task}; {o.samples - o.calibration} evaluation samples ({o.calibration} more kept for "
             f"calibration); accuracy budget {_budget(o)}. Speed measured on the publishing machine.", ""]
    if _header_notes(o):
        lines += [f"- {n}" for n in _header_notes(o)] + [""]
    if table:
        cols = list(table[0])
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        lines += ["| " + " | ".join(row[c] for c in cols) + " |" for row in table]
    routes = _routes(o)
    if routes:
        lines += ["", "Built by:", ""] + [f"- {x}" for x in routes]
    others = _others(o)
    if others:
        lines += ["", "Not shipped:", ""] + [f"- {x}" for x in others]
    if o.picks:
        lines += ["", "| hardware class | runs variant |", "|---|---|"]
        lines += [f"| {c} | {v} |" for c, v in o.picks.items()]
    if o.published:
        lines += ["", f"Signed into the TUF repository: {len(o.published)} targets."]
    return "\n".join(lines) + "\n"


def render_json(o: Outcome) -> str:
    doc: dict[str, Any] = {
        "model": o.model, "task": o.task, "budget": o.budget, "samples": o.samples,
        "calibration": o.calibration, "reference": o.reference.to_dict(),
        "variants": [r.to_dict() for r in o.variants],
        "classes": {c.name: {"facts": dict(c.facts), "devices": list(c.devices)} for c in o.classes},
        "picks": o.picks, "version": o.version, "published": o.published, "notes": o.notes,
        "quantOptions": o.quant,
    }
    return json.dumps(doc, indent=2, default=str) + "\n"


RENDERERS = {"table": render_table, "markdown": render_markdown, "json": render_json}
