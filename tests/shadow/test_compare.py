"""The pure comparison of one mirrored request, the aggregates, the device's verdict and the operator's gate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from reconciler.core import reasons as R
from reconciler.shadow import gate as G
from reconciler.shadow.compare import compare
from reconciler.shadow.memory import Room, estimate_mb, refusal
from reconciler.shadow.spec import CompareSettings, ShadowSettings
from reconciler.shadow.stats import ShadowStats

AUTO = CompareSettings()


def test_top1_for_scores_counts_rows_that_keep_their_arg_max() -> None:
    live = {"scores": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)}
    cand = {"scores": np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.5, 0.5 - 1e-3]], np.float32)}
    r = compare(live, cand, AUTO)
    assert (r.rows, r.agreed, r.nonfinite, r.mismatch) == (4, 3, 0, None)
    err = r.errors["scores"]
    assert err.max_abs == pytest.approx(0.4, abs=1e-6) and err.count == 8
    assert err.max_rel == pytest.approx(0.4 / 0.2, rel=1e-5)  # 0.2 -> 0.6


def test_labels_are_compared_exactly_and_regressions_within_tolerance() -> None:
    live = {"label": np.array([1, 2, 3], np.int64), "value": np.array([[1.0], [2.0], [3.0]], np.float32)}
    cand = {"label": np.array([1, 2, 4], np.int64), "value": np.array([[1.0 + 5e-3], [2.5], [3.0]], np.float32)}
    r = compare(live, cand, AUTO)  # row 0 agrees; row 1 value off; row 2 label off
    assert (r.rows, r.agreed) == (3, 1)
    assert "label" not in r.errors and r.errors["value"].max_abs == pytest.approx(0.5)
    only_label = compare(live, cand, CompareSettings(output="label"))
    assert (only_label.rows, only_label.agreed) == (3, 2)
    loose = compare(live, cand, CompareSettings(output="value", atol=1.0))
    assert loose.agreed == 3
    forced = compare({"s": np.array([[1.0, 2.0]])}, {"s": np.array([[1.0, 2.5]])}, CompareSettings(method="tolerance"))
    assert forced.agreed == 0  # top-1 would agree; tolerance does not


def test_nan_where_live_is_finite_is_counted_and_disagrees() -> None:
    live = {"y": np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, 1.0]], np.float32)}
    cand = {"y": np.array([[1.0, np.nan], [np.nan, 1.0], [3.0, 1.0]], np.float32)}
    r = compare(live, cand, AUTO)
    assert (r.rows, r.agreed, r.nonfinite) == (3, 2, 1)  # both NaN in row 1 is not the candidate's fault


def test_missing_output_or_other_shape_is_a_mismatch_and_absent_compared_output_is_skipped() -> None:
    live = {"y": np.zeros((2, 3), np.float32)}
    assert compare(live, {"z": np.zeros((2, 3))}, AUTO).mismatch == "the candidate has no output 'y'"
    r = compare(live, {"y": np.zeros((2, 4), np.float32)}, AUTO)
    assert r.agreed == 0 and "shape [2, 4]" in (r.mismatch or "")
    assert compare(live, live, CompareSettings(output="other")).skipped
    scalar = compare({"y": np.float32(1.0)}, {"y": np.float32(1.0)}, AUTO)
    assert (scalar.rows, scalar.agreed) == (1, 1)
    strings = compare({"s": np.array([b"a", b"b"], dtype=object)}, {"s": np.array([b"a", b"c"], dtype=object)}, AUTO)
    assert (strings.rows, strings.agreed) == (2, 1)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 16), cols=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_a_model_agrees_with_itself(rows: int, cols: int, seed: int) -> None:
    a = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    r = compare({"y": a}, {"y": a.copy()}, AUTO)
    assert (r.rows, r.agreed, r.nonfinite) == (rows, rows, 0) and r.errors["y"].max_abs == 0.0


def _stats(samples: int, agreed: int, **kw: int) -> ShadowStats:
    s = ShadowStats(samples=samples, agreed=agreed)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_device_verdicts() -> None:
    cfg = ShadowSettings(min_samples=100, min_agreement=99.0, max_duration=3600)
    assert G.device_verdict(_stats(10, 10), cfg, elapsed=5).state == G.COMPARING
    stopped = G.device_verdict(_stats(10, 10), cfg, elapsed=3600)
    assert stopped.stopped and stopped.reason == R.SHADOW_MAX_DURATION and stopped.state == G.COMPARING
    ok = G.device_verdict(_stats(1000, 995), cfg, elapsed=5)
    assert ok.state == G.AGREEING and not ok.switch and "99.50%" in ok.message
    assert G.device_verdict(_stats(1000, 995), ShadowSettings(min_samples=100, switch="onAgreement"),
                            elapsed=5).switch
    bad = G.device_verdict(_stats(1000, 800), cfg, elapsed=5)
    assert (bad.state, bad.reason) == (G.DISAGREEING, R.SHADOW_DISAGREEMENT) and "80.00% < 99%" in bad.message
    crashed = G.device_verdict(_stats(1000, 1000, errors=1, requests=50), cfg, elapsed=5)
    assert crashed.failed and crashed.reason == R.SHADOW_CANDIDATE_ERROR
    nan = G.device_verdict(_stats(1000, 999, nonfinite=1), cfg, elapsed=5)
    assert nan.failed and nan.reason == R.SHADOW_NON_FINITE_OUTPUT


def test_stats_snapshot_is_aggregates_only() -> None:
    s = ShadowStats()
    live = {"y": np.array([[0.0, 1.0]], np.float32)}
    for i in range(3):
        s.add(compare(live, {"y": np.array([[0.0, 1.0 + i]], np.float32)}, AUTO), 0.002, 0.001)
    s.add_error("RuntimeError: boom", 0.004)
    snap = s.snapshot()
    assert snap["samples"] == 3 and snap["agreed"] == 3 and snap["agreement"] == 100.0 and snap["errors"] == 1
    assert snap["latencyMs"]["liveP50"] == 1.0 and snap["latencyMs"]["p99"] == 4.0
    assert snap["outputs"]["y"] == {"maxAbsError": 2.0, "meanAbsError": 0.5, "maxRelError": 2.0}
    assert snap["lastError"] == "RuntimeError: boom"
    flat = repr(snap)
    assert "array" not in flat  # no tensor in the report


def test_agreement_gate() -> None:
    def rep(samples: int, agreed: int, state: str = G.AGREEING) -> dict:
        return {"state": state, "samples": samples, "agreed": agreed,
                "agreement": 100.0 * agreed / samples if samples else None}

    none = G.agreement_gate([], threshold=99, min_samples=100)
    assert not none.passed and none.value is None
    good = G.agreement_gate([("a", rep(500, 499)), ("b", rep(200, 200))], threshold=99, min_samples=100)
    assert good.passed and good.value == pytest.approx(99.8) and good.samples == 700
    bad = G.agreement_gate([("a", rep(500, 499)), ("b", rep(1000, 800, G.DISAGREEING))], threshold=99,
                           min_samples=100)
    assert not bad.passed and bad.value == 80.0 and "lowest agreement 80.00% (b, 1000 samples)" in bad.message
    short = G.agreement_gate([("a", rep(500, 500)), ("b", rep(20, 20, G.COMPARING))], threshold=99, min_samples=100)
    assert not short.passed and "fewest: b with 20" in short.message
    # failed and refused devices are the failed/pending gates' business
    assert G.agreement_gate([("a", rep(500, 500)), ("c", {"state": G.FAILED})], threshold=99, min_samples=100).passed
    # a saturated device that stopped at maxDuration short of minSamples keeps the gate closed, named, until the
    # operator lowers minSamples (its final numbers then count) — or raises maxDuration (it compares again)
    starved = {**rep(40, 40, G.COMPARING), "stopped": True, "reason": R.SHADOW_MAX_DURATION}
    held = G.agreement_gate([("a", rep(500, 500)), ("b", starved)], threshold=99, min_samples=100)
    assert not held.passed and "1 of 2 device(s) have fewer than minSamples (100) compared (fewest: b with 40)" in (
        held.message)
    assert G.agreement_gate([("a", rep(500, 500)), ("b", starved)], threshold=99, min_samples=40).passed


def test_memory_room_and_refusal() -> None:
    # + its own process + the 16 MiB ring the samples reach it through
    assert estimate_mb(10 << 20, "onnxruntime") == pytest.approx(28.0 + 64.0 + 16.0)
    assert estimate_mb(10 << 20, "openvino") > estimate_mb(10 << 20, "onnxruntime")
    assert refusal(100, Room(available_mb=None)) is None  # nothing known: no bound
    assert refusal(100, Room(available_mb=1000)) is None
    why = refusal(100, Room(available_mb=1000, max_memory_mb=50))
    assert why is not None and "shadow.maxMemoryMB 50" in why and "room for it: 50.0 MB" in why
    tight = Room(available_mb=4000, cgroup_limit_mb=512, cgroup_used_mb=400, reserve_mb=64)
    assert tight.free_mb() == 48 and refusal(60, tight) is not None and refusal(40, tight) is None


def test_the_aggregates_travel_as_data_and_come_back_whole() -> None:
    """The candidate's process hands its aggregates to the agent as JSON: the same numbers, the same verdict."""
    import json

    st = ShadowStats(offered=9, dropped=1)
    st.add(compare({"y": np.array([[0.1, 0.9], [0.8, 0.2]])}, {"y": np.array([[0.2, 0.8], [0.1, 0.9]])}, AUTO),
           0.002, 0.001)
    st.add_error("RuntimeError: boom", 0.003)
    back = ShadowStats.from_state(json.loads(json.dumps(st.to_state())))
    assert back.snapshot() == st.snapshot() and back.agreement == 50.0
    settings = ShadowSettings(min_samples=1)
    assert G.device_verdict(back, settings, elapsed=0.0) == G.device_verdict(st, settings, elapsed=0.0)
    with pytest.raises(KeyError):
        ShadowStats.from_state({"offered": 1})
