"""Desired-state computation: rollout bucketing (property-based), variant choice, selectors, conflicts."""

from __future__ import annotations

import copy
from pathlib import Path

from hypothesis import given, settings, strategies as st

from reconciler.fleet.desired import DeviceIdentity, bucket, choose_variant, desired_state, in_rollout
from reconciler.fleet.manifests import load_dir, load_files, read_dir
from reconciler.fleet.selectors import matches

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet-repo-example"
X86 = {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2"], "hw.memoryMB": 8192, "runtime.openvino": "2025.1.0",
       "runtime.onnxruntime": "1.20.1"}
ARM = {"hw.arch": "aarch64", "hw.cpuFlags": ["neon"], "hw.memoryMB": 2048, "runtime.onnxruntime": "1.20.1"}

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=30)


@given(st.lists(ids, min_size=1, max_size=50, unique=True), st.floats(0.1, 100), st.floats(0.1, 100))
def test_membership_is_monotone_across_waves(devices: list[str], p1: float, p2: float) -> None:
    small, large = sorted((p1, p2))
    rollout_small = {"steps": [{"percent": small}, {"percent": 100}], "step": 0}
    rollout_large = {"steps": [{"percent": large}, {"percent": 100}], "step": 0}
    for d in devices:
        if in_rollout(rollout_small, "dep", "2.0", d, {})[0]:
            assert in_rollout(rollout_large, "dep", "2.0", d, {})[0]


@given(ids, ids, ids)
def test_bucket_is_stable_and_in_range(dep: str, version: str, device: str) -> None:
    b = bucket(dep, version, device)
    assert 0 <= b < 100
    assert b == bucket(dep, version, device)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([1, 5, 10, 25, 50, 75]), st.integers(0, 2**32))
def test_step_sizes_within_tolerance_on_10000_ids(percent: int, seed: int) -> None:
    devices = [f"dev-{seed}-{i}" for i in range(10_000)]
    rollout = {"steps": [{"percent": percent}, {"percent": 100}], "step": 0}
    n = sum(in_rollout(rollout, "classifier", "1.3.0", d, {})[0] for d in devices)
    # binomial std dev at p=0.5 is 50 devices; 2.5 % is > 5 sigma
    assert abs(n / 100 - percent) < 2.5, n


def test_later_steps_keep_earlier_members() -> None:
    steps = [{"selector": {"matchLabels": {"ring": "canary"}}}, {"percent": 5}, {"percent": 25}, {"percent": 100}]
    devices = [(f"d{i}", {"ring": "canary" if i % 50 == 0 else "stable"}) for i in range(2000)]
    previous: set[str] = set()
    for step in range(len(steps)):
        members = {d for d, labels in devices if in_rollout({"steps": steps, "step": step}, "x", "1", d, labels)[0]}
        assert previous <= members
        previous = members
    assert len(previous) == 2000


def test_selector_semantics() -> None:
    labels = {"site": "berlin", "ring": "canary"}
    assert matches(None, labels) and matches({}, labels)
    assert matches({"matchLabels": {"site": "berlin"}}, labels)
    assert not matches({"matchLabels": {"site": "lyon"}}, labels)
    expr = lambda op, vals=None: {"matchExpressions": [{"key": "ring", "operator": op, **({"values": vals} if vals else {})}]}  # noqa: E731
    assert matches(expr("In", ["canary", "beta"]), labels)
    assert not matches(expr("NotIn", ["canary"]), labels)
    assert matches(expr("NotIn", ["canary"]), {"site": "x"})  # absent key satisfies NotIn
    assert matches(expr("Exists"), labels) and not matches(expr("Exists"), {})
    assert matches(expr("DoesNotExist"), {}) and not matches(expr("DoesNotExist"), labels)


def test_variant_choice_follows_preference_and_requires() -> None:
    version = {"variants": [
        {"name": "ov", "runtime": "openvino", "targets": ["a.xml", "a.bin"], "requires": {"arch": ["x86_64"], "cpuFlags": ["avx2"]}},
        {"name": "arm", "runtime": "onnxruntime", "targets": ["a8.onnx"], "requires": {"arch": ["aarch64"]}},
        {"name": "any", "runtime": "onnxruntime", "targets": ["a.onnx"]},
    ]}
    assert choose_variant(version, ["openvino", "onnxruntime"], X86)[0]["name"] == "ov"
    assert choose_variant(version, ["onnxruntime", "openvino"], X86)[0]["name"] == "any"
    assert choose_variant(version, ["openvino", "onnxruntime"], ARM)[0]["name"] == "arm"
    none, why = choose_variant(version, ["openvino"], ARM)
    assert none is None and "not installed" in why


def test_example_fleet_desired_states() -> None:
    fleet = load_dir(EXAMPLE).fleet
    x86 = desired_state(fleet, DeviceIdentity("cam-berlin-01", {"site": "berlin", "ring": "canary", "role": "camera"}), X86)
    ep = x86.endpoints["classifier"]
    assert (ep.version, ep.variant, ep.runtime) == ("1.3.0", "x86-openvino", "openvino")
    assert "rollout step 0 (canary)" in ep.reason
    arm = desired_state(fleet, DeviceIdentity("cam-lyon-01", {"site": "lyon", "ring": "canary", "role": "camera"}), ARM)
    assert arm.endpoints["classifier"].variant == "arm-int8"
    # a gateway with a microphone in lyon: the priority-10 pilot wins the kws endpoint
    gw = desired_state(fleet, DeviceIdentity("gw-lyon-01", {"site": "lyon", "role": "gateway", "microphone": "true"}), X86)
    assert gw.endpoints["kws"].deployment == "keyword-spotter-lyon-pilot"
    assert gw.endpoints["vibration"].strategy == "resource"
    assert "classifier" not in gw.endpoints


def test_no_variant_and_runtime_conflict_are_issues_not_exceptions() -> None:
    files = read_dir(EXAMPLE)
    result = load_files(files)
    fleet = result.fleet
    # an ARM device without neon cannot run the encrypted int8 keyword spotter
    st_ = desired_state(fleet, DeviceIdentity("mic-1", {"microphone": "true"}), {"hw.arch": "aarch64", "runtime.onnxruntime": "1.20"})
    assert "kws" not in st_.endpoints
    assert st_.issues[0].reason == "NoMatchingVariant" and "neon" in st_.issues[0].message
    assert st_.held_endpoints() == {"kws"}
    # equal priority on a device the static check cannot see → reported conflict
    fleet2 = copy.deepcopy(fleet)
    fleet2.deployments["keyword-spotter-lyon-pilot"].data["spec"]["priority"] = 0
    c = desired_state(fleet2, DeviceIdentity("new-dev", {"site": "lyon", "microphone": "true"}), X86)
    assert "kws" not in c.endpoints
    assert [i.reason for i in c.issues] == ["DeploymentConflict"]


def test_outside_rollout_gets_from_version() -> None:
    fleet = load_dir(EXAMPLE).fleet
    versions = set()
    for i in range(200):
        s = desired_state(fleet, DeviceIdentity(f"cam-{i}", {"role": "camera", "ring": "stable"}), X86)
        versions.add(s.endpoints["classifier"].version)
    assert versions == {"1.2.0", "1.3.0"}


def test_variant_precision_reaches_the_desired_endpoint() -> None:
    fleet = load_dir(EXAMPLE).fleet
    arm = {"hw.arch": "aarch64", "hw.cpuFlags": ["neon"], "hw.memoryMB": 2048, "runtime.onnxruntime": "1.20.1"}
    mic = DeviceIdentity("mic-1", {"microphone": "true"})
    assert desired_state(fleet, mic, arm).endpoints["kws"].precision == "int8"  # declared
    assert desired_state(fleet, mic, X86).endpoints["kws"].precision == "fp32"  # default


def test_a_version_with_only_variants_for_a_missing_runtime_names_the_extra() -> None:
    fleet = copy.deepcopy(load_dir(EXAMPLE).fleet)
    classifier = desired_state(fleet, DeviceIdentity("cam-berlin-01", {"site": "berlin", "ring": "canary",
                                                                         "role": "camera"}), X86)
    dep = classifier.endpoints["classifier"].deployment
    no_openvino = {k: v for k, v in X86.items() if k != "runtime.openvino"}
    fleet.deployments[dep].spec["runtime"] = {"preferences": ["openvino"]}
    state = desired_state(fleet, DeviceIdentity("cam-berlin-01", {"site": "berlin", "ring": "canary",
                                                                   "role": "camera"}), no_openvino)
    issue = next(i for i in state.issues if i.endpoint == "classifier")
    assert (issue.reason, issue.message) == (
        "RuntimeNotInstalled",
        f"OpenVINO runtime requested by deployment {dep} but not installed: pip install 'modelfleet[openvino]'")
    # with ONNX Runtime allowed too, the device falls back to it: no issue at all
    fleet.deployments[dep].spec["runtime"] = {"preferences": ["openvino", "onnxruntime"]}
    state = desired_state(fleet, DeviceIdentity("cam-berlin-01", {"site": "berlin", "ring": "canary",
                                                                   "role": "camera"}), no_openvino)
    assert state.endpoints["classifier"].runtime == "onnxruntime" and not state.issues


def test_a_variant_that_does_not_fit_is_not_blamed_on_a_missing_runtime() -> None:
    version = {"variants": [{"name": "ov", "runtime": "openvino", "targets": ["a.xml", "a.bin"]},
                            {"name": "arm", "runtime": "onnxruntime", "targets": ["a.onnx"],
                             "requires": {"arch": ["aarch64"]}}]}
    assert choose_variant(version, ["openvino", "onnxruntime"], X86)[0]["name"] == "ov"
    no_openvino = {k: v for k, v in X86.items() if k != "runtime.openvino"}
    none, why = choose_variant(version, ["openvino", "onnxruntime"], no_openvino)
    assert none is None
    assert why == ("openvino: OpenVINO runtime requested but not installed: pip install 'modelfleet[openvino]'; "
                   "arm: arch x86_64 not in ['aarch64']")
