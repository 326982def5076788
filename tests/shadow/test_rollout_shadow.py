"""Shadow steps without a network: which devices shadow (desired state), how `rollout status` classifies and gates
them, and promote's two commits under `switch: afterGate`."""

from __future__ import annotations

import datetime as dt

import pytest

from reconciler.fleet.desired import DeviceIdentity, desired_state
from reconciler.fleet.manifests import load_files
from reconciler.rollout import edit
from reconciler.rollout.evaluate import FAILED, PROGRESSING, READY, evaluate, fleet_devices, step_key
from reconciler.rollout.render import render
from tests.rollout._fleet import DEPLOYMENT, FLEET, MODEL

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
FRESH = "2026-11-29T11:59:30Z"
LANDED = ("c" * 40, NOW - dt.timedelta(hours=2))
SHADOW = "    shadow: {sampleRate: 0.5, minSamples: 100, switch: %s}\n"


def fleet_text(step: int = 0, switch: str = "afterGate", passed: int | None = None, gates: str = "") -> str:
    extra = SHADOW % switch + (f"    shadowPassed: {passed}\n" if passed is not None else "")
    extra += f"    gates:\n{gates}" if gates else ""
    return DEPLOYMENT.format(step=step, extra=extra)


def make(n: int = 20, **kw):  # type: ignore[no-untyped-def]
    files = {"fleet.yaml": FLEET, "models/tiny.yaml": MODEL, "deployments/tiny.yaml": fleet_text(**kw).encode()}
    for i in range(n):
        ring = "canary" if i < 3 else "stable"
        files[f"devices/dev-{i:03d}.yaml"] = (f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: dev-{i:03d}\n"
                                              f"  labels: {{site: a, ring: {ring}}}\n").encode()
    load = load_files(files)
    assert load.ok, load.errors
    return load.fleet


def ep_of(fleet, dev: str, agreed=None):  # type: ignore[no-untyped-def]
    return desired_state(fleet, DeviceIdentity(dev, fleet.devices[dev].labels), agreed=agreed).endpoints["tiny"]


def test_new_devices_of_a_shadow_step_serve_from_and_shadow_the_version() -> None:
    fleet = make()
    canary = ep_of(fleet, "dev-000")
    assert canary.version == "1.0.0" and canary.shadow is not None
    sh = canary.shadow
    assert (sh["version"], sh["variant"], sh["runtime"], sh["targets"], sh["step"], sh["switched"]) == (
        "1.1.0", "onnx", "onnxruntime", ["tiny/1.1.0/model.onnx"], 0, False)
    assert sh["settings"]["sampleRate"] == 0.5 and "shadowing 1.1.0 beside 1.0.0" in canary.reason
    stable = ep_of(fleet, "dev-010")
    assert stable.version == "1.0.0" and stable.shadow is None  # not targeted yet
    # the step's shadow passed: canaries serve the version, no shadow part
    passed = make(passed=0)
    assert ep_of(passed, "dev-000").version == "1.1.0" and ep_of(passed, "dev-000").shadow is None
    # next step: the canaries serve it, the step's new devices shadow
    step1 = make(step=1, passed=0)
    assert ep_of(step1, "dev-000").version == "1.1.0" and ep_of(step1, "dev-000").shadow is None
    new = [d for d in step1.devices if d >= "dev-003" and ep_of(step1, d).shadow is not None]
    assert new and all(ep_of(step1, d).version == "1.0.0" for d in new)


def test_on_agreement_a_device_that_agreed_serves_the_candidate() -> None:
    fleet = make(switch="onAgreement")
    ep = ep_of(fleet, "dev-000", agreed={"tiny": "1.1.0"})
    assert ep.version == "1.1.0" and ep.shadow is not None and ep.shadow["switched"]
    assert ep_of(fleet, "dev-000", agreed={"tiny": "1.0.9"}).version == "1.0.0"  # another candidate's agreement


def test_shadow_needs_from() -> None:
    files = {"fleet.yaml": FLEET, "models/tiny.yaml": MODEL,
             "deployments/tiny.yaml": fleet_text().replace('    from: "1.0.0"\n', "").encode()}
    load = load_files(files)
    assert not load.ok and any("rollout.shadow needs rollout.from" in d.message for d in load.errors)


def shadow_status(dev: str, *, state: str = "Agreeing", samples: int = 500, agreed: int = 500, version: str = "1.0.0",
                  reason: str = "", failed: bool = False, mirrored: float | None = None) -> dict:
    ep = {"name": "tiny", "deployment": "tiny", "model": "tiny", "version": version, "state": "Serving",
          "desiredVersion": version}
    if state:
        ep["shadow"] = {"version": "1.1.0", "state": state, "reason": reason, "samples": samples, "agreed": agreed,
                        "agreement": 100.0 * agreed / samples if samples else None, "errors": 0, "nanOutputs": 0,
                        "latencyMs": {"p50": 0.2, "p99": 0.9, "liveP50": 0.1, "liveP99": 0.5}, "memoryMB": 3.5}
        if mirrored is not None:
            ep["shadow"]["mirrored"] = mirrored
    st = {"heartbeat": FRESH, "appliedCommit": "a" * 40, "endpoints": [ep], "conditions": []}
    if failed:
        st["failures"] = [{"endpoint": "tiny", "version": "1.1.0", "reason": "ShadowNonFiniteOutput: NaN", "count": 1}]
    return {"apiVersion": "modelfleet/v1", "kind": "DeviceStatus", "metadata": {"name": dev}, "status": st}


CANARIES = ("dev-000", "dev-001", "dev-002")


def run(fleet, overrides: dict[str, dict]):  # type: ignore[no-untyped-def]
    docs = {d: overrides.get(d) or shadow_status(d, state="") for d in fleet.devices}
    return evaluate(fleet, "tiny", fleet_devices(fleet, docs), now=NOW, landed=LANDED)


def test_agreeing_canaries_pass_the_gate_and_promote_writes_shadow_passed() -> None:
    fleet = make()
    st = run(fleet, {d: shadow_status(d, samples=1000, agreed=995) for d in CANARIES})
    g = st.gate("minShadowAgreement")
    assert st.phase == READY and g.passed and g.value == pytest.approx(99.5) and g.threshold == 99.0
    assert st.shadow_pending and "promote ends the shadow of step 0" in st.message
    cur = st.current
    assert (cur.healthy, cur.updated, cur.shadowing, cur.shadow_samples) == (3, 3, 3, 3000)
    doc = st.to_dict()
    assert doc["shadow"]["switch"] == "afterGate" and doc["steps"][0]["shadow"]["agreement"] == 99.5
    assert doc["devices"][0]["shadow"]["state"] == "Agreeing" and doc["devices"][0]["shadow"]["memoryMB"] == 3.5
    table = render(st)
    assert "SHADOWING" in table and "Shadow (3): dev-000 (Agreeing, 1000 samples, 99.50%, p99 0.9 ms)" in table
    assert "minShadowAgreement  99.50%" in table
    # promote: first shadowPassed, then the step
    text = fleet_text()
    first = edit.promote(text, "tiny")
    assert "shadowPassed: 0" in first.text and "shadow of 1.1.0 passed at step 0" in first.summary
    assert edit.deployment_data(first.text, "tiny")["spec"]["rollout"]["step"] == 0
    second = edit.promote(first.text, "tiny")
    data = edit.deployment_data(second.text, "tiny")["spec"]["rollout"]
    assert data["step"] == 1 and data["shadowPassed"] == 0 and "promote 1.1.0 to step 1" in second.summary
    # ending the shadow restarts the soak: the step key changes
    assert step_key(edit.deployment_data(first.text, "tiny")["spec"]) != step_key(
        edit.deployment_data(text, "tiny")["spec"])


def test_a_disagreeing_canary_is_refused_with_its_agreement_named() -> None:
    fleet = make()
    st = run(fleet, {"dev-000": shadow_status("dev-000", samples=1000, agreed=995),
                     "dev-001": shadow_status("dev-001", state="Disagreeing", samples=1000, agreed=801,
                                              reason="ShadowDisagreement"),
                     "dev-002": shadow_status("dev-002", samples=1000, agreed=1000)})
    g = st.gate("minShadowAgreement")
    assert st.phase == PROGRESSING and not g.passed and g.value == pytest.approx(80.1)
    assert "lowest agreement 80.10% (dev-001, 1000 samples)" in st.message


def test_the_share_of_requests_a_busy_device_mirrored_is_shown_per_device() -> None:
    """A device short of samples says how much of its traffic the candidate ran (the rest was dropped because it
    only gets idle CPU), in the device list and in the shadow line of the text view."""
    fleet = make()
    st = run(fleet, {"dev-000": shadow_status("dev-000", samples=40, agreed=40, mirrored=3.2),
                     "dev-001": shadow_status("dev-001", samples=1000, agreed=995),
                     "dev-002": shadow_status("dev-002", samples=1000, agreed=1000)})
    table = render(st)
    assert "dev-000 (Comparing" in table or "dev-000 (Agreeing" in table
    assert "40 samples, 100.00%, 3.2% mirrored, p99 0.9 ms" in table
    assert "dev-001 (Agreeing, 1000 samples, 99.50%, p99 0.9 ms)" in table  # no figure: none reported
    dev0 = next(d for d in st.devices if d.device == "dev-000")
    assert dev0.shadow["mirrored"] == 3.2


def test_too_few_samples_and_refused_devices_wait_and_failed_candidates_fail_the_step() -> None:
    fleet = make()
    st = run(fleet, {"dev-000": shadow_status("dev-000", state="Comparing", samples=20, agreed=20),
                     "dev-001": shadow_status("dev-001", state="Refused", samples=0, agreed=0, reason="ShadowNoMemory"),
                     "dev-002": shadow_status("dev-002", samples=1000, agreed=1000)})
    assert st.phase == PROGRESSING and not st.gate("minShadowAgreement").passed
    assert "fewest: dev-000 with 20" in st.gate("minShadowAgreement").message
    verdicts = {d.device: d for d in st.devices}
    assert verdicts["dev-001"].state == "pending" and "ShadowNoMemory" in verdicts["dev-001"].reason
    failed = run(fleet, {"dev-000": shadow_status("dev-000", state="Failed", reason="ShadowNonFiniteOutput",
                                                  failed=True),
                         "dev-001": shadow_status("dev-001"), "dev-002": shadow_status("dev-002")})
    assert failed.phase == FAILED and {d.device for d in failed.devices if d.state == "failed"} == {"dev-000"}


def test_after_shadow_passed_the_step_is_gated_as_usual() -> None:
    fleet = make(passed=0)
    st = run(fleet, {d: shadow_status(d, state="", version="1.1.0") for d in CANARIES})
    assert st.phase == READY and not st.shadow_pending
    assert "minShadowAgreement" not in [g.name for g in st.gates] and st.current.healthy == 3
    assert "Shadow: passed at step 0" in render(st)


def test_on_agreement_switched_devices_count_as_healthy_and_promote_advances() -> None:
    fleet = make(switch="onAgreement")
    st = run(fleet, {d: shadow_status(d, state="Switched", version="1.1.0", samples=300, agreed=300)
                     for d in CANARIES})
    assert st.phase == READY and st.gate("minShadowAgreement").passed and not st.shadow_pending
    assert st.current.healthy == 3
    promoted = edit.promote(fleet_text(switch="onAgreement"), "tiny")
    assert edit.deployment_data(promoted.text, "tiny")["spec"]["rollout"]["step"] == 1
