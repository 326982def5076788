"""Operator side: the whole fleet's state as a report, from the status records :mod:`~.statusrepo` read.

:func:`fleet_report` reads (one fetch, every branch judged and parsed: :meth:`~.statusrepo.StatusRepo.read`);
the pure functions (:func:`device_row`, :func:`summarize`, :func:`build_report`, :func:`render`) turn the
records into the table/JSON/Markdown report; they do no I/O and are tested on their own. A device whose status
is untrusted (unsigned, wrongly signed, not in the inventory, rewritten) or unreadable is a row that says so and
why; it is never counted ready or not ready. Every device-sourced string passes
:func:`reconciler.core.termsafe.escape` in the table and Markdown; JSON keeps the exact values.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter as _Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from reconciler.core import conditions as C
from reconciler.core.conditions import isoformat, parse_time
from reconciler.core.termsafe import escape
from reconciler.core.units import format_duration
from reconciler.gitops.statusrepo import FleetRead, StatusRecord, StatusRepo


@dataclass
class EndpointView:
    name: str
    deployment: str | None
    model: str | None
    version: str | None  # what serves now
    state: str
    desired: str | None = None  # what the desired state asks for
    message: str = ""  # why it is not at the desired version

    def describe(self) -> str:
        """``name=model@version``, with what failed next to what still serves."""
        serving = f"{self.name}={self.model or '?'}@{self.version or '-'}"
        if self.state == "Serving":
            return serving
        if self.state == "Failed" and self.version and self.desired and self.desired != self.version:
            return f"{serving} (serving; {self.desired} Failed)"
        if self.state == "Failed" and self.desired:
            return f"{self.name}={self.model or '?'}@{self.desired} (Failed)"
        return f"{serving} ({self.state})"


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
    message: str = ""  # why it is not ready: the failing condition's message
    condition: str = ""  # the failing condition's type (Ready when no other one is False)
    conditions: list[dict[str, str]] = field(default_factory=list)  # every condition: type, status, reason, message
    trust: str = "trusted"  # trusted | unsigned (accepted: requireSignatures false) | untrusted
    trust_reason: str = ""
    trust_message: str = ""


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


def device_row(device: str, status_commit: str, doc: Mapping[str, Any], *, behind: Mapping[str, int | None],
               now: _dt.datetime, stale_after: float) -> DeviceRow:
    """One table row from a parsed status."""
    st = doc.get("status") or {}
    applied = st.get("appliedCommit") if isinstance(st.get("appliedCommit"), str) else None
    ready = next((c for c in st.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"), {})
    failing = failing_condition(st.get("conditions") or []) if ready.get("status") != "True" else None
    why = failing or ready
    eps = [EndpointView(str(e.get("name", "?")), e.get("deployment"), e.get("model"),
                        None if e.get("version") is None else str(e.get("version")), str(e.get("state", "?")),
                        None if e.get("desiredVersion") is None else str(e.get("desiredVersion")),
                        str(e.get("message") or ""))
           for e in st.get("endpoints") or [] if isinstance(e, dict) and e.get("state") != "Removed"]
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
        ready=str(ready.get("status", "Unknown")), reason=str(why.get("reason", "")),
        message=str(why.get("message", "")), condition=str(why.get("type", "")),
        conditions=[{k: str(c.get(k, "")) for k in ("type", "status", "reason", "message")}
                    for c in st.get("conditions") or [] if isinstance(c, dict)],
        endpoints=eps, heartbeat=hb if isinstance(hb, str) else None, age_seconds=age,
        stale=age is None or age > stale_after,
    )


# The conditions a pass sets in order: the first False one is why a device is not ready (Ready's own reason is
# often just NotConverged), as `flux get` shows the failing step rather than the summary.
PASS_ORDER = (C.SOURCE_AVAILABLE, C.SOURCE_VERIFIED, C.MANIFESTS_VALID, C.ARTIFACTS_READY, C.APPLIED,
              C.WORKERS_SERVING)


def failing_condition(conditions: list[Any]) -> dict[str, Any] | None:
    """The first False condition of a pass (pure); None when none is False."""
    by_type = {c.get("type"): c for c in conditions if isinstance(c, dict)}
    for ctype in PASS_ORDER:
        c = by_type.get(ctype)
        if c is not None and c.get("status") == "False":
            return c
    degraded = by_type.get(C.DEGRADED)
    return degraded if degraded is not None and degraded.get("status") == "True" else None


def summarize(rows: list[DeviceRow]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Devices per deployment and model@version, and fleet totals."""
    per: dict[str, _Counter[str]] = {}
    for r in rows:
        for e in r.endpoints:
            key = f"{e.model or e.name}@{e.version or '-'}"
            per.setdefault(e.deployment or "-", _Counter())[key] += 1
    versions = {dep: dict(sorted(c.items())) for dep, c in sorted(per.items())}
    counted = [r for r in rows if r.trust != "untrusted" and r.error is None]
    totals = {
        "devices": len(rows),
        "ready": sum(r.ready == "True" for r in counted),
        "notReady": sum(r.ready != "True" for r in counted),
        "stale": sum(r.stale for r in counted),
        "behind": sum(bool(r.behind) for r in counted),
        "unreadable": sum(r.error is not None and r.trust != "untrusted" for r in rows),
        "untrusted": sum(r.trust == "untrusted" for r in rows),
    }
    return versions, totals


def record_row(rec: StatusRecord, *, behind: Mapping[str, int | None], now: _dt.datetime,
               stale_after: float) -> DeviceRow:
    """One table row from a judged status record: untrusted and unreadable records carry only why."""
    trust = {"trust": rec.trust.label, "trust_reason": rec.trust.reason, "trust_message": rec.trust.message}
    if not rec.trust.trusted:
        return DeviceRow(rec.device, rec.commit, ready="Untrusted", reason=rec.trust.reason, stale=True,
                         message=rec.trust.message, **trust)
    if rec.doc is None:
        return DeviceRow(rec.device, rec.commit, stale=True, error=rec.error or "unreadable", **trust)
    row = device_row(rec.device, rec.commit, rec.doc, behind=behind, now=now, stale_after=stale_after)
    row.trust, row.trust_reason, row.trust_message = trust["trust"], trust["trust_reason"], trust["trust_message"]
    return row


def build_report(branch: str, read: FleetRead, behind: Mapping[str, int | None], *, now: _dt.datetime,
                 stale_after: float) -> FleetReport:
    rows = [record_row(read.records[d], behind=behind, now=now, stale_after=stale_after) for d in sorted(read.records)]
    versions, totals = summarize(rows)
    never = sorted(read.inventory - set(read.records))
    totals["neverReported"] = len(never)
    return FleetReport(branch, read.head, isoformat(now), stale_after, rows, versions, totals, never)


def fleet_report(repo: StatusRepo, *, stale_after: float, now: _dt.datetime | None = None) -> FleetReport:
    """Fetch, read, judge and summarize every status branch of ``repo``."""
    read = repo.read()
    applied = {r.doc["status"]["appliedCommit"] for r in read.records.values()
               if r.usable and r.doc is not None and isinstance(r.doc["status"].get("appliedCommit"), str)}
    return build_report(repo.branch, read, repo.behind(applied, read.head),
                        now=now or _dt.datetime.now(_dt.timezone.utc), stale_after=stale_after)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds) if seconds >= 1 else "0s"


def _behind(r: DeviceRow) -> str:
    if r.applied is None:
        return "-"
    if r.behind is None:
        return "unknown"
    return "up to date" if r.behind == 0 else f"behind {r.behind}"


def _endpoints(r: DeviceRow) -> str:
    if r.trust == "untrusted":
        return f"(untrusted: {r.trust_message})"
    if r.error:
        return f"(unreadable: {r.error})"
    return ", ".join(e.describe() for e in r.endpoints) or "-"


def render_device(report: FleetReport, device: str) -> str:
    """Everything one device reports, for a person: trust, conditions and endpoints with their messages."""
    row = next((r for r in report.rows if r.device == device), None)
    if row is None:
        where = "in the inventory but has never reported" if device in report.never_reported else "has no status"
        return escape(f"{device} {where}")
    lines = [f"Device {row.device}", f"  status commit  {row.status_commit[:12]} ({row.trust}: {row.trust_reason})"]
    if row.trust == "untrusted":
        return "\n".join(escape(x) for x in [*lines, f"  untrusted      {row.trust_message}"])
    if row.error:
        return "\n".join(escape(x) for x in [*lines, f"  unreadable     {row.error}"])
    lines += [f"  applied        {row.applied or '-'} ({_behind(row)})",
              f"  heartbeat      {row.heartbeat or '-'} ({_age(row.age_seconds)} ago{', STALE' if row.stale else ''})",
              "", "  CONDITION        STATUS   REASON / MESSAGE"]
    for c in row.conditions:
        lines.append(f"  {c['type']:<16} {c['status']:<8} {c['reason']}" + (f": {c['message']}" if c["message"] else ""))
    lines += ["", "  ENDPOINTS"]
    for e in row.endpoints:
        lines.append(f"  {e.describe()}" + (f": {e.message}" if e.message else ""))
    return "\n".join(escape(x) for x in lines)


def _why_lines(report: FleetReport, limit: int = 50) -> list[str]:
    """One line per device that is not ready: the failing condition, its reason and message (escaped, cut)."""
    out = []
    for r in report.rows:
        if r.trust == "untrusted" or r.error or r.ready == "True" or not (r.reason or r.message):
            continue
        text = f"{r.device}: {r.condition or 'Ready'} {r.reason}: {r.message}".rstrip(": ")
        out.append(escape(text if len(text) <= 300 else text[:299] + "…"))
    if len(out) > limit:
        out = out[:limit] + [f"… {len(out) - limit} more (--format json has them all)"]
    return out


def _table_rows(report: FleetReport) -> list[list[str]]:
    """The table's cells, every one escaped: most of them come from what devices wrote."""
    return [[escape(c) for c in (
        r.device, (r.applied or "-")[:12], _behind(r),
        r.ready + (f" ({r.reason})" if r.ready != "True" and r.reason else ""),
        _endpoints(r), "-" if r.trust == "untrusted" else _age(r.age_seconds) + (" STALE" if r.stale else ""))]
        for r in report.rows]


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
              f"{t['behind']} behind {report.branch}"
              + (f", {t['untrusted']} untrusted (not counted)" if t.get("untrusted") else ""))
    if not report.rows:
        totals = "no device has reported yet"
    never = (f"never reported ({len(report.never_reported)} in the inventory): "
             + ", ".join(escape(d) for d in report.never_reported[:50]) + (" …" if len(report.never_reported) > 50 else "")
             if report.never_reported else "")
    if never:
        totals += "\n" + never
    summary = [(escape(dep), escape(ver), n) for dep, vs in report.versions.items() for ver, n in vs.items()]
    if fmt == "markdown":
        out = [f"**Fleet status** — {head}, generated {report.generated}", "",
               "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        why = _why_lines(report)
        out += ["", totals] + (["", "Not ready:", ""] + ["- " + w.replace("|", "\\|") for w in why] if why else [])
        out += ["", "| DEPLOYMENT | MODEL@VERSION | DEVICES |", "|---|---|---|"]
        out += [f"| {d} | {v} | {n} |" for d, v, n in summary]
        return "\n".join(out)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADERS)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [f"Fleet status: {head}", line(HEADERS)] + [line(r) for r in rows] + ["", totals]
    why = _why_lines(report)
    if why:
        out += ["", "Not ready:"] + [f"  {w}" for w in why]
    if summary:
        sw = [max(len("DEPLOYMENT"), *(len(d) for d, _, _ in summary)),
              max(len("MODEL@VERSION"), *(len(v) for _, v, _ in summary))]
        out += ["", f"{'DEPLOYMENT'.ljust(sw[0])}  {'MODEL@VERSION'.ljust(sw[1])}  DEVICES"]
        out += [f"{d.ljust(sw[0])}  {v.ljust(sw[1])}  {n}" for d, v, n in summary]
    return "\n".join(out)


# -- one device's history ------------------------------------------------------------------------------------

def history(repo: StatusRepo, device: str, limit: int = 50) -> list[dict[str, Any]]:
    """The device's status commits, newest first: when, which commit it ran, Ready, endpoint versions, and
    whether the commit is trusted. ``KeyError`` if the device has no status branch."""
    out: list[dict[str, Any]] = []
    for sha, when, doc, trust in repo.history_docs(device, limit):
        entry: dict[str, Any] = {"statusCommit": sha, "committed": when, "trust": trust.label,
                                 "trustReason": trust.reason}
        if isinstance(doc, str):
            entry["error"] = doc
            out.append(entry)
            continue
        st = doc["status"]
        ready = next((c for c in st.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"), {})
        entry.update({
            "heartbeat": st.get("heartbeat"), "appliedCommit": st.get("appliedCommit"),
            "ready": ready.get("status", "Unknown"), "reason": ready.get("reason", ""),
            "message": ready.get("message", ""),
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
            rows.append([e["committed"], "-", "-", f"({e['error']})" if e.get("trust") == "untrusted"
                         else f"(unreadable: {e['error']})", e["statusCommit"][:12]])
            continue
        eps = ", ".join(f"{x['name']}={x.get('model') or '?'}@{x.get('version') or '-'}"
                        + ("" if x.get("state") == "Serving" else f" ({x.get('state')})") for x in e["endpoints"]) or "-"
        ready = str(e["ready"]) + (f" ({e['reason']})" if e["ready"] != "True" and e["reason"] else "")
        rows.append([str(e.get("heartbeat") or e["committed"]), str(e.get("appliedCommit") or "-")[:12], ready, eps,
                     e["statusCommit"][:12]])
    rows = [[escape(c) for c in r] for r in rows]
    device = escape(device)
    if fmt == "markdown":
        lines = [f"**History of {device}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]])
