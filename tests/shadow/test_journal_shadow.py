"""The journal's shadow records: round trip, the agreements desired state reads, the candidate files the store
keeps, and the candidate failures the failure memory keeps while the shadow lasts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from reconciler.agent.journal import Journal, prune_failures, record_failure
from reconciler.agent.shadowing import ShadowSupervisor, shadow_digests

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def test_shadow_records_round_trip_and_feed_desired_state_gc_and_the_failure_memory(tmp_path: Path) -> None:
    j = Journal()
    j.shadows["detector"] = {"key": ["det-all", "1.1.0", 0, "1.0.0"], "deployment": "det-all", "version": "1.1.0",
                             "startedAt": "2026-12-01T00:00:00Z", "digest": "c" * 64,
                             "digests": ["c" * 64, "p" * 64], "agreed": True}
    j.shadows["other"] = {"key": ["o", "2", 0, "1"], "deployment": "o", "version": "2", "digest": "d" * 64}
    j.save(tmp_path)
    back = Journal.load(tmp_path)
    assert back.shadows == j.shadows
    assert back.shadow_agreed() == {"det-all": "1.1.0"}
    assert {"c" * 64, "p" * 64} <= back.referenced_digests()
    failures = record_failure([], "x" * 40, "detector", "c" * 64, "1.1.0", "ShadowNonFiniteOutput: NaN", NOW)
    failures = record_failure(failures, "x" * 40, "detector", "e" * 64, "1.0.9", "old", NOW)
    kept = prune_failures(failures, {"detector": "a" * 64}, shadow_digests(back))
    assert [f.digest for f in kept] == ["c" * 64]  # the candidate's failure stays, the stale one goes
    assert "shadows" not in Journal().to_dict()  # journals without shadow evaluation are unchanged


def test_the_tap_is_a_dict_lookup_without_a_comparison() -> None:
    sup = ShadowSupervisor()
    try:
        class Spec:
            name, version = "detector", "1.0.0"

        tap = sup.observer_for(Spec)
        x = {"input": np.zeros((1, 4), np.float32)}
        tap.observe(x, x, 0.001)  # no mirror: nothing happens
        tap.observe_error(0.001)
        tap.observe_rejection()
        assert not hasattr(tap, "feedback")  # feedback joins stay drift monitoring's
    finally:
        sup.close()
