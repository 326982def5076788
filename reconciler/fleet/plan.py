"""``plan``: what a change to the fleet repository does to each device, for pull-request review.

Pure: takes two loaded :class:`FleetRepo` (base and head) and returns a :class:`Plan` listing, per inventory
device, the endpoints added, removed or changed (version/variant), with the reason from the desired-state
computation. Device classes (the label sets selectors name, as a device would present them) are planned too,
so a change that only affects devices missing from the inventory is still visible. Renderers for text,
Markdown (a PR comment) and JSON live here too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from reconciler.fleet.desired import DesiredEndpoint, DesiredState, DeviceIdentity, desired_state
from reconciler.fleet.repository import FleetRepo


@dataclass
class Change:
    device: str
    endpoint: str
    action: str  # add | remove | update | issue
    old: str | None
    new: str | None
    why: str

    @property
    def symbol(self) -> str:
        return {"add": "+", "remove": "-", "update": "~", "issue": "!"}[self.action]


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    devices: int = 0
    classes: int = 0

    @property
    def changed_devices(self) -> int:
        return len({c.device for c in self.changes})

    def counts(self) -> dict[str, int]:
        out = {"add": 0, "remove": 0, "update": 0, "issue": 0}
        for c in self.changes:
            out[c.action] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"devices": self.devices, "deviceClasses": self.classes, "changedDevices": self.changed_devices,
                "counts": self.counts(), "changes": [asdict(c) for c in self.changes]}


def _describe(ep: DesiredEndpoint | None) -> str | None:
    if ep is None:
        return None
    return (f"{ep.model} {ep.version} ({ep.variant}/{ep.runtime})" + (" [suspended]" if ep.suspend else "")
            + _capture_summary(ep.capture))


def _capture_summary(cap: dict[str, Any]) -> str:
    """A data-capture policy in one line, so that a pull request changing what devices capture shows in
    ``plan``; the digest covers every field (a redaction or key change is visible even when the summary is not)."""
    if not cap.get("enabled"):
        return ""
    triggers = ",".join(sorted(cap.get("triggers") or {})) or "none"
    dest = cap.get("destination") or {}
    digest = hashlib.sha256(json.dumps(cap, sort_keys=True).encode()).hexdigest()[:8]
    return (f" [capture {cap.get('campaign', '?')}: sample {cap.get('sampleRate', 0)}, triggers {triggers}, "
            f"{len(cap.get('redact') or [])} redaction(s), {cap.get('retention', '?')}, "
            f"{cap.get('maxBytes', '?')} B -> {dest.get('url') or dest.get('directory') or '?'}; policy {digest}]")


def diff_states(device: str, old: DesiredState, new: DesiredState) -> list[Change]:
    changes = []
    for name in sorted(set(old.endpoints) | set(new.endpoints)):
        a, b = old.endpoints.get(name), new.endpoints.get(name)
        if a is None and b is not None:
            changes.append(Change(device, name, "add", None, _describe(b), b.reason))
        elif b is None and a is not None:
            if name in new.held_endpoints():
                continue
            changes.append(Change(device, name, "remove", _describe(a), None, "no deployment selects this device"))
        elif a is not None and b is not None and _describe(a) != _describe(b):
            changes.append(Change(device, name, "update", _describe(a), _describe(b), b.reason))
    old_issues = {(i.endpoint, i.reason, i.message) for i in old.issues}
    for i in new.issues:
        if (i.endpoint, i.reason, i.message) not in old_issues:
            changes.append(Change(device, i.endpoint, "issue", None, None, f"{i.reason}: {i.message}"))
    return changes


def _device_classes(*fleets: FleetRepo) -> dict[str, dict[str, str]]:
    """Label sets named by selectors' matchLabels / single-value In, not already covered by an inventory device."""
    classes: dict[str, dict[str, str]] = {}
    for fleet in fleets:
        for dep in fleet.deployments.values():
            sels = [dep.spec.get("selector") or {}]
            sels += [s.get("selector") or {} for s in (dep.spec.get("rollout") or {}).get("steps", []) if "selector" in s]
            for sel in sels:
                labels = dict(sel.get("matchLabels") or {})
                for req in sel.get("matchExpressions") or []:
                    if req["operator"] == "In" and len(req.get("values") or []) == 1:
                        labels[req["key"]] = req["values"][0]
                    elif req["operator"] == "Exists":
                        labels[req["key"]] = "true"
                if labels:
                    key = "class:" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
                    classes[key] = labels
    return classes


def make_plan(base: FleetRepo, head: FleetRepo, *, include_classes: bool = True) -> Plan:
    plan = Plan()
    devices = {}
    for fleet in (base, head):
        for name, dev in fleet.devices.items():
            devices[name] = (dev.labels, dev.spec.get("facts") or {})
    for name in sorted(devices):
        labels, facts = devices[name]
        # A device that joins or leaves the inventory is planned with the labels of the side that has it.
        b_dev, h_dev = base.devices.get(name), head.devices.get(name)
        b_labels = (b_dev.labels, b_dev.spec.get("facts") or {}) if b_dev else (labels, facts)
        h_labels = (h_dev.labels, h_dev.spec.get("facts") or {}) if h_dev else (labels, facts)
        old = desired_state(base, DeviceIdentity(name, b_labels[0]), b_labels[1])
        new = desired_state(head, DeviceIdentity(name, h_labels[0]), h_labels[1])
        plan.changes.extend(diff_states(name, old, new))
    plan.devices = len(devices)
    if include_classes:
        inventory_label_sets = [dict(v[0]) for v in devices.values()]
        for cname, labels in sorted(_device_classes(base, head).items()):
            if any(all(d.get(k) == v for k, v in labels.items()) for d in inventory_label_sets):
                continue  # already planned through an inventory device of this class
            old = desired_state(base, DeviceIdentity(cname, labels), {})
            new = desired_state(head, DeviceIdentity(cname, labels), {})
            plan.changes.extend(diff_states(cname, old, new))
            plan.classes += 1
    return plan


def render_text(plan: Plan) -> str:
    if not plan.changes:
        return f"No changes. {plan.devices} devices planned.\n"
    lines = []
    current = None
    for c in plan.changes:
        if c.device != current:
            lines.append(f"{c.device}:")
            current = c.device
        arrow = f"{c.old or '-'} -> {c.new or '-'}" if c.action != "issue" else ""
        lines.append(f"  {c.symbol} {c.endpoint}: {arrow}{'  ' if arrow else ''}({c.why})")
    n = plan.counts()
    lines.append("")
    lines.append(f"Plan: {n['add']} to add, {n['update']} to update, {n['remove']} to remove, {n['issue']} issues "
                 f"on {plan.changed_devices} of {plan.devices} devices"
                 + (f" and {plan.classes} hardware class{'' if plan.classes == 1 else 'es'}" if plan.classes else "")
                 + ".")
    return "\n".join(lines) + "\n"


def _md(s: str | None) -> str:
    return (s or "—").replace("|", "\\|")


def render_markdown(plan: Plan) -> str:
    n = plan.counts()
    head = (f"### modelfleet plan\n\n**{n['add']}** to add, **{n['update']}** to update, **{n['remove']}** to remove, "
            f"**{n['issue']}** issues on **{plan.changed_devices}** of {plan.devices} devices.\n")
    if not plan.changes:
        return head + "\nNo changes.\n"
    rows = ["| | device | endpoint | before | after | why |", "|---|---|---|---|---|---|"]
    for c in plan.changes:
        rows.append(f"| {c.symbol} | `{c.device}` | `{c.endpoint}` | {_md(c.old)} | {_md(c.new)} | {_md(c.why)} |")
    return head + "\n" + "\n".join(rows) + "\n"


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2) + "\n"
