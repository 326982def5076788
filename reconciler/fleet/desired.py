"""Desired state: which endpoints one device should serve, computed purely from the fleet and the device.

    desired_state(fleet, DeviceIdentity(id, labels), facts) -> DesiredState

For each deployment whose selector matches the device's labels (inventory + local labels + reported facts):
1. rollout — the device runs ``spec.version`` when it is in one of the steps ``0..rollout.step`` (a percentage
   step holds the devices whose bucket, a hash of deployment/version/device id in [0, 100), is below the
   percentage; a selector step holds the devices it matches), otherwise ``rollout.from`` (or nothing);
2. variant — the first variant, walking runtimes in the deployment's preference order, whose ``requires`` the
   device meets;
3. conflicts — several deployments giving one endpoint: the highest priority wins; a tie is an Issue;
4. shadow — with ``rollout.shadow``, a device the current step newly targets (its first step *is* the current
   step, and ``rollout.shadowPassed`` is not that step) keeps serving ``rollout.from`` and gets the candidate
   ``version`` as the endpoint's ``shadow`` part, to run beside it (:mod:`reconciler.shadow`); under
   ``switch: onAgreement`` a device whose journal says it agreed (``agreed``: deployment → version) serves the
   candidate, its ``shadow`` part marked ``switched``.

Nothing here raises for a device that cannot be served: it becomes an :class:`Issue`. Endpoints named by an
issue must be left as they are by the agent (not pruned). No I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from reconciler.core import reasons as R
from reconciler.core.extras import missing_runtime
from reconciler.core.units import version_satisfies
from reconciler.fleet.repository import FleetRepo, Manifest
from reconciler.fleet.selectors import device_labels, matches

DEFAULT_RUNTIMES = ("openvino", "onnxruntime")


@dataclass(frozen=True)
class DeviceIdentity:
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class DesiredEndpoint:
    name: str
    deployment: str
    model: str
    version: str
    variant: str
    runtime: str
    targets: list[str]
    precision: str = "fp32"
    encrypted: bool = False
    probe_target: str | None = None
    drift_target: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)
    strategy: str = "availability"
    keep_previous: bool = True
    maintenance_window: dict[str, Any] | None = None
    suspend: bool = False
    threads: int | None = None
    device: str | None = None
    providers: list[str] | None = None
    batching: dict[str, Any] | None = None
    #: Shadow evaluation: the candidate to run beside this (serving) version, see :func:`shadow_part`.
    shadow: dict[str, Any] | None = None
    priority: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Issue:
    endpoint: str
    deployment: str
    reason: str  # CamelCase: NoMatchingVariant, DeploymentConflict, UnknownModelVersion
    message: str


@dataclass
class DesiredState:
    device: str
    endpoints: dict[str, DesiredEndpoint] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def held_endpoints(self) -> set[str]:
        """Endpoints the agent must leave as they are (an issue prevents computing what they should be)."""
        return {i.endpoint for i in self.issues}

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "endpoints": {k: v.to_dict() for k, v in sorted(self.endpoints.items())},
            "issues": [asdict(i) for i in self.issues],
        }


def bucket(deployment: str, version: str, device_id: str) -> float:
    """Deterministic position of a device in [0, 100) for one deployment/version rollout."""
    digest = hashlib.sha256(f"{deployment}\x00{version}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def rollout_step_of(rollout: Mapping[str, Any], deployment: str, version: str, device_id: str,
                    labels: Mapping[str, str]) -> int | None:
    """The first step index (over all steps) that includes the device, or None."""
    b = bucket(deployment, version, device_id)
    for i, step in enumerate(rollout.get("steps") or []):
        if "percent" in step:
            if b < float(step["percent"]):
                return i
        elif matches(step.get("selector"), labels):
            return i
    return None


def shadows_step(rollout: Mapping[str, Any], first: int | None) -> bool:
    """Whether a device whose first step is ``first`` shadows the candidate: ``rollout.shadow`` is set (with a
    ``from`` to serve meanwhile), the device is new in the current step, and that step's shadow has not passed."""
    current = int(rollout.get("step", 0))
    return (rollout.get("shadow") is not None and rollout.get("from") is not None and first == current
            and rollout.get("shadowPassed") != current)


def in_rollout(rollout: Mapping[str, Any], deployment: str, version: str, device_id: str,
               labels: Mapping[str, str]) -> tuple[bool, str]:
    current = int(rollout.get("step", 0))
    steps = rollout.get("steps") or []
    first = rollout_step_of(rollout, deployment, version, device_id, labels)
    if first is not None and first <= current:
        return True, f"in rollout step {first} ({step_label(steps[first])}); current step {current}"
    return False, f"not yet in rollout (current step {current}: {step_label(steps[min(current, len(steps) - 1)])})"


def step_label(step: Mapping[str, Any]) -> str:
    if "percent" in step:
        return step.get("name") or f"{step['percent']:g}%"
    from reconciler.fleet.selectors import describe

    return step.get("name") or describe(step.get("selector"))


def requires_met(requires: Mapping[str, Any] | None, runtime: str, facts: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a device with ``facts`` can run a variant needing ``requires``; if not, why."""
    req = requires or {}
    arch = facts.get("hw.arch")
    if "arch" in req and arch not in req["arch"]:
        return False, f"arch {arch or 'unknown'} not in {req['arch']}"
    flags = set(facts.get("hw.cpuFlags") or [])
    missing = [f for f in req.get("cpuFlags", []) if f not in flags]
    if missing:
        return False, f"missing CPU flags {missing}"
    accels = set(facts.get("hw.accelerators") or []) | set(facts.get("runtime.openvino.devices") or [])
    missing = [a for a in req.get("accelerators", []) if a not in accels]
    if missing:
        return False, f"missing accelerators {missing}"
    if "minMemoryMB" in req:
        mem = facts.get("hw.memoryMB")
        if mem is None or int(mem) < int(req["minMemoryMB"]):
            return False, f"memory {mem if mem is not None else 'unknown'} MB < {req['minMemoryMB']} MB"
    have = facts.get(f"runtime.{runtime}")
    if "runtimeVersion" in req:
        if have is None:
            return False, f"{runtime} version unknown (needs {req['runtimeVersion']})"
        if not version_satisfies(str(have), req["runtimeVersion"]):
            return False, f"{runtime} {have} does not satisfy {req['runtimeVersion']}"
    return True, ""


def runtime_preferences(dep_spec: Mapping[str, Any], fleet_spec: Mapping[str, Any]) -> list[str]:
    prefs = (dep_spec.get("runtime") or {}).get("preferences")
    if not prefs:
        prefs = (fleet_spec.get("defaults") or {}).get("runtimePreference") or list(DEFAULT_RUNTIMES)
    return list(prefs)


def choose_variant(version: Mapping[str, Any], preferences: list[str], facts: Mapping[str, Any]
                   ) -> tuple[dict[str, Any] | None, str]:
    """First variant in preference order the device can run; else (None, why not)."""
    why: list[str] = []
    installed_known = any(k.startswith("runtime.") for k in facts)
    for runtime in preferences:
        if installed_known and f"runtime.{runtime}" not in facts:
            if any(v.get("runtime") == runtime for v in version.get("variants", [])):
                why.append(f"{runtime}: {missing_runtime(runtime)}")
            continue
        for variant in version.get("variants", []):
            if variant.get("runtime") != runtime:
                continue
            ok, reason = requires_met(variant.get("requires"), runtime, facts)
            if ok:
                return dict(variant), ""
            why.append(f"{variant['name']}: {reason}")
    if not why:
        why.append(f"no variant for runtimes {preferences}")
    return None, "; ".join(why)


def runtimes_not_installed(version: Mapping[str, Any], preferences: list[str], facts: Mapping[str, Any]
                           ) -> list[str]:
    """The preferred runtimes this device lacks, when the version's only variants it prefers need them."""
    if not any(k.startswith("runtime.") for k in facts):
        return []
    wanted = {v.get("runtime") for v in version.get("variants", [])} & set(preferences)
    missing = sorted(rt for rt in wanted if f"runtime.{rt}" not in facts)
    return missing if missing and len(missing) == len(wanted) else []


def shadow_part(fleet: FleetRepo, dep: Manifest, version: str, facts: Mapping[str, Any], *,
                switched: bool = False) -> dict[str, Any]:
    """The candidate ``version`` of ``dep`` for this device to run in shadow: its variant, targets and probe, the
    deployment's ``rollout.shadow`` settings, the rollout step; ``problem`` says why it cannot run here."""
    spec = dep.spec
    rollout = spec.get("rollout") or {}
    model = fleet.models.get(spec["model"])
    part: dict[str, Any] = {
        "deployment": dep.name, "version": version, "from": rollout.get("from"), "step": int(rollout.get("step", 0)),
        "settings": dict(rollout.get("shadow") or {}), "task": (model.spec.get("task") if model else None),
        "switched": switched, "variant": None, "runtime": None, "targets": [], "precision": "fp32",
        "encrypted": False, "probe_target": None, "problem": None,
    }
    mv = fleet.model_version(spec["model"], version)
    if mv is None:
        part["problem"] = f"{R.UNKNOWN_MODEL_VERSION}: model {spec['model']} has no version {version}"
        return part
    variant, why_not = choose_variant(mv, runtime_preferences(spec, fleet.fleet_spec), facts)
    if variant is None:
        part["problem"] = f"{R.NO_MATCHING_VARIANT}: no variant of {spec['model']} {version} fits this device: {why_not}"
        return part
    part.update(variant=variant["name"], runtime=variant["runtime"], targets=list(variant["targets"]),
                precision=str(variant.get("precision") or "fp32"), encrypted=bool(variant.get("encrypted", False)),
                probe_target=(variant.get("probe") or mv.get("probe") or {}).get("target"))
    return part


def _candidate(dep: Manifest, fleet: FleetRepo, device: DeviceIdentity, labels: Mapping[str, str],
               facts: Mapping[str, Any], agreed: Mapping[str, str] | None = None) -> DesiredEndpoint | Issue | None:
    spec = dep.spec
    version = spec["version"]
    reason = f"deployment {dep.name}"
    rollout = spec.get("rollout")
    shadow: dict[str, Any] | None = None
    if rollout:
        inside, why = in_rollout(rollout, dep.name, version, device.id, labels)
        if not inside:
            if not rollout.get("from"):
                return None
            version = rollout["from"]
        elif rollout.get("shadow") is not None and shadows_step(
                rollout, rollout_step_of(rollout, dep.name, version, device.id, labels)):
            switched = (agreed or {}).get(dep.name) == str(version)
            shadow = shadow_part(fleet, dep, str(version), facts, switched=switched)
            if not switched:
                version = rollout["from"]
                why += f"; shadowing {shadow['version']} beside {version}"
            else:
                why += "; agreed in shadow (switch: onAgreement)"
        reason += f": {why}"
    mv = fleet.model_version(spec["model"], version)
    if mv is None:
        return Issue(spec["serveAs"], dep.name, "UnknownModelVersion",
                     f"model {spec['model']} has no version {version}")
    preferences = runtime_preferences(spec, fleet.fleet_spec)
    variant, why_not = choose_variant(mv, preferences, facts)
    if variant is None:
        missing = runtimes_not_installed(mv, preferences, facts)
        if missing:
            return Issue(spec["serveAs"], dep.name, R.RUNTIME_NOT_INSTALLED,
                         "; ".join(missing_runtime(rt, f"deployment {dep.name}") for rt in missing))
        return Issue(spec["serveAs"], dep.name, R.NO_MATCHING_VARIANT,
                     f"no variant of {spec['model']} {version} fits this device: {why_not}")
    model_spec = fleet.models[spec["model"]].spec
    update = spec.get("update") or {}
    strategy = update.get("strategy") or (fleet.fleet_spec.get("defaults") or {}).get("updateStrategy") or "availability"
    runtime_cfg = spec.get("runtime") or {}
    return DesiredEndpoint(
        name=spec["serveAs"],
        deployment=dep.name,
        model=spec["model"],
        version=version,
        variant=variant["name"],
        runtime=variant["runtime"],
        targets=list(variant["targets"]),
        precision=str(variant.get("precision") or "fp32"),
        encrypted=bool(variant.get("encrypted", False)),
        probe_target=(variant.get("probe") or mv.get("probe") or {}).get("target"),
        drift_target=(mv.get("driftBaseline") or {}).get("target"),
        inputs=[dict(t) for t in model_spec.get("inputs", [])],
        outputs=[dict(t) for t in model_spec.get("outputs", [])],
        health=dict(spec.get("health") or {}),
        drift=dict(spec.get("drift") or {}),
        capture=dict(spec.get("capture") or {}),
        strategy=strategy,
        keep_previous=bool(update.get("keepPrevious", strategy == "availability")),
        maintenance_window=update.get("maintenanceWindow"),
        suspend=bool(spec.get("suspend", False)),
        threads=runtime_cfg.get("threads"),
        device=runtime_cfg.get("device"),
        providers=runtime_cfg.get("providers"),
        batching=dict(runtime_cfg["batching"]) if runtime_cfg.get("batching") else None,
        shadow=shadow,
        priority=int(spec.get("priority", 0)),
        reason=f"{reason}; variant {variant['name']}",
    )


def desired_state(fleet: FleetRepo, device: DeviceIdentity, facts: Mapping[str, Any] | None = None,
                  agreed: Mapping[str, str] | None = None) -> DesiredState:
    """``agreed``: deployment → candidate version the device agreed on in shadow (``switch: onAgreement``; its
    journal remembers it)."""
    facts = facts or {}
    labels = device_labels(device.labels, facts)
    state = DesiredState(device.id)
    by_endpoint: dict[str, list[DesiredEndpoint | Issue]] = {}
    for dep in sorted(fleet.deployments.values(), key=lambda d: d.name):
        if not matches(dep.spec.get("selector"), labels):
            continue
        cand = _candidate(dep, fleet, device, labels, facts, agreed)
        if cand is not None:
            by_endpoint.setdefault(cand.name if isinstance(cand, DesiredEndpoint) else cand.endpoint, []).append(cand)
    for endpoint, cands in sorted(by_endpoint.items()):
        def prio(c: DesiredEndpoint | Issue) -> int:
            return c.priority if isinstance(c, DesiredEndpoint) else int(fleet.deployments[c.deployment].spec.get("priority", 0))

        top = max(prio(c) for c in cands)
        winners = [c for c in cands if prio(c) == top]
        if len(winners) > 1:
            names = ", ".join(c.deployment for c in winners)
            state.issues.append(Issue(endpoint, winners[0].deployment, "DeploymentConflict",
                                      f"deployments {names} all give endpoint {endpoint} with priority {top}"))
            continue
        win = winners[0]
        if isinstance(win, Issue):
            state.issues.append(win)
        else:
            state.endpoints[endpoint] = win
    return state
