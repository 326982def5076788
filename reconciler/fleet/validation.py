"""Semantic checks beyond the JSON Schemas: references, uniqueness, rollout shape, selectors, conflicts.

Runs on a :class:`FleetRepo` whose manifests already passed their schemas; returns diagnostics (errors and
warnings), never raises. ``tuf_targets`` (the target paths signed in a TUF repository) enables the check that
every variant's files are actually published.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

from reconciler.core.cpuflags import REPORTED_CPU_FLAGS
from reconciler.core.diagnostics import WARNING, Diagnostic
from reconciler.core.redact import userinfo_problem
from reconciler.fleet.repository import FleetRepo, Manifest
from reconciler.fleet.selectors import describe, device_labels, matches, selector_problems
from reconciler.identity import sshsig


def semantic_checks(fleet: FleetRepo, *, tuf_targets: set[str] | None = None) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if fleet.fleet is not None:
        out.extend(_check_fleet(fleet.fleet))
    for model in fleet.models.values():
        out.extend(_check_model(model, tuf_targets))
    for dep in fleet.deployments.values():
        out.extend(_check_deployment(dep, fleet))
    owners: dict[str, list[str]] = {}  # key material -> devices listing it
    for device in fleet.devices.values():
        for line in device.spec.get("statusKeys") or []:
            owners.setdefault("".join(str(line).split()[1:2]), []).append(device.name)
    for device in fleet.devices.values():
        out.extend(_check_status_keys(device, owners))
    out.extend(_check_conflicts(fleet))
    return out


def _check_fleet(fleet: Manifest) -> list[Diagnostic]:
    """A credential in the Fleet's TUF URLs would be in Git, in every device's logs and status: refused."""
    out = []
    tuf = fleet.spec.get("tuf") or {}
    for key in ("metadataUrl", "targetsUrl"):
        problem = userinfo_problem(str(tuf.get(key) or ""))
        if problem:
            out.append(fleet.diag(f"tuf.{key} must not hold credentials: it has {problem}, which would be in Git "
                                  "and in every device's logs and status", "spec", "tuf", key, code="secret",
                                  hint="take it out of the URL; each device names its TUF token file in its agent "
                                  "config (spec.tuf.credentials.bearerTokenFile, docs/hosting.md)"))
    return out


def _check_status_keys(device: Manifest, owners: Mapping[str, list[str]]) -> list[Diagnostic]:
    out = []
    for i, line in enumerate(device.spec.get("statusKeys") or []):
        try:
            blob = sshsig.parse_public_key(str(line))
        except sshsig.SignatureError as exc:
            out.append(device.diag(f"status key {i + 1}: {exc}", "spec", "statusKeys", i,
                                   hint="paste the line `modelfleet agent keygen` printed on the device"))
            continue
        others = [d for d in owners.get(str(line).split()[1], []) if d != device.name]
        if others:
            out.append(device.diag(f"status key {i + 1} ({sshsig.fingerprint(blob)}) is also listed for device "
                                   f"{others[0]!r}: each device needs its own key", "spec", "statusKeys", i))
    return out


def _check_model(m: Manifest, tuf_targets: set[str] | None) -> list[Diagnostic]:
    out = []
    spec = m.spec
    for section in ("inputs", "outputs"):
        seen: set[str] = set()
        for i, t in enumerate(spec.get(section, [])):
            if t["name"] in seen:
                out.append(m.diag(f"duplicate {section[:-1]} tensor name {t['name']!r}", "spec", section, i, "name"))
            seen.add(t["name"])
            rng = t.get("range") or {}
            if "min" in rng and "max" in rng and rng["min"] > rng["max"]:
                out.append(m.diag("range.min is greater than range.max", "spec", section, i, "range"))
    versions: dict[str, int] = {}
    for vi, v in enumerate(spec.get("versions", [])):
        if v["version"] in versions:
            out.append(m.diag(f"duplicate version {v['version']!r} (also entry {versions[v['version']]})",
                              "spec", "versions", vi, "version", code="duplicate"))
        versions.setdefault(v["version"], vi)
        variants: set[str] = set()
        for ri, var in enumerate(v.get("variants", [])):
            where = ("spec", "versions", vi, "variants", ri)
            if var["name"] in variants:
                out.append(m.diag(f"duplicate variant name {var['name']!r} in version {v['version']}", *where, "name",
                                  code="duplicate"))
            variants.add(var["name"])
            targets = var["targets"]
            if var["runtime"] == "openvino" and not var.get("encrypted"):
                has_xml = any(t.endswith(".xml") for t in targets)
                has_bin = any(t.endswith(".bin") for t in targets)
                is_onnx = any(t.endswith(".onnx") for t in targets)
                if not is_onnx and not (has_xml and has_bin):
                    out.append(m.diag("an OpenVINO IR variant needs both the .xml and the .bin target", *where,
                                      "targets", hint="list model.xml and model.bin (or a single .onnx file)"))
            for fi, flag in enumerate((var.get("requires") or {}).get("cpuFlags", [])):
                if flag not in REPORTED_CPU_FLAGS:
                    out.append(m.diag(f"no device reports CPU flag {flag!r}, so this variant never matches one",
                                      *where, "requires", "cpuFlags", fi, severity=WARNING, code="cpuflag",
                                      hint="devices report: " + ", ".join(REPORTED_CPU_FLAGS)))
            if var["runtime"] == "onnxruntime" and len(targets) != 1:
                out.append(m.diag("an onnxruntime variant has exactly one target (the .onnx file)", *where, "targets"))
            if tuf_targets is not None:
                for ti, t in enumerate(targets):
                    if t not in tuf_targets:
                        out.append(m.diag(f"target {t!r} is not signed in the TUF repository", *where, "targets", ti,
                                          hint="publish it with `modelfleet repo add`", code="tuf"))
                probe = (var.get("probe") or {}).get("target")
                if probe and probe not in tuf_targets:
                    out.append(m.diag(f"probe target {probe!r} is not signed in the TUF repository", *where, "probe",
                                      "target", hint="publish it with `modelfleet repo add`", code="tuf"))
        if tuf_targets is not None:
            for section in ("probe", "driftBaseline"):
                t = (v.get(section) or {}).get("target")
                if t and t not in tuf_targets:
                    out.append(m.diag(f"{section} target {t!r} is not signed in the TUF repository",
                                      "spec", "versions", vi, section, "target", code="tuf"))
    return out


def _check_selector(dep: Manifest, selector: Any, *path: Any) -> list[Diagnostic]:
    return [dep.diag(f"selector: {msg}", *path, *sub, code="selector") for sub, msg in selector_problems(selector)]


def _check_deployment(dep: Manifest, fleet: FleetRepo) -> list[Diagnostic]:
    out = []
    spec = dep.spec
    model = fleet.models.get(spec["model"])
    if model is None:
        hint = f"known models: {', '.join(sorted(fleet.models)) or 'none'}"
        out.append(dep.diag(f"unknown model {spec['model']!r}", "spec", "model", hint=hint, code="reference"))
    else:
        known = [v["version"] for v in model.spec.get("versions", [])]
        if spec["version"] not in known:
            out.append(dep.diag(f"model {spec['model']} has no version {spec['version']!r}", "spec", "version",
                                hint=f"published versions: {', '.join(known)}", code="reference"))
        else:
            mv = fleet.model_version(spec["model"], spec["version"]) or {}
            if mv.get("deprecated"):
                out.append(dep.diag(f"version {spec['version']} of {spec['model']} is deprecated", "spec", "version",
                                    severity=WARNING, code="deprecated"))
    out.extend(_check_selector(dep, spec.get("selector"), "spec", "selector"))
    rollout = spec.get("rollout")
    if rollout:
        frm = rollout.get("from")
        if frm is not None:
            if frm == spec["version"]:
                out.append(dep.diag(f"rollout.from equals version ({frm})", "spec", "rollout", "from",
                                    hint="drop the rollout, or set from to the version devices run today"))
            elif model is not None and frm not in [v["version"] for v in model.spec.get("versions", [])]:
                out.append(dep.diag(f"model {spec['model']} has no version {frm!r} (rollout.from)",
                                    "spec", "rollout", "from", code="reference"))
        steps = rollout.get("steps") or []
        last_pct = 0.0
        for i, step in enumerate(steps):
            if "percent" in step:
                if step["percent"] <= last_pct:
                    out.append(dep.diag(f"rollout step {i} ({step['percent']:g}%) does not increase over "
                                        f"the previous percentage ({last_pct:g}%)", "spec", "rollout", "steps", i,
                                        "percent", hint="percentages must strictly increase", code="rollout"))
                last_pct = max(last_pct, float(step["percent"]))
            else:
                out.extend(_check_selector(dep, step.get("selector"), "spec", "rollout", "steps", i, "selector"))
        if steps and steps[-1].get("percent") != 100:
            out.append(dep.diag("the last rollout step must be percent: 100", "spec", "rollout", "steps", len(steps) - 1,
                                hint="append `- percent: 100`", code="rollout"))
        if int(rollout.get("step", 0)) >= len(steps):
            out.append(dep.diag(f"rollout.step {rollout.get('step')} is past the last step (there are {len(steps)})",
                                "spec", "rollout", "step", hint=f"use 0..{len(steps) - 1}", code="rollout"))
        if rollout.get("shadow") is not None and frm is None:
            out.append(dep.diag("rollout.shadow needs rollout.from: the candidate is compared with the version the "
                                "devices serve", "spec", "rollout", "shadow", hint="set rollout.from, or drop shadow",
                                code="rollout"))
        if "shadowPassed" in rollout and int(rollout["shadowPassed"]) > int(rollout.get("step", 0)):
            out.append(dep.diag(f"rollout.shadowPassed {rollout['shadowPassed']} is past rollout.step "
                                f"{rollout.get('step', 0)}", "spec", "rollout", "shadowPassed",
                                hint="`modelfleet rollout promote` writes it: remove it", code="rollout"))
    if model is not None and (spec.get("capture") or {}).get("enabled"):
        out.extend(_check_capture(dep, model))
    if model is not None and (spec.get("runtime") or {}).get("batching"):
        out.extend(_check_batching(dep, model))
    if fleet.devices and not spec.get("suspend"):
        selector = spec.get("selector")
        if not any(matches(selector, device_labels(d.labels, d.spec.get("facts"))) for d in fleet.devices.values()):
            out.append(dep.diag(f"selector {describe(selector)} matches no inventory device", "spec", "selector",
                                severity=WARNING, code="selector"))
    return out


def _check_batching(dep: Manifest, model: Manifest) -> list[Diagnostic]:
    """Batching concatenates requests along the first dimension: the Model must declare it variable (-1).
    Undeclared shapes are checked when the device loads the model."""
    for kind in ("inputs", "outputs"):
        for t in model.spec.get(kind, []):
            shape = t.get("shape") or []
            why = ("is BYTES: string tensors are not batched" if t.get("datatype") == "BYTES"
                   else f"has shape {shape}" if shape and shape[0] != -1 else "")
            if why:
                return [dep.diag(f"batching needs a variable first (batch) dimension in every input and output; "
                                 f"{kind[:-1]} {t['name']!r} of model {model.name} {why}",
                                 "spec", "runtime", "batching", hint="drop runtime.batching, or give the model a "
                                 "dynamic batch dimension (-1)", code="batching")]
    return []


def _check_capture(dep: Manifest, model: Manifest) -> list[Diagnostic]:
    """Every tensor a capture policy names must exist: a misspelt redaction would otherwise redact nothing."""
    cap = dep.spec["capture"]
    tensors = {k: {t["name"]: t for t in model.spec.get(k, [])} for k in ("inputs", "outputs")}
    out = []

    def known(kind: str, name: str, *path: Any) -> bool:
        if name in tensors[kind]:
            return True
        out.append(dep.diag(f"capture names {kind[:-1]} {name!r}, which model {model.name} does not have",
                            "spec", "capture", *path, hint=f"{kind}: {', '.join(tensors[kind]) or 'none'}",
                            code="reference"))
        return False

    for kind in ("inputs", "outputs"):
        for i, name in enumerate((cap.get("keep") or {}).get(kind, [])):
            known(kind, name, "keep", kind, i)
    low = (cap.get("triggers") or {}).get("lowConfidence")
    if low:
        known("outputs", low["output"], "triggers", "lowConfidence", "output")
    for i, r in enumerate(cap.get("redact") or []):
        if not known("inputs", r["input"], "redact", i, "input"):
            continue
        shape = tensors["inputs"][r["input"]].get("shape") or []
        if shape and (len(shape) != 2 or (shape[1] != -1 and max(r["columns"]) >= shape[1])):
            out.append(dep.diag(f"redaction of {r['input']!r} needs a [rows, columns] input with columns "
                                f"{sorted(r['columns'])} (declared shape {shape}); the input would be dropped whole",
                                "spec", "capture", "redact", i, "columns", code="capture"))
    dest = cap.get("destination") or {}
    if dest.get("url") and dest.get("directory"):
        out.append(dep.diag("capture.destination takes a url or a directory, not both", "spec", "capture",
                            "destination", code="capture"))
    if userinfo_problem(str(dest.get("url", ""))):
        out.append(dep.diag("capture.destination.url must not hold credentials (they would be in Git)", "spec",
                            "capture", "destination", "url", hint="put the device's token in its agent config "
                            "(spec.capture.uploadTokenFile)", code="secret"))
    return out


def _selectors_overlap(a: dict[str, Any] | None, b: dict[str, Any] | None, fleet: FleetRepo) -> str | None:
    """Why two selectors statically select a common device, or None when that cannot be seen."""
    if (a or {}) == (b or {}):
        return f"identical selectors ({describe(a)})"
    for d in fleet.devices.values():
        labels = device_labels(d.labels, d.spec.get("facts"))
        if matches(a, labels) and matches(b, labels):
            return f"both select inventory device {d.name}"
    return None


def _check_conflicts(fleet: FleetRepo) -> list[Diagnostic]:
    out = []
    by_endpoint: dict[str, list[Manifest]] = {}
    for dep in fleet.deployments.values():
        by_endpoint.setdefault(dep.spec["serveAs"], []).append(dep)
    for endpoint, deps in by_endpoint.items():
        for a, b in combinations(sorted(deps, key=lambda d: (d.file, d.doc.line)), 2):
            if int(a.spec.get("priority", 0)) != int(b.spec.get("priority", 0)):
                continue
            why = _selectors_overlap(a.spec.get("selector"), b.spec.get("selector"), fleet)
            if why:
                out.append(b.diag(
                    f"conflicts with Deployment/{a.name} ({a.file}:{a.doc.line}): both serve endpoint {endpoint!r} "
                    f"with priority {int(b.spec.get('priority', 0))} and {why}", "spec", "serveAs",
                    hint="give one a higher priority or make the selectors disjoint", code="conflict"))
    return out


def precision_checks(fleet: FleetRepo, found: Mapping[str, tuple[str | None, str]]) -> list[Diagnostic]:
    """Warnings for variants whose declared ``precision`` their model file does not have.

    ``found`` maps a target path to the precision read from the file (or ``None`` and why it could not be
    read); targets missing from ``found`` were not available to read and are not judged.
    """
    out = []
    for m in fleet.models.values():
        for vi, v in enumerate(m.spec.get("versions", [])):
            for ri, var in enumerate(v.get("variants", [])):
                declared = var.get("precision")
                if not declared:
                    continue
                where = ("spec", "versions", vi, "variants", ri, "precision")
                for t in var["targets"]:
                    if t not in found:
                        continue
                    have, why = found[t]
                    if have is None:
                        out.append(m.diag(f"precision {declared} of variant {var['name']} not checked: {t}: {why}",
                                          *where, severity=WARNING, code="precision"))
                    elif have != declared:
                        out.append(m.diag(f"variant {var['name']} declares precision {declared}, but {t} is {have}",
                                          *where, severity=WARNING, code="precision",
                                          hint=f"declare precision: {have}, or publish the {declared} file"))
    return out
