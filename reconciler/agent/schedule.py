"""Pure decisions of the agent: when the next pass runs, whether a maintenance window is open, which labels
apply and the one-line state for systemd.

No clock and no randomness inside: the caller passes ``now`` and ``rand``, so every decision is testable.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_ERROR_BACKOFF = 300.0
JITTER = 0.1


def next_delay(interval: float, errors: int, rand: float, jitter: float = JITTER,
               max_backoff: float = MAX_ERROR_BACKOFF) -> float:
    """Seconds until the next pass: the interval after success, doubling per consecutive error up to 10× the
    interval and at most ``max_backoff`` (but never below the interval), times a jitter factor in
    ``[1 - jitter, 1 + jitter]`` (``rand`` in [0, 1))."""
    cap = max(interval, min(max_backoff, interval * 10))
    base = interval if errors <= 0 else min(cap, interval * 2 ** min(errors, 20))
    return max(0.0, base * (1.0 + jitter * (2.0 * rand - 1.0)))


def longest_delay(interval: float, jitter: float = JITTER, max_backoff: float = MAX_ERROR_BACKOFF) -> float:
    """The most :func:`next_delay` ever waits for ``interval``: fully backed off, at the top of the jitter."""
    return max(interval, min(max_backoff, interval * 10)) * (1.0 + jitter)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def window_open(window: Mapping[str, Any] | None, now: _dt.datetime) -> bool:
    """Whether a Deployment maintenance window (``days``, ``start``, ``end``, ``timezone``) is open at ``now``.

    ``end`` earlier than ``start`` spans midnight (the part after midnight belongs to the previous day);
    ``start == end`` is a whole-day window. No window means always open.
    """
    if not window:
        return True
    try:
        tz = ZoneInfo(window.get("timezone") or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local = now.astimezone(tz)
    days = window.get("days") or list(_DAYS)

    def minutes(hhmm: str) -> int:
        h, m = hhmm.split(":")
        return int(h) * 60 + int(m)

    start, end = minutes(window["start"]), minutes(window["end"])
    t = local.hour * 60 + local.minute
    today = _DAYS[local.weekday()]
    yesterday = _DAYS[(local.weekday() - 1) % 7]
    if start == end:
        return today in days
    if start < end:
        return today in days and start <= t < end
    return (today in days and t >= start) or (yesterday in days and t < end)


def merged_labels(inventory: Mapping[str, str], local: Mapping[str, str]) -> dict[str, str]:
    """Inventory labels with the agent's local labels over them."""
    out = dict(inventory)
    out.update(local)
    return out


def summarize(endpoints: list[dict[str, Any]], failed_step: str | None) -> str:
    """The one-line state for systemd ``STATUS=``."""
    serving = sum(1 for e in endpoints if e["state"] == "Serving")
    others = [f"{e['name']}={e['state']}" for e in endpoints if e["state"] != "Serving"]
    line = f"{serving}/{len(endpoints)} endpoints serving"
    if others:
        line += " (" + ", ".join(others[:4]) + ")"
    if failed_step:
        line += f"; step {failed_step} failed"
    return line
