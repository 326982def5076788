"""Records sealed in the sealer process (``sealer: process``, the default): the same batches as the agent's own
writer seals, every record kept through a close, a crash or a stopped sealer reported and survived, and the
records a row cannot carry taken the agent's way."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.capture import sealing as sealing_mod
from reconciler.capture.batch import open_batch
from reconciler.capture.openbatch import stack_runs
from reconciler.capture.policy import SAMPLED, parse_policy
from reconciler.capture.sealer.ring import PUT, RowRing
from reconciler.capture.sealer.rows import TRIGGER_CODE, RowLayout, layout_of, merged, record_index, unpack
from reconciler.capture.service import CaptureService
from tests.capture._capture import Campaign, wait_until

# Records of one layout each, as a request decodes them: (inputs, outputs) for record i.
LAYOUTS: dict[str, Any] = {
    "vector": lambda i: ({"x": np.full((1, 16), i, np.float32)}, {"y": np.full((1, 4), -i, np.float32)}),
    "three_rows": lambda i: ({"x": np.arange(15, dtype=np.int64).reshape(3, 5) + i},
                             {"label": np.array([i, i + 1, i + 2], np.int64)}),
    "scalar_and_text": lambda i: ({"n": np.array(float(i)), "s": np.array([f"r{i}"], "<U8")},
                                  {"p": np.full((1, 2), 0.5, np.float16)}),
    "output_named_like_input": lambda i: ({"x": np.full((1, 2), i, np.float32)}, {"x": np.zeros((1, 2), np.float32)}),
    "outputs_only": lambda i: ({}, {"y": np.full((2, 3), i, np.uint8)}),
}


def records_of(name: str, n: int) -> tuple[list[Any], RowLayout]:
    """``n`` records of the layout ``name`` (of :data:`LAYOUTS`) and their row layout."""
    records = [LAYOUTS[name](i) for i in range(n)]
    layout = layout_of(*records[0])
    assert layout is not None
    return records, layout


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_rows_unpack_to_what_the_agents_writer_stacks(name: str) -> None:
    records, layout = records_of(name, 7)
    ring, fd = RowRing.create(layout)
    os.close(fd)
    triggers = [SAMPLED, "lowConfidence", SAMPLED, "drift", SAMPLED, "rejected", SAMPLED]
    for i, (inputs, outputs) in enumerate(records):
        assert ring.put(1_800_000_000.0 + i, TRIGGER_CODE[triggers[i]], inputs, outputs) == PUT
    rows = ring.take()
    assert rows is not None and len(rows) == 7 and ring.take() is None

    inputs, outputs, times, got_triggers = unpack(rows, layout)
    arrays, index = merged(inputs, outputs), record_index(times, got_triggers, inputs)
    entries = [(None, triggers[i], ins, outs, 1_800_000_000.0 + i, 0) for i, (ins, outs) in enumerate(records)]
    [run] = stack_runs(entries)
    assert list(arrays) == list(run.arrays)
    for key, want in run.arrays.items():
        assert arrays[key].dtype == want.dtype and arrays[key].shape == want.shape
        assert np.array_equal(arrays[key], want)
    assert index == run.index


def test_object_arrays_and_huge_records_have_no_row_layout() -> None:
    assert layout_of({"x": np.array([{"a": 1}], dtype=object)}, {}) is None
    assert layout_of({"x": np.zeros((1, 100_000), np.float32)}, {}) is None  # 400 KB: over MAX_ROW_BYTES
    assert layout_of({}, {}) is None


def _opened(svc: CaptureService, campaign: Campaign) -> list[Any]:
    return sorted((open_batch(p.read_bytes(), campaign.private, name=p.name) for p, _ in svc.spool.list()),
                  key=lambda b: (b.meta["modelVersion"], b.meta["start"]))


def _serve(svc: CaptureService, records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
           version: str = "1") -> None:
    obs = svc.observer_for("mm", version)
    for inputs, outputs in records:
        obs.observe(inputs, outputs, 0.0)


@pytest.mark.parametrize(("max_bytes", "sizes"), [(10 * 1024 * 1024, [30, 10]), (8000, [22, 18])])
def test_the_sealer_process_seals_the_batches_the_agents_writer_seals(tmp_path: Path, max_bytes: int,
                                                                     sizes: list[int]) -> None:
    """Minimised (an input dropped, columns masked and dropped), batches cut by ``batch.records`` or by the
    open-batch byte bound (maxBytes / 4: 2,000 bytes hold 22 records of 28 bytes plus 64 of index), and a rest
    sealed at close: the same arrays, index and metadata either way."""
    campaign = Campaign()
    section = campaign.section(batch={"records": 30}, maxBytes=max_bytes, keep={"inputs": ["x", "n"]}, redact=[
        {"input": "x", "columns": [1], "action": "mask"}, {"input": "x", "columns": [3, 4], "action": "drop"}])
    records = [({"x": np.full((1, 6), i, np.float32), "n": np.array([i], np.int32),
                 "secret": np.full((1, 3), 7, np.float32)}, {"y": np.full((1, 2), i, np.float32)})
               for i in range(40)]  # (at maxBytes 8,000 both batches fit in the spool: none purged)
    got = {}
    for mode in ("process", "thread"):
        dest = tmp_path / mode / "dest"
        svc = CaptureService(tmp_path / mode, "dev-1", sealer=mode)
        svc.configure({"mm": parse_policy({**section, "destination": {"directory": str(dest)}})},
                      models={"mm": "model-a"})
        _serve(svc, records)
        svc.close()
        files = [p for p, _ in svc.spool.list()] + sorted(dest.rglob("*.mfcap"))  # (some uploaded meanwhile)
        opened = [open_batch(p.read_bytes(), campaign.private, name=p.name) for p in files]
        got[mode] = sorted(opened, key=lambda b: float(b.arrays["n"][0]))  # (starts may tie)
        assert svc.counts["captured"] == 40 and svc.counts["purged"] == 0
    assert [b.meta["records"] for b in got["process"]] == sizes == [b.meta["records"] for b in got["thread"]]
    for a, b in zip(got["process"], got["thread"], strict=True):
        assert sorted(a.arrays) == sorted(b.arrays) == ["n", "x", "y"]  # "secret" is not kept
        for key in a.arrays:
            assert a.arrays[key].dtype == b.arrays[key].dtype and np.array_equal(a.arrays[key], b.arrays[key])
        assert a.arrays["x"].shape[1] == 4 and not a.arrays["x"][:, 1].any()  # 2 dropped, 1 masked
        same = ("device", "endpoint", "model", "modelVersion", "campaign", "purpose", "records", "rows",
                "triggers", "redactions", "keyId")
        assert {k: a.meta[k] for k in same} == {k: b.meta[k] for k in same}
        assert [(r["trigger"], r["rows"]) for r in a.meta["recordIndex"]] == \
            [(r["trigger"], r["rows"]) for r in b.meta["recordIndex"]]


def test_each_version_and_layout_is_a_stream_of_its_own(tmp_path: Path) -> None:
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": campaign.policy(batch={"records": 100})}, models={"mm": "m"})
    _serve(svc, [LAYOUTS["vector"](i) for i in range(5)], "1")
    _serve(svc, [LAYOUTS["three_rows"](i) for i in range(3)], "1")
    _serve(svc, [LAYOUTS["vector"](i) for i in range(4)], "2")
    wait_until(lambda: svc.wake_sealer() or (svc._sealer is not None and svc._sealer.backlog == 0), 10, "the rows taken")
    svc.close()
    batches = _opened(svc, campaign)
    assert sorted((b.meta["modelVersion"], b.meta["records"], b.meta["rows"]) for b in batches) == \
        [("1", 3, 9), ("1", 5, 5), ("2", 4, 4)]
    assert not svc.last_error


def test_a_batch_is_sealed_within_batch_interval_of_its_first_record(tmp_path: Path) -> None:
    """The sealer looks every quarter of the shortest batch.interval and seals a batch at the last look before
    the interval ends, not at the first after it: plaintext stays in memory no longer than the policy says."""
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": campaign.policy(batch={"records": 256, "interval": "2s"})})
    try:
        t0 = time.monotonic()
        _serve(svc, [LAYOUTS["vector"](i) for i in range(3)])
        wait_until(lambda: svc.counts["sealed"] == 1, 10, "the batch sealed by its interval")
        elapsed = time.monotonic() - t0
    finally:
        svc.close()
    assert [e["records"] for e in svc.spool.audit.read() if e["event"] == "sealed"] == [3]
    assert 1.0 <= elapsed <= 2.0 + 0.7  # (a look every 0.5 s; the slack: its way to the agent on a busy machine)


def test_close_seals_every_record_the_rings_hold(tmp_path: Path) -> None:
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": campaign.policy(batch={"records": 256})})
    _serve(svc, [LAYOUTS["vector"](i) for i in range(37)])
    svc.close()  # at once: the sealer has not looked at its ring yet
    [batch] = _opened(svc, campaign)
    assert batch.meta["records"] == 37 and batch.arrays["x"][:, 0].tolist() == list(range(37))
    assert svc.counts == {**svc.counts, "captured": 37, "sealed": 1}


def _sealer_pid(svc: CaptureService) -> int:
    sealer = svc._sealer
    assert sealer is not None and sealer.pid is not None
    return sealer.pid


def test_a_killed_sealer_is_reported_records_take_the_agents_way_and_it_starts_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealing_mod, "SEALER_RESTART_S", (0.5, 1.0))
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": campaign.policy(batch={"records": 10})})
    obs = svc.observer_for("mm", "1")
    try:
        for i in range(20):
            obs.observe(*LAYOUTS["vector"](i), 0.0)
        svc.seal_now()
        first = _sealer_pid(svc)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: svc.status()["sealer"].startswith("agent"), 10, "the crash reported")
        status = svc.status()
        assert status["sealer"] == "agent (the sealer process ended: killed by SIGKILL; it starts again in 0s)"
        assert status["sealerExits"] == 1
        for i in range(20, 30):  # no sealer now: the agent's own queue and writer
            obs.observe(*LAYOUTS["vector"](i), 0.0)
        wait_until(lambda: svc._sealer is not None and svc._sealer.ready.is_set(), 20, "a new sealer")
        assert _sealer_pid(svc) != first
        for i in range(30, 40):
            obs.observe(*LAYOUTS["vector"](i), 0.0)
        assert obs.stream is not None  # the new sealer's ring
        assert svc.status()["sealer"] == "process"
    finally:
        svc.close()
    seen = sorted(int(v) for b in _opened(svc, campaign) for v in b.arrays["x"][:, 0])
    assert seen == list(range(40))  # the first 20 were sealed before the kill: nothing was in its ring


def test_a_stopped_sealer_fills_its_ring_then_records_are_dropped_and_counted(tmp_path: Path) -> None:
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": campaign.policy(batch={"records": 256})})
    obs = svc.observer_for("mm", "1")
    obs.observe(*LAYOUTS["vector"](0), 0.0)
    ring = obs.stream
    assert ring is not None
    svc.seal_now()
    pid = _sealer_pid(svc)
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(ring.capacity + 50):
            obs.observe(*LAYOUTS["vector"](i), 0.0)
        assert svc.dropped == {"mm": 50}  # the request path never waited
    finally:
        os.kill(pid, signal.SIGCONT)
    svc.close()
    assert sum(b.meta["records"] for b in _opened(svc, campaign)) == 1 + ring.capacity
    assert [e["count"] for e in svc.spool.audit.read() if e["event"] == "dropped"] == [50]


def test_records_a_row_cannot_carry_are_sealed_by_the_agent(tmp_path: Path) -> None:
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": campaign.policy(batch={"records": 100})})
    wide = np.arange(64, dtype=np.float32).reshape(2, 32)
    _serve(svc, [({"x": wide[:, ::2]}, {}) for _ in range(3)])  # a strided view: no row copies it
    _serve(svc, [({"x": np.zeros((1, 100_000), np.float32)}, {}) for _ in range(2)])  # 400 KB records
    svc.close()
    batches = _opened(svc, campaign)
    assert sorted(b.meta["records"] for b in batches) == [2, 3]
    assert any(np.array_equal(b.arrays["x"][:2], wide[:, ::2]) for b in batches)


def test_with_sealer_thread_no_process_is_started(tmp_path: Path) -> None:
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1", sealer="thread")
    svc.configure({"mm": campaign.policy(batch={"records": 5})})
    _serve(svc, [LAYOUTS["vector"](i) for i in range(5)])
    wait_until(lambda: svc.counts["sealed"] == 1, 10, "the writer's batch")
    assert svc._sealer is None
    svc.close()
    with pytest.raises(ValueError, match="sealer must be one of process, thread"):
        CaptureService(tmp_path / "x", "dev-1", sealer="fork")


def test_a_stream_not_written_for_a_while_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.capture.sealer import link

    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    policies = {"mm": campaign.policy(batch={"records": 100})}
    svc.configure(policies)
    _serve(svc, [LAYOUTS["vector"](i) for i in range(3)])
    obs_ring = svc._sealer._streams  # type: ignore[union-attr]
    assert len(obs_ring) == 1
    monkeypatch.setattr(link, "IDLE_END_S", 0.2)
    svc.configure(policies)  # (the agent's pass: remembers when each ring was last written)
    time.sleep(0.3)
    svc.configure(policies)
    assert len(obs_ring) == 0
    wait_until(lambda: svc.counts["sealed"] == 1, 10, "the ended stream's rows sealed")
    svc.close()


def test_the_sealer_runs_only_while_a_policy_is_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealing_mod, "SEALER_IDLE_STOP_S", 1.0)
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    try:
        svc.configure({"mm": campaign.policy(batch={"records": 100})})
        first = _sealer_pid(svc)
        _serve(svc, [LAYOUTS["vector"](i) for i in range(3)])
        svc.configure({})  # capture turned off: its plaintext is dropped, never sealed
        svc.configure({"mm": campaign.policy(batch={"records": 100})})
        assert _sealer_pid(svc) == first  # on again soon after: the same process
        svc.configure({})
        wait_until(lambda: svc._sealer is None, 10, "the sealer ended by the writer thread, capture off for 1 s")
        wait_until(lambda: not os.path.exists(f"/proc/{first}"), 10, "the sealer process gone")
        assert svc.counts["sealed"] == 0 and not list(svc.spool.list())
        svc.configure({"mm": campaign.policy(batch={"records": 2})})
        assert _sealer_pid(svc) != first and svc._sealer.ready.is_set()  # type: ignore[union-attr]
        _serve(svc, [LAYOUTS["vector"](i) for i in range(2)])
        wait_until(lambda: svc.counts["sealed"] == 1, 10, "a batch of the new campaign")
        assert svc.status()["sealer"] == "process"
    finally:
        svc.close()


def test_the_policies_reach_the_sealer_only_when_they_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    try:
        svc.configure({"mm": campaign.policy()})
        sealer = svc._sealer
        assert sealer is not None
        sent: list[str] = []
        send = sealer._send
        monkeypatch.setattr(sealer, "_send", lambda *msg: sent.append(msg[0]) or send(*msg))
        for _ in range(5):  # every reconcile pass configures capture, with policies parsed again: equal ones
            svc.configure({"mm": campaign.policy()})
        assert sent == []  # (each message wakes the sealer process)
        svc.configure({})
        for _ in range(3):  # the writer's passes while capture is off and the process waits out its idle time
            svc._ensure_sealer(False)
        assert sent == ["config"]
        svc.configure({"mm": campaign.policy()})
        svc.configure({"mm": campaign.policy(sampleRate=0.5)})
        assert sent == ["config"] * 3
    finally:
        svc.close()


def test_a_sealer_that_stops_reading_is_replaced_not_waited_for(tmp_path: Path) -> None:
    """A stopped (or stuck) sealer's socket fills; the send that finds no room within SEND_TIMEOUT fails, and
    the process is killed and reported instead of holding up the agent."""
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    policies = [{f"ep-{i}": campaign.policy(purpose="x" * 400, sampleRate=rate) for i in range(40)}
                for rate in (0.5, 1.0)]  # a config message of ~40 KB
    try:
        svc.configure(policies[0])
        pid = _sealer_pid(svc)
        os.kill(pid, signal.SIGSTOP)
        slowest = 0.0
        for k in range(200):  # the agent's passes go on, each sending policies that changed
            t0 = time.monotonic()
            svc.configure(policies[(k + 1) % 2])
            slowest = max(slowest, time.monotonic() - t0)
            if svc.status().get("sealerExits"):
                break
        status = svc.status()
        assert status["sealerExits"] == 1 and "killed by SIGKILL" in status["sealer"], status
        assert slowest < 3.0  # one send waited SEND_TIMEOUT (1 s), then gave up
        assert not os.path.exists(f"/proc/{pid}/status") or "zombie" in open(f"/proc/{pid}/status").read()
    finally:
        svc.close()


def test_a_published_datasets_classifier_served_by_onnx_runtime_is_captured_through_the_sealer(
        tmp_path: Path) -> None:
    """scikit-learn's bundled digits, an MLP converted by skl2onnx (label [N] int64, probabilities [N, 10]),
    served by a real ONNX Runtime session: each request's features and answers come out of the sealed batches as
    they went in and out."""
    from reconciler.serving.registry import EndpointSpec, ModelRegistry
    from tests.optimize.realmodels import sklearn_classifier

    model = sklearn_classifier("digits", zipmap=False)
    campaign = Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    reg = ModelRegistry(observer_factory=lambda s: svc.observer_for(s.name, s.version))
    try:
        assert reg.apply(EndpointSpec(name="digits", version="1", blobs=[model.onnx])).ok
        svc.configure({"digits": campaign.policy(batch={"records": 50})}, models={"digits": "mlp"})
        with reg.get("digits") as served:
            answered = [served.infer({"X": model.x[i:i + 1]}, None)["label"] for i in range(60)]
        assert svc.status()["sealer"] == "process"
    finally:
        svc.close()
        reg.close()
    batches = sorted((open_batch(p.read_bytes(), campaign.private) for p, _ in svc.spool.list()),
                     key=lambda b: -b.meta["records"])
    assert [b.meta["records"] for b in batches] == [50, 10]
    x = np.concatenate([b.arrays["X"] for b in batches])
    assert np.array_equal(x, model.x[:60])
    labels = np.concatenate([b.arrays["label"] for b in batches])
    assert np.array_equal(labels, np.concatenate(answered))  # what the device answered, as it answered it
    assert np.mean(labels == model.clf.predict(model.x[:60])) >= 0.95  # (float32 ONNX vs float64 sklearn)
    assert all(b.arrays["probabilities"].shape == (b.meta["records"], 10) for b in batches)
