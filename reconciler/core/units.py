"""Parsing of the small value formats manifests use: durations (``30s``, ``1h30m``) and version constraints."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """``"1h30m"`` → 5400.0 seconds. Numbers are taken as seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 30s, 5m, 1h30m, 7d)")
    return total


def format_duration(seconds: float) -> str:
    """5400 → ``"1h30m"``; the inverse of :func:`parse_duration` for whole units."""
    seconds = int(round(seconds))
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)


def _version_tuple(v: str) -> tuple[int, ...]:
    nums = re.findall(r"[0-9]+", v.split("-")[0].split("+")[0])
    return tuple(int(n) for n in nums)


def version_satisfies(version: str, constraint: str) -> bool:
    """Whether ``version`` (``2024.3.0``) meets ``constraint`` (``>=2024.0,<2026``). Numeric parts only."""
    have = _version_tuple(version)
    for clause in constraint.split(","):
        clause = clause.strip()
        m = re.match(r"^(>=|<=|==|>|<)?\s*([0-9][0-9.]*)$", clause)
        if not m:
            raise ValueError(f"bad version constraint {clause!r}")
        op, want_s = m.group(1) or ">=", m.group(2)
        want = _version_tuple(want_s)
        n = max(len(have), len(want))
        a = have + (0,) * (n - len(have))
        b = want + (0,) * (n - len(want))
        ok = {">=": a >= b, "<=": a <= b, "==": a == b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True
