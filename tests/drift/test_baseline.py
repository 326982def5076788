"""`modelfleet baseline`: real ONNX Runtime / OpenVINO runs of generated models on .npz samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reconciler.devkit.modelgen import matmul_model, small_cnn, to_openvino_ir
from reconciler.drift.baseline import Baseline, BaselineError
from tests._cli import run_cli


@pytest.fixture
def mm(tmp_path: Path) -> Path:
    p = tmp_path / "mm.onnx"
    p.write_bytes(matmul_model(seed=1))
    return p


def sample(tmp_path: Path, name: str = "s.npz", **arrays: np.ndarray) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_json_output_and_a_loadable_reproducible_baseline(tmp_path: Path, mm: Path) -> None:
    rng = np.random.default_rng(0)
    data = sample(tmp_path, input=rng.normal(size=(1500, 16)).astype(np.float32), labels=rng.integers(0, 4, 1500))
    r = run_cli("baseline", str(mm), "--data", str(data), "--bins", "8", "--out", str(tmp_path / "b.json"),
                "--format", "json")
    assert r.code == 0, r.text
    out = json.loads(r.out)
    assert out["rows"] == 1500 and out["features"] == [f"input[{i}]" for i in range(16)] + ["output:class"]
    for m in ("psi", "js", "ks", "linf"):
        assert 0.0 <= out["falseAlarm"]["methods"][m]["alertRate"] <= 0.01
    doc = json.loads((tmp_path / "b.json").read_text())
    f0 = doc["features"][0]
    assert len(f0["edges"]) == 7 and abs(sum(f0["reference"]) - 1) < 1e-9 and f0["stats"]["std"] > 0.9
    assert "labels" not in {t["name"] for t in doc["tensors"]}  # ground truth is not a model input
    b = Baseline.from_bytes((tmp_path / "b.json").read_bytes())
    assert len(b.features) == 17 and b.features[-1].categorical and b.features[-1].width == 5
    run_cli("baseline", str(mm), "--data", str(data), "--bins", "8", "--out", str(tmp_path / "again.json"))
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "b.json").read_bytes()


@pytest.mark.parametrize(("arrays", "message"), [
    ({"input": np.zeros((20, 15), np.float32)}, "sample shape [20, 15] does not match the model's [-1, 16]"),
    ({"x": np.zeros((20, 16), np.float32)}, "model input 'input' is missing (the sample has x)"),
    ({"input": np.zeros((20, 16), np.float32), "extra": np.zeros(3)}, "arrays the model has no input for: extra"),
    ({"input": np.zeros((20, 16), np.complex64)}, "sample dtype complex64 cannot feed a FP32 input"),
])
def test_sample_that_does_not_fit_the_model_is_a_clear_error(tmp_path: Path, mm: Path, arrays: dict[str, np.ndarray],
                                                             message: str) -> None:
    data = sample(tmp_path, **arrays)
    r = run_cli("baseline", str(mm), "--data", str(data), "--out", str(tmp_path / "b.json"))
    assert r.code == 1 and r.err.startswith(f"error: {data}: ") and message in r.err, r.err
    assert "Traceback" not in r.text and not (tmp_path / "b.json").exists()


def test_other_user_errors(tmp_path: Path, mm: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    r = run_cli("baseline", str(mm), "--data", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "b.json"))
    assert r.code == 1 and "not a readable .npz sample" in r.err
    data = sample(tmp_path, input=np.zeros((20, 16), np.float32))
    r = run_cli("baseline", str(mm), "--data", str(data), "--inputs", "nope", "--out", str(tmp_path / "b.json"))
    assert r.code == 1 and "--inputs: the model has no tensor 'nope'" in r.err
    r = run_cli("baseline", str(tmp_path / "missing.onnx"), "--data", str(data), "--out", str(tmp_path / "b.json"))
    assert r.code == 1 and "no such model file" in r.err
    with pytest.raises(BaselineError, match="formatVersion"):
        Baseline.from_bytes(b'{"kind": "DriftBaseline", "formatVersion": 99}')


def test_image_inputs_get_per_channel_summaries_and_openvino_agrees(tmp_path: Path) -> None:
    onnx_path = tmp_path / "cnn.onnx"
    onnx_path.write_bytes(small_cnn(seed=0))
    xml, _ = to_openvino_ir(onnx_path.read_bytes(), tmp_path / "ir", "cnn")
    rng = np.random.default_rng(1)
    data = sample(tmp_path, image=rng.normal(size=(200, 3, 32, 32)).astype(np.float32))
    docs = []
    for model in (onnx_path, xml):
        out = tmp_path / f"{model.suffix[1:]}.json"
        r = run_cli("baseline", str(model), "--data", str(data), "--out", str(out))
        assert r.code == 0, r.text
        docs.append(json.loads(out.read_text()))
    names = [f["name"] for f in docs[0]["features"]]
    assert names == [f"image:c{c}:{s}" for c in range(3) for s in ("mean", "std")] + ["logits:class"]
    assert set(docs[0]["features"][0]["stats"]) == {"mean", "std", "min", "p05", "median", "p95", "max", "mad"}
    # the inputs are the same numbers; the predicted classes of both runtimes agree on this sample
    assert docs[0]["features"][:6] == docs[1]["features"][:6]
    assert np.allclose(docs[0]["features"][6]["reference"], docs[1]["features"][6]["reference"], atol=0.01)
