"""Capture through the real KServe v2 server and ONNX Runtime: what is written, what a decrypted batch holds, and
that nothing on the device can read it back."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.capture.batch import BatchError, open_batch
from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
from reconciler.devkit.modelgen import matmul_model
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from tests._cli import run_cli
from tests._serving_fixtures import call
from tests.capture._capture import Campaign, assert_no_key_material

MODEL = matmul_model(seed=3)
INPUT_DECL = [{"name": "input", "datatype": "FP32", "shape": [-1, 16], "range": {"min": -100000, "max": 100000}}]


class Device:
    """A registry + server whose versions report to a CaptureService in ``state``."""

    def __init__(self, state: Path, campaign: Campaign, **policy: Any) -> None:
        self.state = state
        self.campaign = campaign
        self.capture = CaptureService(state, "dev-1")
        self.registry = ModelRegistry(observer_factory=lambda s: self.capture.observer_for(s.name, s.version))
        assert self.registry.apply(EndpointSpec(name="mm", version="1.0", blobs=[MODEL], inputs=INPUT_DECL)).ok
        self.capture.configure({"mm": parse_policy(campaign.section(**policy))}, models={"mm": "matmul"})
        self.server = InferenceServer(self.registry)
        self.server.start()

    def infer(self, row: list[float]) -> int:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": row}]}
        return call(self.server, "POST", "/v2/models/mm/infer", body)[0]

    def close(self) -> None:
        self.server.stop()
        self.capture.close()
        self.registry.close()

    def batches(self) -> list[Path]:
        return sorted((self.state / "capture" / "batches").glob("*.mfcap"))

    def opened(self) -> list[Any]:
        return [open_batch(p.read_bytes(), self.campaign.private, name=p.name) for p in self.batches()]


@pytest.fixture
def campaign() -> Campaign:
    return Campaign()


@pytest.fixture
def make_device(tmp_path: Path, campaign: Campaign) -> Iterator[Any]:
    made: list[Device] = []

    def make(**policy: Any) -> Device:
        d = Device(tmp_path / f"state{len(made)}", campaign, **policy)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def _row(i: int) -> list[float]:
    return [float(i), *[float(c) for c in range(1, 16)]]


def test_policy_off_writes_nothing(tmp_path: Path, campaign: Campaign) -> None:
    state = tmp_path / "state"
    svc = CaptureService(state, "dev-1")
    reg = ModelRegistry(observer_factory=lambda s: svc.observer_for(s.name, s.version))
    assert reg.apply(EndpointSpec(name="mm", version="1.0", blobs=[MODEL])).ok
    svc.configure({"mm": parse_policy({"enabled": False, "sampleRate": 1.0})})
    srv = InferenceServer(reg)
    srv.start()
    try:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": _row(1)}]}
        for _ in range(50):
            assert call(srv, "POST", "/v2/models/mm/infer", body)[0] == 200
    finally:
        srv.stop()
        svc.close()
        reg.close()
    assert not state.exists() or list(state.rglob("*")) == []
    assert svc.counts["captured"] == 0


def test_sample_rate_and_redaction_in_the_decrypted_batches(make_device: Any) -> None:
    n, rate = 1500, 0.1
    dev = make_device(sampleRate=rate, batch={"records": 40}, keep={"outputs": []},
                      redact=[{"input": "input", "columns": [2, 3]}, {"input": "input", "columns": [5], "action": "mask"}])
    for i in range(n):
        assert dev.infer(_row(i)) == 200
    dev.capture.close()
    opened = dev.opened()
    records = sum(b.meta["records"] for b in opened)
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(records - n * rate) < 5 * sd, records
    ids = set()
    for b in opened:
        assert set(b.arrays) == {"input"}  # outputs not kept
        x = b.arrays["input"]
        assert x.shape == (b.meta["records"], 14)  # columns 2 and 3 dropped
        # request columns [i, 1, 2, 3, 4, 5, 6, …]: 2 and 3 dropped, 5 masked
        assert x[:, 1:5].tolist() == [[1.0, 4.0, 0.0, 6.0]] * len(x)
        ids.update(int(v) for v in x[:, 0])
        assert b.meta["device"] == "dev-1" and b.meta["endpoint"] == "mm" and b.meta["modelVersion"] == "1.0"
        assert b.meta["model"] == "matmul" and b.meta["start"] <= b.meta["end"]
        assert {r["trigger"] for r in b.meta["recordIndex"]} == {"sampled"}
    assert len(ids) == records  # each captured request exactly once
    events = [e["event"] for e in dev.capture.spool.audit.read()]
    assert events.count("sealed") == len(opened)


def test_rejected_and_low_confidence_requests_are_captured(make_device: Any) -> None:
    dev = make_device(sampleRate=0.0, triggers={"rejected": True, "lowConfidence": {"output": "output", "below": -50}})
    assert dev.infer([1e6] * 16) == 400  # above the declared maximum: rejected, captured
    assert dev.infer(_row(1)) == 200  # confident enough: not captured
    assert dev.infer([-900.0] * 16) == 200 or True
    dev.capture.close()
    triggers = [r["trigger"] for b in dev.opened() for r in b.meta["recordIndex"]]
    assert triggers[0] == "rejected"
    assert set(triggers) <= {"rejected", "lowConfidence"}
    rejected = [b for b in dev.opened() if b.meta["triggers"].get("rejected")][0]
    assert rejected.arrays["input"][0, 0] == 1e6


def test_nothing_on_the_device_can_decrypt_its_batches(make_device: Any, campaign: Campaign) -> None:
    dev = make_device(sampleRate=1.0, batch={"records": 5})
    for i in range(12):
        assert dev.infer(_row(i)) == 200
    dev.capture.close()
    files = [p for p in dev.state.rglob("*") if p.is_file()]
    assert len(dev.batches()) == 3 and any(p.name == "audit.log" for p in files)
    assert_no_key_material(dev.state, campaign)
    stranger = Campaign()
    with pytest.raises(BatchError, match="sealed to key"):
        open_batch(dev.batches()[0].read_bytes(), stranger.private)
    audit = (dev.state / "capture" / "audit.log").read_text()
    assert "1.0, 2.0" not in audit and "input" not in audit  # ids and counts, never content


def test_open_rejects_tampered_and_truncated_batches_and_opens_the_rest(make_device: Any, campaign: Campaign,
                                                                        tmp_path: Path) -> None:
    dev = make_device(sampleRate=1.0, batch={"records": 2})
    for i in range(8):
        assert dev.infer(_row(i)) == 200
    dev.capture.close()
    good, flipped, truncated, relabelled = dev.batches()
    data = bytearray(flipped.read_bytes())
    data[-40] ^= 1
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    relabelled.write_bytes(relabelled.read_bytes().replace(b'"endpoint":"mm"', b'"endpoint":"xx"', 1))
    key = tmp_path / "campaign.key"
    key.write_text(base64.b64encode(campaign.private).decode() + "\n")
    out = tmp_path / "opened"
    r = run_cli("data", "open", "--key", str(key), "--out", str(out), str(good), str(flipped), str(truncated),
                str(relabelled))
    assert r.code == 1
    assert "Traceback" not in r.text
    assert f"error: {flipped}: payload does not match its header hash (tampered)" in r.err
    assert f"error: {truncated}: payload is" in r.err and "truncated" in r.err
    assert f"error: {relabelled}: header field 'endpoint' is 'xx' but the sealed metadata says 'mm'" in r.err
    assert "1 of 4 batch(es) opened" in r.out
    gid = good.name.removesuffix(".mfcap")
    with np.load(out / f"{gid}.npz") as z:
        assert sorted(z.files) == ["input", "output"]
        first = z["input"][:, 0].tolist()
        assert first in ([0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0])
    assert sorted(p.name for p in out.iterdir()) == [f"{gid}.json", f"{gid}.npz"]


def test_drift_trigger_captures_while_the_alert_is_on(make_device: Any) -> None:
    dev = make_device(sampleRate=0.0, triggers={"drift": True})
    assert dev.infer(_row(0)) == 200
    dev.capture.set_drifting({"mm"})
    for i in range(1, 4):
        assert dev.infer(_row(i)) == 200
    dev.capture.set_drifting(set())
    assert dev.infer(_row(9)) == 200
    dev.capture.close()
    (batch,) = dev.opened()
    assert batch.arrays["input"][:, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch.meta["triggers"] == {"drift": 3}
