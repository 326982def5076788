"""The pure rollout core: step targeting, device classification, gates, phases, step landing time."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from reconciler.fleet.desired import DeviceIdentity, desired_state
from reconciler.rollout.evaluate import (
    COMPLETE,
    FAILED,
    PAUSED,
    PROGRESSING,
    READY,
    Gates,
    evaluate,
    fleet_devices,
    step_key,
    step_landed,
)
from reconciler.rollout.render import render
from tests.rollout._fleet import make_fleet, status

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
FRESH = "2026-11-29T11:59:30Z"
OLD = "2026-11-29T10:00:00Z"  # 2 h ago: > 3 x 60 s heartbeat
LANDED = ("c" * 40, NOW - dt.timedelta(hours=2))


def in_step(fleet, step: int) -> set[str]:
    """Devices the agents themselves would put on the new version at this step."""
    out = set()
    for name, dev in fleet.devices.items():
        ep = desired_state(fleet, DeviceIdentity(name, dev.labels)).endpoints["tiny"]
        if ep.version == "1.1.0":
            out.add(name)
    return out


def statuses_for(fleet, *, new: set[str], offline: set[str] = frozenset(), failed: set[str] = frozenset(),
                 silent: set[str] = frozenset()) -> dict:
    out = {}
    for name in fleet.devices:
        if name in silent:
            continue
        hb = OLD if name in offline else FRESH
        if name in failed:
            out[name] = status(name, "1.0.0", heartbeat=hb, state="Serving", desired="1.1.0", failed_version="1.1.0")
        else:
            out[name] = status(name, "1.1.0" if name in new else "1.0.0", heartbeat=hb)
    return out


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_targets_match_what_devices_compute(step: int) -> None:
    fleet = make_fleet(200, step=step)
    targets = in_step(fleet, step)
    st = evaluate(fleet, "tiny", fleet_devices(fleet, {}), now=NOW, landed=LANDED)
    assert {d.device for d in st.devices} == targets
    assert st.current.targeted == len(targets)
    assert all(d.state == "unknown" and d.reason == "no status reported" for d in st.devices)
    assert [s.targeted for s in st.steps] == sorted(s.targeted for s in st.steps)  # cumulative
    assert sum(s.new for s in st.steps) == 200
    if step == 0:
        assert st.current.targeted == 3  # the canary ring


def test_all_updated_and_healthy_is_ready() -> None:
    fleet = make_fleet(100, step=1)
    targets = in_step(fleet, 1)
    st = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=targets)), now=NOW, landed=LANDED)
    assert st.phase == READY, st.message
    assert st.current.healthy == st.current.targeted == len(targets) and st.current.unknown == 0
    assert st.steps[3].pending == 100 - len(targets)


def test_devices_still_on_from_keep_the_step_progressing() -> None:
    fleet = make_fleet(100, step=1)
    targets = sorted(in_step(fleet, 1))
    st = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=set(targets[1:]))), now=NOW,
                  landed=LANDED)
    assert st.phase == PROGRESSING
    assert st.current.pending == 1
    assert len(targets) < 20 and not st.gate("minHealthyPercent").passed  # 1 of < 20 pending is > 5 %
    assert "waiting for" in st.message


def test_offline_devices_are_unknown_never_block_never_healthy() -> None:
    fleet = make_fleet(100, step=2)
    targets = sorted(in_step(fleet, 2))
    offline = set(targets[: len(targets) // 5])  # 20 % of the step offline, still on 1.0.0 when last seen
    st = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=set(targets) - offline,
                                                                   offline=offline)), now=NOW, landed=LANDED)
    assert st.phase == READY, st.message
    assert st.current.unknown == len(offline)
    assert st.current.healthy == len(targets) - len(offline)
    assert {d.device for d in st.devices if d.state == "unknown"} == offline
    assert all("last heartbeat 7200s ago" in d.reason for d in st.devices if d.state == "unknown")
    # an offline device that reported the new version before going silent is not counted healthy
    st2 = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=set(targets), offline=offline)),
                   now=NOW, landed=LANDED)
    assert st2.current.healthy == len(targets) - len(offline)


def test_every_targeted_device_silent_blocks() -> None:
    fleet = make_fleet(20, step=0)
    st = evaluate(fleet, "tiny", fleet_devices(fleet, {}), now=NOW, landed=LANDED)
    assert st.phase == PROGRESSING
    assert not st.gate("minReporting").passed


def test_failed_share_above_threshold_fails_the_step() -> None:
    fleet = make_fleet(50, step=0)
    canaries = in_step(fleet, 0)
    one = {sorted(canaries)[0]}
    st = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=canaries - one, failed=one)), now=NOW,
                  landed=LANDED)
    assert st.phase == FAILED
    g = st.gate("maxFailedPercent")
    assert not g.passed and g.value == pytest.approx(100 / 3) and g.threshold == 5
    assert "33.3% failed > maxFailedPercent 5%" in st.message
    assert [d.reason for d in st.devices if d.state == "failed"] == ["probe mismatch"]


def test_failed_is_a_fact_even_when_stale_and_endpoint_failed_counts() -> None:
    fleet = make_fleet(10, step=0)
    canaries = sorted(in_step(fleet, 0))
    sts = statuses_for(fleet, new=set(), failed={canaries[0]}, offline={canaries[0]})
    sts[canaries[1]] = status(canaries[1], "1.0.0", heartbeat=FRESH, state="Failed", desired="1.1.0")
    st = evaluate(fleet, "tiny", fleet_devices(fleet, sts), now=NOW, landed=LANDED)
    assert st.current.failed == 2 and st.phase == FAILED


def test_tolerated_failures_with_custom_gates() -> None:
    fleet = make_fleet(100, step=3, gates="      maxFailedPercent: 10\n      minHealthyPercent: 85\n")
    targets = sorted(in_step(fleet, 3))
    failed = set(targets[:5])
    st = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=set(targets) - failed, failed=failed)),
                  now=NOW, landed=LANDED)
    assert st.phase == READY and st.last_step
    assert st.gate("maxFailedPercent").value == 5.0 and st.gate("minHealthyPercent").value == 95.0


def test_min_soak_from_the_step_commit() -> None:
    fleet = make_fleet(20, step=0, gates="      minSoak: 3h\n")
    canaries = in_step(fleet, 0)
    devs = fleet_devices(fleet, statuses_for(fleet, new=canaries))
    st = evaluate(fleet, "tiny", devs, now=NOW, landed=LANDED)
    assert st.phase == PROGRESSING and not st.gate("minSoak").passed and st.gate("minSoak").value == 7200
    later = evaluate(fleet, "tiny", devs, now=NOW, landed=("c" * 40, NOW - dt.timedelta(hours=3, seconds=1)))
    assert later.phase == READY
    unknown = evaluate(fleet, "tiny", devs, now=NOW, landed=None)
    assert not unknown.gate("minSoak").passed and "not found" in unknown.gate("minSoak").message


def test_drift_gate_reads_the_status_field_when_configured() -> None:
    fleet = make_fleet(10, step=0, gates="      maxDriftScore: 0.3\n")
    canaries = sorted(in_step(fleet, 0))
    sts = statuses_for(fleet, new=set(canaries))
    sts[canaries[0]] = status(canaries[0], "1.1.0", heartbeat=FRESH, drift=0.5)
    sts[canaries[1]]["status"]["endpoints"][0]["drift"] = {"level": "Alert", "score": 0.7}  # issue G's field
    st = evaluate(fleet, "tiny", fleet_devices(fleet, sts), now=NOW, landed=LANDED)
    g = st.gate("maxDriftScore")
    assert not g.passed and g.value == 0.7 and st.phase == PROGRESSING
    plain = evaluate(make_fleet(10, step=0), "tiny", fleet_devices(fleet, sts), now=NOW, landed=LANDED)
    assert all(g.name != "maxDriftScore" for g in plain.gates)


def test_paused_and_complete_phases() -> None:
    fleet = make_fleet(20, step=0, paused=True)
    st = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=in_step(fleet, 0))), now=NOW,
                  landed=LANDED)
    assert st.phase == PAUSED and st.paused
    done = make_fleet(20)
    del done.deployments["tiny"].data["spec"]["rollout"]
    st = evaluate(done, "tiny", fleet_devices(done, {}), now=NOW)
    assert st.phase == COMPLETE and not st.in_rollout and st.current.targeted == 20


def test_unreadable_status_is_unknown_and_only_inventory_devices_count() -> None:
    """Step membership is the inventory's: a status branch of an uninventoried device, or labels a device claims
    for itself, never move a device into a step (issue V)."""
    fleet = make_fleet(5, step=3)
    sts = statuses_for(fleet, new=set(fleet.devices))
    sts["dev-000"] = "unreadable status: invalid YAML"
    sts["extra-1"] = status("extra-1", "1.1.0", heartbeat=FRESH)
    sts["extra-1"]["status"]["labels"] = {"site": "a"}
    sts["other-site"] = status("other-site", "1.1.0", heartbeat=FRESH)
    sts["other-site"]["status"]["labels"] = {"site": "b"}
    st = evaluate(fleet, "tiny", fleet_devices(fleet, sts), now=NOW, landed=LANDED)
    by = {d.device: d for d in st.devices}
    assert by["dev-000"].state == "unknown" and "invalid YAML" in by["dev-000"].reason
    assert "extra-1" not in by and "other-site" not in by
    # A stable device claiming the canary ring in its own status stays out of the canary step.
    staged = make_fleet(10, step=0)
    sts = statuses_for(staged, new=set())
    sts["dev-009"]["status"]["labels"] = {"ring": "canary"}
    st0 = evaluate(staged, "tiny", fleet_devices(staged, sts), now=NOW, landed=LANDED)
    assert "dev-009" not in {d.device for d in st0.devices if d.step == 0}


def test_gates_defaults_and_alias() -> None:
    assert Gates.from_spec(None) == Gates(1, 95.0, 5.0, 0.0, None, 3.0)
    assert Gates.from_spec({"minReadyPercent": 80}).min_healthy_percent == 80
    assert Gates.from_spec({"minReadyPercent": 80, "minHealthyPercent": 90}).min_healthy_percent == 90
    assert Gates.from_spec({"minSoak": "1h30m"}).min_soak == 5400


def test_step_landed_is_the_oldest_commit_of_the_newest_unchanged_run() -> None:
    t = [NOW - dt.timedelta(hours=h) for h in range(5)]
    spec1 = {"version": "2", "rollout": {"from": "1", "steps": [{"percent": 100}], "step": 0}}
    paused = {"version": "2", "rollout": {"from": "1", "steps": [{"percent": 100}], "step": 0, "paused": True}}
    spec0 = {"version": "1"}
    history = [("d", t[0], step_key(paused)), ("c", t[1], step_key(spec1)), ("b", t[2], step_key(spec1)),
               ("a", t[3], step_key(spec0))]
    assert step_key(paused) == step_key(spec1)  # pausing does not restart the soak
    assert step_landed(history, step_key(spec1)) == ("b", t[2])
    assert step_landed(history, step_key(spec0)) is None
    assert step_landed([], step_key(spec1)) is None


def test_render_formats() -> None:
    fleet = make_fleet(100, step=2)
    targets = sorted(in_step(fleet, 2))
    offline = set(targets[:3])
    st = evaluate(fleet, "tiny", fleet_devices(fleet, statuses_for(fleet, new=set(targets) - offline,
                                                                   offline=offline)), now=NOW, landed=LANDED)
    table = render(st, "table")
    assert "Phase: Ready" in table and "> 2" in table and "minHealthyPercent" in table
    assert f"Unknown (3): {sorted(offline)[0]} (last heartbeat 7200s ago)" in table
    md = render(st, "markdown")
    assert "| ▶ 2 | 50% |" in md and "**Phase: Ready**" in md
    doc = json.loads(render(st, "json"))
    assert doc["kind"] == "RolloutStatus" and doc["phase"] == "Ready" and doc["step"] == 2
    assert set(doc["steps"][2]) == {"index", "name", "targeted", "new", "updated", "healthy", "failed", "pending",
                                    "unknown"}
    assert [g["name"] for g in doc["gates"]] == ["minReporting", "minHealthyPercent", "maxFailedPercent", "minSoak"]
    assert doc["secondsInStep"] == 7200 and doc["stepCommit"] == "c" * 40
