"""Pure capture decisions: parsing, sampling, triggers, minimisation, retention/quota selection, upload gating."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from reconciler.capture.policy import (
    PolicyError,
    StoredBatch,
    backoff_delay,
    capture_trigger,
    drifting_endpoints,
    min_confidence,
    minimise,
    parse_policy,
    select_erasure,
    select_purge,
    select_room,
    upload_allowed,
)
from tests.capture._capture import Campaign


def test_absent_or_disabled_policy_captures_nothing() -> None:
    for section in (None, {}, {"enabled": False, "sampleRate": 1.0}):
        p = parse_policy(section)
        assert not p.enabled
        assert capture_trigger(p, 0.0, confidence=0.0, drifting=True, rejected=True) is None


def test_an_incomplete_enabled_policy_is_refused() -> None:
    sec = Campaign().section()
    del sec["recipient"]
    with pytest.raises(PolicyError, match="capture.recipient is missing"):
        parse_policy(sec)
    with pytest.raises(PolicyError, match="32-byte"):
        parse_policy(Campaign().section(recipient="AAAA"))


def test_sampling_follows_the_rate_statistically() -> None:
    p = Campaign().policy(sampleRate=0.1)
    rng = random.Random(7)
    n = 20000
    hits = sum(capture_trigger(p, rng.random()) == "sampled" for _ in range(n))
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(hits - n * 0.1) < 5 * sd


def test_triggers_capture_whatever_the_rate() -> None:
    p = Campaign().policy(sampleRate=0.0, triggers={"lowConfidence": {"output": "probs", "below": 0.6},
                                                    "drift": True, "rejected": True})
    assert capture_trigger(p, 0.99) is None
    assert capture_trigger(p, 0.99, confidence=0.5) == "lowConfidence"
    assert capture_trigger(p, 0.99, confidence=0.7) is None
    assert capture_trigger(p, 0.99, drifting=True) == "drift"
    assert capture_trigger(p, 0.99, rejected=True) == "rejected"
    off = Campaign().policy(sampleRate=1.0)
    assert capture_trigger(off, 0.0, rejected=True) is None  # rejected requests only when asked for


def test_min_confidence_is_the_lowest_row_top_score() -> None:
    probs = np.array([[0.9, 0.1], [0.55, 0.45]], np.float32)
    assert min_confidence({"probs": probs}, "probs") == pytest.approx(0.55)
    assert min_confidence({"probs": probs}, "missing") is None


def test_minimise_keeps_selected_tensors_and_redacts_columns() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    img = np.zeros((1, 3, 2, 2), np.float32)
    p = Campaign().policy(keep={"inputs": ["x", "img"], "outputs": []},
                          redact=[{"input": "x", "columns": [0, 2]}, {"input": "img", "columns": [0]}])
    ins, outs = minimise(p, {"x": x, "img": img, "other": x}, {"y": x})
    assert list(ins) == ["x"]  # img cannot be redacted column-wise: dropped whole; "other" not kept
    assert ins["x"].tolist() == [[1, 3], [5, 7], [9, 11]]
    assert outs == {}
    masked = Campaign().policy(redact=[{"input": "x", "columns": [1], "action": "mask"}])
    ins, outs = minimise(masked, {"x": x}, {"y": x})
    assert ins["x"][:, 1].tolist() == [0, 0, 0] and ins["x"][:, 0].tolist() == [0, 4, 8]
    assert x[0, 1] == 1  # the request's own array is untouched
    assert "y" in outs
    out_of_range = Campaign().policy(redact=[{"input": "x", "columns": [9]}])
    assert minimise(out_of_range, {"x": x}, {})[0] == {}


def _b(i: int, created: float, size: int = 100, key: str = "k1", ep: str = "e") -> StoredBatch:
    return StoredBatch(f"b{i}", created, size, ep, key)


def test_retention_quota_and_retired_keys_purge_oldest_first() -> None:
    batches = [_b(3, 300), _b(1, 100), _b(2, 200), _b(4, 400, key="old")]
    got = select_purge(batches, 1000, retention=850, max_bytes=150, live_key_ids={"k1"})
    assert [(b.id, why) for b, why in got] == [("b1", "expired"), ("b4", "retired-key"), ("b2", "quota")]
    assert select_purge(batches, 1000, retention=None, max_bytes=None, live_key_ids=None) == []


def test_erasure_selection_by_date_and_endpoint() -> None:
    batches = [_b(1, 100, ep="a"), _b(2, 200, ep="b"), _b(3, 300, ep="a")]
    assert [b.id for b in select_erasure(batches, before=250)] == ["b1", "b2"]
    assert [b.id for b in select_erasure(batches, endpoint="a")] == ["b1", "b3"]


def test_upload_gating_and_backoff() -> None:
    idle = Campaign().policy(destination={"directory": "/x", "upload": {"when": "idle", "idleFor": "30s"}})
    assert not upload_allowed(idle, idle_seconds=5, window_open=True)
    assert upload_allowed(idle, idle_seconds=31, window_open=False)
    win = Campaign().policy(destination={"directory": "/x", "upload": {"when": "window"}})
    assert upload_allowed(win, idle_seconds=0, window_open=True)
    assert not upload_allowed(win, idle_seconds=1e9, window_open=False)
    assert backoff_delay(0, 0.5) == 0
    assert 1.0 <= backoff_delay(1, 0.0) <= 2.0
    assert backoff_delay(30, 1.0) == 300.0


def test_validate_refuses_capture_policies_naming_unknown_tensors(tmp_path: Any) -> None:
    import yaml

    from reconciler.fleet.manifests import load_files
    from tests._agent_fixtures import REPO_ROOT

    root = REPO_ROOT / "fleet-repo-example"
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.yaml")}
    path = "deployments/vibration-anomaly.yaml"
    dep = yaml.safe_load(files[path])
    dep["spec"]["capture"].update(keep={"inputs": ["spectrum"]}, redact=[{"input": "featurs", "columns": [1]}],
                                  destination={"url": "https://user:secret@capture.example.com/x"})
    res = load_files({**files, path: yaml.safe_dump(dep).encode()})
    msgs = [d.message for d in res.errors]
    assert any("capture names input 'featurs'" in m for m in msgs), msgs
    assert any("must not hold credentials" in m for m in msgs), msgs
    assert all(d.file == path for d in res.errors if "capture" in d.message)


def test_drift_alerts_in_the_status_switch_the_drift_trigger() -> None:
    eps = [{"name": "a", "drift": {"level": "Alert"}}, {"name": "b", "drift": {"level": "Warning"}}, {"name": "c"}]
    assert drifting_endpoints(eps) == {"a"}


def test_room_for_a_new_batch_is_made_oldest_first_and_never_for_one_that_cannot_fit() -> None:
    bs = [StoredBatch(f"b{i}", created=float(i), size=100) for i in (3, 1, 2)]
    assert select_room(bs, 50, 400) == []  # 300 + 50 fit
    assert [b.id for b in select_room(bs, 150, 400) or []] == ["b1"]  # 300 + 150: the oldest goes
    assert [b.id for b in select_room(bs, 400, 400) or []] == ["b1", "b2", "b3"]
    assert select_room(bs, 401, 400) is None  # alone over the quota: dropped, nothing evicted for it
    assert select_room([], 0, 0) == []
    # A batch older than one that would have to go for it (it waited in memory for an upload that failed) is the
    # one that goes: the quota keeps the newest data, and nothing is deleted for it.
    assert select_room(bs, 150, 400, incoming_key=(0.5, "b0")) is None  # older than b1, which would go
    assert [b.id for b in select_room(bs, 150, 400, incoming_key=(1.5, "bx")) or []] == ["b1"]  # b1 is older
    assert select_room(bs, 50, 400, incoming_key=(0.0, "b0")) == []  # room for it: kept, however old
