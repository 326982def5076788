"""``modelfleet check``'s output: a table for people, one JSON document for CI (pure: text in, text out).

The table has one row per check (name, status, message) and, under a check that is not ok, its hint after
``→``; then one summary line. Every message passes :func:`reconciler.core.termsafe.escape` (device ids and
server answers are in them); JSON keeps the exact text. ``paint`` colours the status word on a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from reconciler.check.model import ERROR, OK, WARNING, Report
from reconciler.core.termsafe import escape

HEADERS = ("CHECK", "STATUS", "MESSAGE")


def summary(report: Report) -> str:
    n = len(report.checks)
    parts = [f"{report.count(OK)} ok", f"{report.count(WARNING)} warning{'s' if report.count(WARNING) != 1 else ''}",
             f"{report.count(ERROR)} error{'s' if report.count(ERROR) != 1 else ''}"]
    return f"{report.side} side: {n} check{'s' if n != 1 else ''}, " + ", ".join(parts)


def table(report: Report, paint: Callable[[str, str], str] = lambda text, status: text) -> str:
    """The checks as aligned columns; ``paint(text, status)`` may colour the padded status word."""
    rows = [(escape(c.name), c.status, escape(c.message), escape(c.hint)) for c in report.checks]
    w_name = max([len(HEADERS[0]), *(len(r[0]) for r in rows)])
    w_status = max(len(HEADERS[1]), *(len(s) for s in (OK, WARNING, ERROR)))
    out = [f"{HEADERS[0]:<{w_name}}  {HEADERS[1]:<{w_status}}  {HEADERS[2]}"]
    for name, status, message, hint in rows:
        out.append(f"{name:<{w_name}}  {paint(f'{status:<{w_status}}', status)}  {message}".rstrip())
        if hint and status != OK:
            out.append(f"{'':<{w_name}}  {'':<{w_status}}  → {hint}")
    return "\n".join([*out, "", summary(report)])


def as_json(report: Report, *, strict: bool) -> str:
    return json.dumps({
        "side": report.side,
        "passed": not report.failed(strict),
        "strict": strict,
        "summary": {s: report.count(s) for s in (OK, WARNING, ERROR)},
        "checks": [{"name": c.name, "status": c.status, "message": c.message, "hint": c.hint} for c in report.checks],
    }, indent=2)
