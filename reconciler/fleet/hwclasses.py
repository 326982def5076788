"""Hardware classes of a fleet: inventory devices grouped by ``spec.hardwareClass`` and their facts. Pure.

Used by ``render --classes`` (which variant each class runs) and by ``modelfleet optimize`` (which variants
are worth building). Devices without declared facts are left out: nothing can be said about their hardware.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HardwareClass:
    """A group of devices with the same facts (``hardwareClass`` in the inventory, or a built-in example)."""

    name: str
    facts: Mapping[str, Any]
    devices: tuple[str, ...] = ()


def hardware_classes(devices: Iterable[tuple[str, Mapping[str, Any]]]) -> list[HardwareClass]:
    """Group inventory devices ``(name, spec)`` by ``hardwareClass`` and facts.

    Two devices of one ``hardwareClass`` with different facts become two classes (``name``, ``name#2``), so a
    mislabelled device is still planned with its own hardware.
    """
    groups: dict[tuple[str, str], tuple[str, dict[str, Any], list[str]]] = {}
    for device, spec in sorted(devices, key=lambda d: d[0]):
        facts = dict(spec.get("facts") or {})
        if not facts:
            continue
        label = str(spec.get("hardwareClass") or device)
        key = (label, repr(sorted((k, sorted(v) if isinstance(v, list) else v) for k, v in facts.items())))
        groups.setdefault(key, (label, facts, []))[2].append(device)
    out: list[HardwareClass] = []
    seen: dict[str, int] = {}
    for label, facts, names in groups.values():
        seen[label] = seen.get(label, 0) + 1
        name = label if seen[label] == 1 else f"{label}#{seen[label]}"
        out.append(HardwareClass(name, facts, tuple(names)))
    return out
