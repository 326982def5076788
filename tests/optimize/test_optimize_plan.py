"""The pure parts of `modelfleet optimize`: planning from hardware classes, the budget, agreement, the manifest edit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from reconciler.core.errors import UserError
from reconciler.fleet.hwclasses import HardwareClass, hardware_classes
from reconciler.optimize.budget import BudgetError, agreement, over_budget, parse_budget
from reconciler.optimize.manifest import add_version, guess_indent
from reconciler.optimize.plan import (
    DEFAULT_CLASSES,
    KIND_NAMES,
    class_picks,
    manifest_variants,
    plan_kinds,
    superseded,
)

AVX2 = HardwareClass("nuc", {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2"], "runtime.onnxruntime": "1.20"})
VNNI = HardwareClass("xeon", {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2", "avx512_vnni"],
                              "runtime.onnxruntime": "1.20", "runtime.openvino": "2025.1"})
PI4 = HardwareClass("pi4", {"hw.arch": "aarch64", "hw.cpuFlags": ["asimd", "neon"], "runtime.onnxruntime": "1.20"})


def _planned(classes: list[HardwareClass], requested: list[str] | None = None) -> dict[str, tuple[bool, str]]:
    return {p.kind.name: (p.build, p.reason) for p in plan_kinds(classes, requested)}


def test_plan_builds_only_what_some_hardware_class_runs() -> None:
    plan = _planned([AVX2, PI4])
    # No class has VNNI or dot product, none has OpenVINO: only the fp32 fallback is worth building.
    assert [k for k, (build, _) in plan.items() if build] == ["ort-fp32"]
    assert "no hardware class has onnxruntime with x86_64+avx512_vnni" in plan["ort-int8-static"][1]
    assert plan["ov-fp32"][1] == "no hardware class has openvino"
    plan = _planned([AVX2, VNNI])
    assert plan["ort-int8-static"] == (True, "for xeon")
    assert plan["ov-int8"] == (True, "for xeon")
    assert plan["ov-fp16"] == (True, "for xeon")


def test_plan_requested_kinds_override_the_classes() -> None:
    plan = _planned([AVX2], ["ov-int8", "ort-int8-dynamic"])
    assert {k for k, (build, _) in plan.items() if build} == {"ov-int8", "ort-int8-dynamic"}
    assert plan["ort-fp32"] == (False, "not requested (--variants)")


def test_default_classes_plan_every_kind() -> None:
    assert all(build for build, _ in _planned(list(DEFAULT_CLASSES)).values())


def test_superseded_kinds_are_those_no_device_would_pick() -> None:
    assert superseded(list(KIND_NAMES)) == {"ort-int8-dynamic": "ort-int8-static", "ov-fp32": "ov-fp16"}
    # Without the static int8 file, the dynamic one is the int8 choice; fp32 never shadows int8 (needs less).
    assert superseded(["ort-int8-dynamic", "ort-fp32", "ov-fp32"]) == {}


def test_hardware_classes_group_inventory_devices_by_class_and_facts() -> None:
    nuc = {"hardwareClass": "nuc", "facts": {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2", "fma"]}}
    odd = {"hardwareClass": "nuc", "facts": {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2", "avx512_vnni"]}}
    classes = hardware_classes([("b", nuc), ("a", {"hardwareClass": "nuc", "facts": dict(nuc["facts"])}),
                                ("c", odd), ("d", {"hardwareClass": "pi"})])
    assert [(c.name, c.devices) for c in classes] == [("nuc", ("a", "b")), ("nuc#2", ("c",))]


def test_manifest_variants_and_class_picks_follow_the_device_choice() -> None:
    kept = ["ort-int8-static", "ort-fp32"]
    targets = {"ort-int8-static": ["m/2/ort-int8-static.onnx"], "ort-fp32": ["m/2/ort-fp32.onnx"]}
    variants = manifest_variants(kept, targets, {"ort-fp32": "m/2/ort-fp32.probe.json"}, with_precision=False)
    assert [v["name"] for v in variants] == [
        "ort-int8-static-x86-vnni", "ort-int8-static-x86-avxvnni", "ort-int8-static-arm-dot", "ort-fp32"]
    assert variants[0]["requires"] == {"arch": ["x86_64"], "cpuFlags": ["avx512_vnni"]}
    assert "precision" not in variants[0] and variants[-1]["probe"] == {"target": "m/2/ort-fp32.probe.json"}
    picks = class_picks({"version": "2", "variants": variants}, [AVX2, VNNI, PI4], ["onnxruntime"])
    assert picks == {"nuc": "ort-fp32", "xeon": "ort-int8-static-x86-vnni", "pi4": "ort-fp32"}


def test_budget_parsing() -> None:
    assert parse_budget(["top1=1%", "mean_abs=0.01", "max_rel=5%"]) == {"top1": 0.01, "mean_abs": 0.01,
                                                                        "max_rel": 0.05}
    for bad, msg in [("top1", "METRIC=VALUE"), ("speed=1%", "unknown metric"), ("max_abs=1%", "absolute"),
                     ("top1=x%", "not a number"), ("top1=-1%", ">= 0"), ("top1=nan", ">= 0")]:
        with pytest.raises(BudgetError, match=msg):
            parse_budget([bad])
    with pytest.raises(BudgetError, match="twice"):
        parse_budget(["top1=1%", "top1=2%"])


def test_agreement_matches_an_independent_computation() -> None:
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((50, 5)).astype(np.float32)
    got = ref + rng.normal(0, 0.3, ref.shape).astype(np.float32)
    labels = ref.argmax(1)
    labels[:5] = (labels[:5] + 1) % 5
    a = agreement({"out": ref}, {"out": got}, task="classifier", labels=labels)
    changed = sum(int(np.argmax(ref[i]) != np.argmax(got[i])) for i in range(50)) / 50
    assert a.top1 == pytest.approx(changed)
    assert a.accuracy_ref == pytest.approx(0.9)
    assert a.accuracy == pytest.approx(sum(int(np.argmax(got[i]) == labels[i]) for i in range(50)) / 50)
    diffs = [abs(float(g) - float(r)) for g, r in zip(got.ravel(), ref.ravel(), strict=True)]
    assert a.max_abs == pytest.approx(max(diffs))
    assert a.mean_abs == pytest.approx(sum(diffs) / len(diffs))
    assert a.max_rel == pytest.approx(max(diffs) / max(abs(float(r)) for r in ref.ravel()))
    assert over_budget(a, {"top1": 1.0}) is None
    assert over_budget(a, {"top1": 0.0}) == f"top1 {a.top1 * 100:.2f}% exceeds the budget 0.00%"
    reg = agreement({"out": ref}, {"out": got}, task="regression")
    assert reg.top1 is None and over_budget(reg, {"top1": 0.5}).startswith("top1 cannot be measured")


COMMENTED = """\
# yaml-language-server: $schema=../../schemas/model.schema.json
apiVersion: modelfleet/v1
kind: Model
metadata:
    name: m   # four-space mappings
spec:
    task: regression
    inputs:
    -   name: x
        datatype: FP32
        shape: [-1, 4]
    outputs:
    -   {name: y, datatype: FP32, shape: [-1, 2]}
    versions:
    # the first release
    -   version: "1.0"
        variants:
        -   name: cpu
            runtime: onnxruntime
            targets: [m/1.0/m.onnx]
"""


def test_manifest_edit_keeps_comments_quotes_and_indentation() -> None:
    assert guess_indent(COMMENTED) == (4, 4, 0)
    new = add_version(COMMENTED, {"version": "1.10", "variants": [
        {"name": "ort-fp32", "runtime": "onnxruntime", "targets": ["m/1.10/ort-fp32.onnx"]}]}, "m.yaml")
    assert new.startswith(COMMENTED)
    assert new[len(COMMENTED):] == (
        '    -   version: "1.10"\n'
        "        variants:\n"
        "        -   name: ort-fp32\n"
        "            runtime: onnxruntime\n"
        "            targets: [m/1.10/ort-fp32.onnx]\n"
    )
    with pytest.raises(UserError, match="version 1.0 already exists"):
        add_version(COMMENTED, {"version": "1.0", "variants": []}, "m.yaml")
    with pytest.raises(UserError, match=r"m.yaml:2:\d+"):
        add_version("kind: Model\n  bad: [", {"version": "1", "variants": []}, "m.yaml")


def test_validate_warns_when_the_file_has_another_precision_than_declared() -> None:
    from reconciler.fleet.repository import FleetRepo, Manifest
    from reconciler.fleet.validation import precision_checks
    from reconciler.fleet.yamlsafe import load_documents

    text = COMMENTED.replace("            runtime: onnxruntime\n",
                             "            runtime: onnxruntime\n            precision: int8\n")
    doc = load_documents(text, "models/m.yaml")[0]
    fleet = FleetRepo(models={"m": Manifest("Model", "m", doc.data, "models/m.yaml", doc)})
    target = "m/1.0/m.onnx"
    assert precision_checks(fleet, {target: ("int8", "")}) == []
    assert precision_checks(fleet, {}) == []  # file not available: not judged
    [warn] = precision_checks(fleet, {target: ("fp32", "")})
    assert (warn.severity, warn.line, warn.code) == ("warning", 20, "precision")
    assert warn.message == "variant cpu declares precision int8, but m/1.0/m.onnx is fp32"
    [note] = precision_checks(fleet, {target: (None, "the target is encrypted")})
    assert note.message == "precision int8 of variant cpu not checked: m/1.0/m.onnx: the target is encrypted"


def test_a_label_first_classifier_is_judged_by_its_label_output() -> None:
    # skl2onnx's layout: output 0 = the label [N], output 1 = the probabilities [N, C].
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=40).astype(np.float32)
    label = probs.argmax(1).astype(np.int64)
    got_label = label.copy()
    got_label[:6] = (got_label[:6] + 1) % 4
    truth = label.copy()
    truth[30:] = (truth[30:] + 2) % 4
    ref, got = {"label": label, "probabilities": probs}, {"label": got_label, "probabilities": probs + 0.01}
    a = agreement(ref, got, task="classifier", labels=truth)
    assert a.top1 == pytest.approx(6 / 40)
    assert a.accuracy_ref == pytest.approx(30 / 40)
    assert a.accuracy == pytest.approx(sum(int(g == t) for g, t in zip(got_label, truth, strict=True)) / 40)
    assert a.max_abs == pytest.approx(0.01, rel=1e-3)  # the label's class ids are not compared as numbers
    # [N, 1] labels and string labels too.
    names = np.array(["cat", "dog", "owl", "yak"], dtype=object)
    s_ref = {"label": np.array([n.encode() for n in names[label]], dtype=object).reshape(40, 1)}
    s_got = {"label": np.array([n.encode() for n in names[got_label]], dtype=object).reshape(40, 1)}
    s = agreement(s_ref, s_got, task="classifier", labels=names[truth].astype(str))
    assert (s.top1, s.accuracy_ref, s.accuracy) == (a.top1, a.accuracy_ref, a.accuracy)
    assert s.max_abs is None and over_budget(s, {"max_abs": 1.0}).startswith("max_abs cannot be measured")


def test_output_roles_are_detected_from_types_and_shapes() -> None:
    from reconciler.optimize.outputs import Roles, detect
    from reconciler.serving.v2.codec import TensorMeta

    sk = [TensorMeta("output_label", "INT64", (-1,)), TensorMeta("output_probability", "FP32", (-1, 10))]
    assert detect(sk) == Roles("output_label", "output_probability")
    assert detect([TensorMeta("logits", "FP32", (-1, 10))]) == Roles(None, "logits")
    assert detect([TensorMeta("y", "BYTES", (-1, 1)), TensorMeta("p", "FP32", (-1, 3))]) == Roles("y", "p")
    assert detect([TensorMeta("sigmoid", "FP32", (-1, 1))]) == Roles(None, None)  # argmax would always be 0
    assert detect(sk, scores="output_probability") == Roles(None, "output_probability")  # naming one: no detection
    with pytest.raises(UserError, match=r"--label-output output_probability: output_probability \(FP32 \[N, 10\]\) "
                                        "is not an integer or string tensor"):
        detect(sk, label="output_probability")


def test_budget_default_is_accuracy_when_the_sample_has_labels() -> None:
    from reconciler.optimize.budget import effective_budget

    assert effective_budget({}, "classifier", True) == {"accuracy": 0.01}
    assert effective_budget({}, "classifier", False) == {"top1": 0.01}
    assert effective_budget({}, "regression", True) == {"mean_rel": 0.02}
    assert effective_budget({"top1": 0.05}, "classifier", True) == {"top1": 0.05}


def test_a_bare_assert_is_described_with_its_source_line() -> None:
    import linecache

    from reconciler.optimize.failure import describe

    # A library's bare `assert` (compiled outside pytest, whose rewriting would add a message).
    src = "def _infer_Concat(axis):\n    assert axis == 0\n"
    linecache.cache["symbolic_shape_infer.py"] = (len(src), None, src.splitlines(True), "symbolic_shape_infer.py")
    ns: dict[str, Any] = {}
    exec(compile(src, "symbolic_shape_infer.py", "exec"), ns)
    try:
        ns["_infer_Concat"](1)
    except AssertionError as exc:
        f = describe("pre-processing", exc)
    assert f.text() == "pre-processing: AssertionError: assert axis == 0 (at symbolic_shape_infer.py:2 in _infer_Concat)"
    assert describe("x", ValueError("a\n  b")).text() == "x: ValueError: a b"


def test_quantize_options_file_is_checked_key_by_key() -> None:
    from reconciler.optimize.quantopts import QuantOptions, from_document, parse_scope_items

    doc = {"onnxruntime": {"preprocess": "no-symbolic", "perChannel": False, "calibrationMethod": "percentile",
                           "opTypes": ["Conv"], "excludeNodes": ["fc"]},
           "nncf": {"preset": "mixed", "subsetSize": 64, "accuracyControl": True,
                    "ignoredScope": {"names": ["a"], "types": ["MatMul"]}}}
    q = from_document(doc, "q.yaml")
    assert q == QuantOptions("no-symbolic", False, "percentile", ("Conv",), ("fc",), "mixed", 64, ("a",), (),
                             ("MatMul",), True)
    assert q.merged(per_channel=True, preprocess=None).per_channel is True
    for bad, msg in [({"ort": {}}, "ort: unknown section"), ({"onnxruntime": {"preprocess": "yes"}}, "'yes' is not one"),
                     ({"nncf": {"subsetSize": 0}}, "subsetSize: expected a whole number"),
                     ({"nncf": {"ignoredScope": {"nodes": []}}}, "ignoredScope: expected a mapping"),
                     ({"onnxruntime": {"opTypes": "Conv"}}, "opTypes: expected a list")]:
        with pytest.raises(UserError, match=msg):
            from_document(bad, "q.yaml")
    assert parse_scope_items(["name:a", "type:MatMul", "pattern:.*fc.*"]) == {
        "ignored_names": ("a",), "ignored_types": ("MatMul",), "ignored_patterns": (".*fc.*",)}
