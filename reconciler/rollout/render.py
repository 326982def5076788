"""``rollout status`` output: a terminal table, stable JSON (:meth:`RolloutStatus.to_dict`) or Markdown."""

from __future__ import annotations

from reconciler.core.termsafe import escape
from reconciler.core.units import format_duration
from reconciler.rollout.evaluate import RolloutStatus

MAX_LISTED = 20  # devices named per state in table/markdown output; JSON lists them all


def _num(v: float | None, gate: str) -> str:
    if v is None:
        return "-"
    if gate == "minSoak":
        return format_duration(v) if v >= 1 else "0s"
    if gate in ("minHealthyPercent", "maxFailedPercent"):
        return f"{v:.1f}%"
    if gate == "minShadowAgreement":
        return f"{v:.2f}%"
    return f"{v:g}"


def _headline(s: RolloutStatus) -> list[str]:
    frm = f"{s.from_version} -> " if s.from_version else ""
    if s.in_rollout:
        where = f"step {s.step} of {len(s.steps) - 1} ({s.current.name})"
    else:
        where = "not in rollout"
    lines = [f"Rollout {s.deployment}: {s.model} {frm}{s.version}, {where}, at {(s.head or 'unknown')[:12]}",
             f"Phase: {s.phase} — {s.message}"]
    if s.in_rollout:
        since = "unknown" if s.seconds_in_step is None else format_duration(s.seconds_in_step) if s.seconds_in_step >= 1 else "0s"
        lines.append(f"Step commit: {(s.step_commit or 'not found')[:12]} at {s.step_landed or '-'} ({since} in step)")
    if s.shadow is not None:
        sh = s.shadow
        if sh.get("stepShadows"):
            then = ("promote ends the shadow (shadowPassed)" if sh.get("switch") == "afterGate"
                    else "each device switches itself on agreement")
            lines.append(f"Shadow: step {s.step}'s new devices run {s.version} beside {s.from_version} on "
                         f"{sh.get('sampleRate', 0) * 100:g}% of their requests; {then}")
        else:
            lines.append(f"Shadow: passed at step {sh.get('passed')}; later steps shadow first")
    return lines


STEP_HEADERS = ["STEP", "NAME", "TARGETED", "NEW", "UPDATED", "HEALTHY", "FAILED", "PENDING", "UNKNOWN"]
GATE_HEADERS = ["GATE", "VALUE", "THRESHOLD", "VERDICT", "DETAIL"]


SHADOW_HEADERS = ["SHADOWING", "AGREEMENT"]


def _step_headers(s: RolloutStatus) -> list[str]:
    return STEP_HEADERS + (SHADOW_HEADERS if s.shadow is not None else [])


def _step_rows(s: RolloutStatus) -> list[list[str]]:
    rows = []
    for st in s.steps:
        row = [("> " if st.index == s.step and s.in_rollout else "  ") + str(st.index), st.name, str(st.targeted),
               str(st.new), str(st.updated), str(st.healthy), str(st.failed), str(st.pending), str(st.unknown)]
        if s.shadow is not None:
            agreement = st.shadow_agreement
            row += [str(st.shadowing) if st.shadowing else "-", "-" if agreement is None else f"{agreement:.2f}%"]
        rows.append(row)
    return rows


def _gate_rows(s: RolloutStatus) -> list[list[str]]:
    return [[g.name, _num(g.value, g.name), _num(g.threshold, g.name), "pass" if g.passed else "FAIL", g.message]
            for g in s.gates]


def _device_lines(s: RolloutStatus) -> list[str]:
    out = []
    for state in ("failed", "unknown", "pending", "updated"):
        devs = [d for d in s.devices if d.state == state]
        if not devs:
            continue
        shown = ", ".join(f"{d.device} ({d.reason})" if d.reason else d.device for d in devs[:MAX_LISTED])
        more = f", … {len(devs) - MAX_LISTED} more" if len(devs) > MAX_LISTED else ""
        out.append(f"{state.capitalize()} ({len(devs)}): {shown}{more}")
    shadowing = [d for d in s.devices if d.shadow is not None and d.state not in ("failed", "unknown", "pending")]
    if shadowing:
        def one(d) -> str:  # type: ignore[no-untyped-def]
            sh = d.shadow
            a = sh.get("agreement")
            p99 = (sh.get("latencyMs") or {}).get("p99")
            mirrored = sh.get("mirrored")
            return (f"{d.device} ({sh.get('state')}, {sh.get('samples', 0)} samples"
                    + (f", {a:.2f}%" if isinstance(a, (int, float)) else "")
                    + (f", {mirrored:.1f}% mirrored" if isinstance(mirrored, (int, float)) else "")
                    + (f", p99 {p99:g} ms" if isinstance(p99, (int, float)) else "") + ")")
        shown = ", ".join(one(d) for d in shadowing[:MAX_LISTED])
        more = f", … {len(shadowing) - MAX_LISTED} more" if len(shadowing) > MAX_LISTED else ""
        out.append(f"Shadow ({len(shadowing)}): {shown}{more}")
    return out


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]


def render(s: RolloutStatus, fmt: str = "table") -> str:
    if fmt == "json":
        return s.to_json()
    if fmt == "markdown":
        out = [f"**{_headline(s)[0]}**", "", f"**Phase: {s.phase}** — {s.message}", ""]
        if s.in_rollout:
            out += [line for extra in _headline(s)[2:] for line in (extra, "")]
        headers = _step_headers(s)
        out += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(c.strip().replace("> ", "▶ ") for c in r) + " |" for r in _step_rows(s)]
        out += ["", "| " + " | ".join(GATE_HEADERS) + " |", "|" + "---|" * len(GATE_HEADERS)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in _gate_rows(s)]
        devices = _device_lines(s)
        if devices:
            out += [""] + [f"- {line}" for line in devices]
        return "\n".join(escape(line) for line in out)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    out = _headline(s) + [""] + _table(_step_headers(s), _step_rows(s)) + [""] + _table(GATE_HEADERS, _gate_rows(s))
    devices = _device_lines(s)
    if devices:
        out += [""] + devices
    return "\n".join(escape(line) for line in out)  # device ids and reasons come from status branches
