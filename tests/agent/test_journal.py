"""State journal round trip, crash-safe save, and the failure-memory rules."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from reconciler.agent import journal as J
from reconciler.fleet.schemas import validator

T0 = dt.datetime(2026, 11, 24, 10, 0, 0, tzinfo=dt.timezone.utc)


def _rec(version: str, digest: str) -> J.EndpointRecord:
    return J.EndpointRecord(
        name="det", deployment="det-prod", model="det", version=version, variant="cpu", runtime="onnxruntime",
        targets=[J.TargetRecord(f"det/{version}/model.onnx", digest, 10)], commit="c1",
    )


def test_roundtrip_and_previous_version(tmp_path) -> None:
    j = J.Journal(applied_commit="c1")
    j.record_active(_rec("1.0.0", "a" * 64))
    j.record_active(_rec("1.1.0", "b" * 64))
    j.save(tmp_path)
    back = J.Journal.load(tmp_path)
    st = back.endpoints["det"]
    assert st.active.version == "1.1.0" and st.previous.version == "1.0.0"
    assert back.applied_commit == "c1"
    assert back.referenced_digests() == {"a" * 64, "b" * 64}
    # Re-recording the same digest keeps the previous version for rollback.
    back.record_active(_rec("1.1.0", "b" * 64))
    assert back.endpoints["det"].previous.version == "1.0.0"


def test_missing_journal_is_empty_and_garbage_is_an_error(tmp_path) -> None:
    assert J.Journal.load(tmp_path).endpoints == {}
    (tmp_path / J.JOURNAL_FILE).write_text("{not json")
    with pytest.raises(J.JournalError, match="unreadable journal"):
        J.Journal.load(tmp_path)


def test_save_leaves_no_temp_files(tmp_path) -> None:
    for i in range(3):
        J.Journal(applied_commit=f"c{i}").save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [J.JOURNAL_FILE]
    assert json.loads((tmp_path / J.JOURNAL_FILE).read_text())["appliedCommit"] == "c2"


def test_failure_held_back_until_backoff_or_change() -> None:
    fs = J.record_failure([], "c1", "det", "d1", "1.1.0", "HealthCheckFailed", T0)
    assert J.blocking_failure(fs, "c1", "det", "d1", T0 + dt.timedelta(seconds=60)) is not None
    # A new commit or digest is a changed desired state: tried at once.
    assert J.blocking_failure(fs, "c2", "det", "d1", T0) is None
    assert J.blocking_failure(fs, "c1", "det", "d2", T0) is None
    # After the backoff the same triple is retried.
    later = T0 + dt.timedelta(seconds=J.failure_backoff(1) + 1)
    assert J.blocking_failure(fs, "c1", "det", "d1", later) is None
    fs2 = J.record_failure(fs, "c1", "det", "d1", "1.1.0", "HealthCheckFailed", later)
    assert len(fs2) == 1 and fs2[0].count == 2
    assert J.blocking_failure(fs2, "c1", "det", "d1", later + dt.timedelta(seconds=J.failure_backoff(1) + 1))


def test_backoff_is_bounded_and_grows() -> None:
    assert J.failure_backoff(1) < J.failure_backoff(2) < J.failure_backoff(3)
    assert J.failure_backoff(100) == J.FAILURE_BACKOFF_MAX


def test_prune_and_clear() -> None:
    fs = J.record_failure([], "c1", "det", "d1", "1", "x", T0)
    fs = J.record_failure(fs, "c1", "cls", "e1", "1", "x", T0)
    assert [f.endpoint for f in J.prune_failures(fs, {"det": "d1"})] == ["det"]
    assert J.prune_failures(fs, {"det": "other"}) == []
    assert [f.endpoint for f in J.clear_failures(fs, "det")] == ["cls"]


def test_failures_fit_the_status_schema() -> None:
    fs = J.record_failure([], "c1", "det", "d1", "1.1.0", "HealthCheckFailed", T0)
    doc = {
        "apiVersion": "modelfleet/v1", "kind": "DeviceStatus", "metadata": {"name": "dev-1"},
        "status": {"heartbeat": "2026-11-24T10:00:00Z", "conditions": [], "failures": [f.to_status() for f in fs]},
    }
    assert not list(validator("DeviceStatus").iter_errors(doc))


def test_saved_journal_never_carries_url_userinfo(tmp_path) -> None:
    """Attempt messages and failure reasons quote git and TUF errors: journal.json gets them redacted."""
    tok = "ghp_JournalLeak9z8y7x6w"
    j = J.Journal(applied_commit="c1")
    j.add_attempt({"time": "2026-11-24T10:00:00Z", "commit": "c1", "result": "Failed", "step": "ArtifactsReady",
                   "message": f"RepositoryUnavailable: cannot fetch https://{tok}@tuf.example.com/metadata/1.root.json"})
    j.failures = J.record_failure(j.failures, "c1", "det", "a" * 64, "1.0.0",
                                  f"TufError: https://x-access-token:{tok}@h/t", T0)
    j.save(tmp_path)
    text = (tmp_path / J.JOURNAL_FILE).read_text()
    assert tok not in text and text.count("https://***@") == 2
    assert J.Journal.load(tmp_path).attempts[0]["step"] == "ArtifactsReady"
