"""The streaming monitor without a server: bounded queue (drop-and-count), sampling, batching, NaN outputs,
time-decayed windows, the status refresh interval, bounded metric series, and real ONNX Runtime inferences
through the registry's observer hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import REGISTRY

from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.drift.baseline import Baseline, build_baseline
from reconciler.drift.features import TensorLayout
from reconciler.drift.monitor import DriftSupervisor, EndpointMonitor
from reconciler.drift.settings import DriftSettings, decode_counts, device_conditions
from reconciler.serving.registry import EndpointSpec, ModelRegistry


def baseline(columns: int = 3) -> Baseline:
    rng = np.random.default_rng(0)
    lays = [TensorLayout("x", "input", "tabular", columns=columns), TensorLayout("y", "output", "classes", columns=3)]
    doc = build_baseline(lays, {"x": rng.normal(size=(3000, columns)), "y": rng.normal(size=(3000, 3))}, window=200)
    return Baseline.from_bytes(json.dumps(doc).encode())


def request(rng: np.random.Generator, rows: int = 2, shift: float = 0.0, columns: int = 3
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = rng.normal(size=(rows, columns)) + shift
    return {"x": x}, {"y": rng.normal(size=(rows, 3))}


def test_full_queue_drops_and_counts_and_sampling_skips() -> None:
    m = EndpointMonitor("e", "1")
    m.configure(DriftSettings(queue=5, window=200, min_samples=10), baseline())
    rng = np.random.default_rng(1)
    for _ in range(8):
        m.observe(*request(rng), 0.001)
    assert (m.requests, len(m._queue), m.dropped) == (8, 5, 3)
    assert m.process(now=0.0) == 5 and m.monitored == 5 and m._window.n == 10  # 5 requests × 2 rows
    m.configure(DriftSettings(queue=5, sample_rate=0.25, window=200, min_samples=10), m.baseline)
    for _ in range(400):
        m.observe(*request(rng), 0.001)
        m.process(now=1.0)
    assert 60 <= m.monitored - 5 <= 140 and m.sampled_out + m.monitored - 5 == 400  # ~25 % monitored


def test_batched_requests_give_the_same_window_as_one_by_one_and_nan_outputs_are_counted() -> None:
    rng = np.random.default_rng(2)
    reqs = [request(rng, rows=int(rng.integers(1, 4))) for _ in range(50)]
    reqs[7][1]["y"][0, 1] = np.nan
    reqs[9][1]["y"][:, 0] = np.inf
    a, b = EndpointMonitor("a", "1"), EndpointMonitor("b", "1")
    for m in (a, b):
        m.configure(DriftSettings(window=1000, min_samples=10, queue=1000), baseline())
    for feeds, outs in reqs:
        a.observe(feeds, outs, 0.001)
        a.process(now=0.0)  # one at a time
        b.observe(feeds, outs, 0.001)
    b.process(now=0.0)  # all in one batch
    assert [c.tolist() for c in a._window.counts()] == [c.tolist() for c in b._window.counts()]
    assert a.nan_outputs == b.nan_outputs == 2
    ops = b.operational()
    assert ops["nanOutputs"] == 2 and ops["degraded"] == ["2 request(s) with NaN/inf outputs"]


def test_decay_window_forgets_old_traffic_and_status_refreshes_on_interval_or_level_change() -> None:
    m = EndpointMonitor("e", "1")
    m.configure(DriftSettings(half_life=60.0, min_samples=50, report_interval=300.0), baseline())
    rng = np.random.default_rng(3)
    for _ in range(100):
        m.observe(*request(rng), 0.001)
    m.process(now=0.0)
    drift, _ = m.published(now=0.0)
    assert drift["level"] == "OK" and drift["halfLifeSeconds"] == 60.0 and drift["samples"] == 200
    for _ in range(100):
        m.observe(*request(rng, shift=2.0), 0.001)
    m.process(now=600.0)  # ten half-lives later the old traffic weighs ~0.1 %
    drift, _ = m.published(now=600.0)  # the level changed: published at once
    assert drift["level"] == "Alert" and 200 <= drift["samples"] <= 201
    assert sum(decode_counts(drift["bins"]["x[0]"])) == 200
    m.observe(*request(rng, shift=2.0), 0.001)
    m.process(now=700.0)
    assert m.published(now=700.0)[1]["requests"] == 200  # same level, within the interval: unchanged
    assert m.published(now=900.0)[1]["requests"] == 201  # interval over: refreshed


def test_metric_series_stay_bounded_to_top_k_and_go_away_with_the_version() -> None:
    sup = DriftSupervisor()
    m = sup.observer_for(EndpointSpec(name="bounded", version="7"))
    m.configure(DriftSettings(window=200, min_samples=10, top_k=2), baseline(columns=12))
    rng = np.random.default_rng(4)
    for _ in range(100):
        m.observe(*request(rng, columns=12), 0.001)
    sup.drain()

    def series() -> list[str]:
        return [s.labels.get("feature", "") for mf in REGISTRY.collect() for s in mf.samples
                if s.labels.get("endpoint") == "bounded"]

    assert len([f for f in series() if f]) == 2  # 13 features monitored, 2 exported
    sup.retire(())
    assert series() == []
    sup.close()


def test_registry_observer_sees_real_inferences_and_errors() -> None:
    sup = DriftSupervisor()
    reg = ModelRegistry(observer_factory=sup.observer_for)
    model = matmul_model(seed=1)
    try:
        assert reg.apply(EndpointSpec(name="mm", version="1", blobs=[model], probe=make_probe(model))).ok
        with reg.get("mm") as lm:
            for _ in range(5):
                lm.infer({"input": np.zeros((2, 16), np.float32)})
            try:
                lm.infer({"input": np.zeros((2, 3), np.float32)})
            except Exception:
                pass
        m = sup.get("mm", "1")
        assert m is not None and (m.requests, m.errors, len(m._queue)) == (6, 1, 5)
        ops = m.operational()
        assert ops["latencyMs"]["p50"] > 0
    finally:
        reg.close()
        sup.close()


def test_device_conditions_summarise_the_endpoints() -> None:
    eps = [{"name": "a", "version": "1", "drift": {"level": "OK", "score": 0.01, "method": "psi", "worst": []},
            "operational": {"degraded": []}},
           {"name": "b", "version": "2", "drift": {"level": "Warning", "score": 0.13, "method": "psi",
                                                    "worst": [{"feature": "x[1]", "score": 0.13}]},
            "operational": {"degraded": ["p99 latency 80.00 ms > 50 ms"]}}]
    (drift, degraded) = device_conditions(eps)
    assert drift == ("DriftDetected", True, "DriftWarning", "b@2: psi 0.13 (warning; worst x[1]=0.13)")
    assert degraded == ("Degraded", True, "OperationalSignals", "b@2: p99 latency 80.00 ms > 50 ms")
    assert device_conditions([])[0][2] == "InsufficientData"


def test_feedback_joins_labels_by_request_id_within_a_bounded_window() -> None:
    from reconciler.drift.feedback import FeedbackJoin

    m = EndpointMonitor("e", "1")
    m.configure(DriftSettings(window=200, min_samples=10), baseline())
    rng = np.random.default_rng(6)
    preds = {}
    for i in range(4):
        feeds, outs = request(rng, rows=2)
        preds[f"r{i}"] = np.argmax(outs["y"], axis=1).tolist()
        m.observe(feeds, outs, 0.001, request_id=f"r{i}")
    body = {"feedback": [{"id": "r0", "labels": preds["r0"]}, {"id": "r1", "labels": [1 - preds["r1"][0], 9]},
                         {"id": "nope", "label": 1}, {"id": "r2", "label": 0}]}
    status, answer = m.feedback(json.dumps(body).encode(), now=10.0)
    assert status == 200
    assert (answer["joined"], answer["unknown"], answer["mismatched"]) == (2, 1, 1)
    assert answer["labelled"] == 4 and answer["accuracy"] in (0.5, 0.75)  # r1's second label is wrong on purpose
    assert m.feedback(json.dumps({"feedback": [{"id": "r0", "label": 1}]}).encode(), now=11.0)[1]["unknown"] == 1
    assert m.operational()["feedback"]["joined"] == 2
    for bad, msg in ((b"{", "not JSON"), (b'{"feedback": []}', "expected"), (b'{"feedback": [{"id": "x"}]}', "label")):
        status, answer = m.feedback(bad, now=12.0)
        assert status == 400 and msg in answer["error"]
    j = FeedbackJoin(join_window=60.0, max_pending=2)
    for i in range(3):
        j.remember(f"q{i}", np.array([1]), now=float(i))
    assert j.evicted == 1 and j.feedback([("q0", [1])], now=5.0)["unknown"] == 1  # pushed out by the bound
    assert j.feedback([("q1", [1])], now=100.0)["unknown"] == 1  # older than the join window


def test_feedback_endpoint_on_the_real_server_gives_online_accuracy() -> None:
    import http.client

    from reconciler.serving.http.server import InferenceServer

    sup = DriftSupervisor()
    reg = ModelRegistry(observer_factory=sup.observer_for)
    model = matmul_model(seed=1)
    assert reg.apply(EndpointSpec(name="clf", version="1", blobs=[model], probe=make_probe(model))).ok
    srv = InferenceServer(reg)
    srv.start()

    def post(path: str, doc: dict) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("POST", path, body=json.dumps(doc).encode())
        r = conn.getresponse()
        out = r.status, json.loads(r.read())
        conn.close()
        return out

    try:
        rng = np.random.default_rng(8)
        truth = []
        for i in range(10):
            x = rng.normal(size=(1, 16)).astype(np.float32)
            status, out = post("/v2/models/clf/infer", {"id": f"req-{i}", "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]})
            assert status == 200 and out["id"] == f"req-{i}"
            predicted = int(np.argmax(out["outputs"][0]["data"]))
            truth.append({"id": f"req-{i}", "label": predicted if i < 8 else (predicted + 1) % 4})
        status, answer = post("/v2/models/clf/feedback", {"feedback": truth})
        assert status == 200 and answer["joined"] == 10 and answer["accuracy"] == 0.8
        status, answer = post("/v2/models/clf/feedback", {"feedback": "nope"})
        assert status == 400 and "expected" in answer["error"]
        assert post("/v2/models/other/feedback", {"feedback": truth})[0] == 404
    finally:
        srv.stop()
        reg.close()
        sup.close()


def test_an_oversized_status_sheds_drift_bins_last_and_keeps_the_verdict() -> None:
    from reconciler.gitops.statuswriter import dump_status, trim_status
    from tests._git_fixtures import make_status

    doc = make_status("cam-1")
    ep = doc["status"]["endpoints"][0]
    ep["drift"] = {"level": "Alert", "score": 0.4, "worst": [{"feature": "f0", "score": 0.4}],
                   "bins": {f"f{i}": " ".join(["123456"] * 60) for i in range(64)}}
    doc["status"]["endpoints"] = [dict(ep, name=f"e{i}") for i in range(3)]
    assert len(dump_status(doc)) > 64 * 1024
    small = trim_status(doc)
    assert len(dump_status(small)) <= 64 * 1024
    assert all("bins" not in e["drift"] and e["drift"]["level"] == "Alert" for e in small["status"]["endpoints"])


def test_more_than_64_features_the_status_says_so_and_keeps_the_worst() -> None:
    """70 monitored features: 6 are left out of `bins`, counted in `binsOmitted`, and they are not the drifting
    ones; the verdict still sees every feature."""
    rng = np.random.default_rng(9)
    m2 = EndpointMonitor("wider", "1")
    rng0 = np.random.default_rng(0)
    lays = [TensorLayout("x", "input", "tabular", columns=64), TensorLayout("z", "input", "tabular", columns=5),
            TensorLayout("y", "output", "classes", columns=3)]
    doc = build_baseline(lays, {"x": rng0.normal(size=(3000, 64)), "z": rng0.normal(size=(3000, 5)),
                                "y": rng0.normal(size=(3000, 3))}, window=1000)
    m2.configure(DriftSettings(window=1000, min_samples=100, max_per_second=None),
                 Baseline.from_bytes(json.dumps(doc).encode()))
    for _ in range(150):
        x = rng.normal(size=(2, 64))
        x[:, 60:] += 3.0  # the last four columns of x drift
        m2.observe({"x": x, "z": rng.normal(size=(2, 5))}, {"y": rng.normal(size=(2, 3))}, 0.001)
    m2.process(now=0.0)
    drift, _ = m2.published(now=0.0)
    assert drift["features"] == 70 and drift["binsOmitted"] == 6 and len(drift["bins"]) == 64
    assert {f"x[{i}]" for i in range(60, 64)} <= set(drift["bins"])  # the drifting ones are kept …
    assert drift["level"] == "Alert" and drift["worst"][0]["feature"].startswith("x[6")  # … and judged
    from reconciler.drift.monitor import status_features

    kept = status_features(m2.baseline.features, {"x[3]": 9.0})
    assert "x[3]" in kept and len(kept) == 64  # the worst first, then by name


def test_regression_feedback_values_and_thresholds() -> None:
    from reconciler.drift.feedback import FeedbackError, FeedbackJoin, parse_feedback
    from reconciler.drift.settings import FeedbackSettings, feedback_breaches

    assert parse_feedback(b'{"feedback": [{"id": "a", "value": 2.5}, {"id": "b", "values": [1, 2]}]}') == [
        ("a", [2.5]), ("b", [1.0, 2.0])]
    for bad in (b'{"feedback": [{"id": "a", "value": "x"}]}', b'{"feedback": [{"id": "a", "values": []}]}',
                b'{"feedback": [{"id": "a", "value": NaN}]}'):
        try:
            parse_feedback(bad)
            raise AssertionError(bad)
        except FeedbackError as exc:
            assert "value" in str(exc)
    j = FeedbackJoin()
    j.remember("r", np.array([10.0, 20.0]), now=0.0, kind="value")
    j.remember("c", np.array([1]), now=0.0)
    out = j.feedback([("r", [12.0, 16.0]), ("c", [1.5])], now=1.0)  # a fractional label for a classifier
    assert (out["joined"], out["mismatched"]) == (1, 1)
    assert out["mae"] == 3.0 and out["rmse"] == pytest.approx(np.sqrt(10.0)) and out["accuracy"] is None
    s = DriftSettings(feedback=FeedbackSettings(min_accuracy=0.9, max_mae=2.0, min_labelled=2))
    assert feedback_breaches(out, s) == ["MAE 3 > 2 over the last 2 labelled rows"]
    assert feedback_breaches({**out, "labelled": 1}, s) == []  # too few labels: not judged
    assert feedback_breaches({"accuracy": 1.0, "labelled": 500}, s) == []  # right labels never breach
    (_, degraded) = device_conditions([{"name": "a", "version": "1", "operational": {
        "degraded": ["MAE 3 > 2", "1 request(s) with NaN/inf outputs"], "feedback": {"breaches": ["MAE 3 > 2"]}}}])
    assert degraded[:3] == ("Degraded", True, "OperationalSignals")  # operational signals win the reason
