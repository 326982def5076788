"""Label selectors with Kubernetes semantics, and the labels a device presents to them.

A device's selectable labels are its inventory labels, overlaid with its agent's local labels, plus its
reported hardware facts flattened to strings (``hw.arch: x86_64``, ``hw.memoryMB: "4096"``,
``hw.cpuFlags.avx2: "true"``). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def facts_to_labels(facts: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in facts.items():
        if isinstance(value, (list, tuple, set)):
            for item in value:
                out[f"{key}.{item}"] = "true"
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif value is not None:
            out[key] = str(value)
    return out


def device_labels(labels: Mapping[str, str], facts: Mapping[str, Any] | None = None) -> dict[str, str]:
    merged = facts_to_labels(facts or {})
    merged.update(labels)
    return merged


def selector_problems(selector: Mapping[str, Any] | None) -> list[tuple[tuple[Any, ...], str]]:
    """Semantic errors the schema cannot express: (path inside the selector, message)."""
    problems = []
    for i, req in enumerate((selector or {}).get("matchExpressions", []) or []):
        op, values = req.get("operator"), req.get("values")
        if op in ("In", "NotIn") and not values:
            problems.append((("matchExpressions", i), f"operator {op} needs a non-empty 'values' list"))
        if op in ("Exists", "DoesNotExist") and values:
            problems.append((("matchExpressions", i, "values"), f"operator {op} takes no 'values'"))
    return problems


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy ``selector``. ``None`` or ``{}`` matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        present = key in labels
        if op == "In":
            if not present or labels[key] not in values:
                return False
        elif op == "NotIn":
            if present and labels[key] in values:
                return False
        elif op == "Exists":
            if not present:
                return False
        elif op == "DoesNotExist":
            if present:
                return False
        else:
            return False
    return True


def describe(selector: Mapping[str, Any] | None) -> str:
    """``site=berlin,ring in (canary,beta),!legacy`` — kubectl's notation."""
    if not selector:
        return "<all devices>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for req in selector.get("matchExpressions") or []:
        k, op, vals = req["key"], req["operator"], ",".join(req.get("values") or [])
        parts.append({"In": f"{k} in ({vals})", "NotIn": f"{k} notin ({vals})", "Exists": k,
                      "DoesNotExist": f"!{k}"}[op])
    return ",".join(parts)
