"""``simulate --until CONDITION``: when a simulation has reached what the operator waits for (pure).

A condition is read from the report line the run prints (:meth:`reconciler.simulate.fleet.Simulation.report`,
summed over processes), so what ends the run is exactly what the last line shows:

- ``converged``: every online device's last pass converged and its newest status is on the Git server
  (``converged`` and ``statusInSync`` equal the online devices; without status, the first alone);
- ``serving:VERSION[:PERCENT]``: at least PERCENT % (default 100) of the simulated devices serve VERSION;
- ``reported:VERSION[:PERCENT]``: the same among devices whose newest status is on the Git server (``reported``,
  what the rollout gates read).

PERCENT counts every simulated device, offline ones included (they never serve: with ``--offline-share 0.2``,
``serving:1.1.0:80`` is everything the online devices can reach). ``PERCENT`` may end in ``%``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("converged", "serving", "reported")


@dataclass(frozen=True)
class Until:
    kind: str  # converged | serving | reported
    version: str | None = None
    percent: float = 100.0

    def __str__(self) -> str:
        if self.kind == "converged":
            return "converged"
        return f"{self.kind}:{self.version}:{self.percent:g}%"

    def holds(self, report: Mapping[str, Any], *, status: bool = True) -> bool:
        """Whether ``report`` meets the condition (``status``: the devices push status)."""
        devices = int(report.get("devices", 0))
        if self.kind == "converged":
            online = devices - int(report.get("offline", 0))
            if int(report.get("converged", 0)) < online:
                return False
            return not status or int(report.get("statusInSync", 0)) >= online
        need = math.ceil(self.percent / 100.0 * devices - 1e-9)
        counts = report.get("versions" if self.kind == "serving" else "reported") or {}
        return int(counts.get(self.version, 0)) >= max(1, need)


def parse_until(text: str) -> Until:
    """The condition ``text`` names; ``ValueError`` saying what is expected."""
    raw = text.strip()
    if raw == "converged":
        return Until("converged")
    kind, sep, rest = raw.partition(":")
    if kind not in ("serving", "reported") or not sep or not rest:
        raise ValueError(f"{text!r}: expected converged, serving:VERSION[:PERCENT] or reported:VERSION[:PERCENT]")
    version, _, pct = rest.partition(":")
    if not version:
        raise ValueError(f"{text!r}: no version")
    percent = 100.0
    if pct:
        try:
            percent = float(pct.removesuffix("%"))
        except ValueError:
            raise ValueError(f"{text!r}: {pct!r} is not a percentage") from None
        if not 0 < percent <= 100:
            raise ValueError(f"{text!r}: the percentage must be above 0 and at most 100")
    return Until(kind, version, percent)


def all_hold(conditions: list[Until], report: Mapping[str, Any], *, status: bool = True) -> bool:
    return bool(conditions) and all(c.holds(report, status=status) for c in conditions)
