"""`modelfleet optimize` end to end on generated models: real quantizers, real runtimes, real TUF, real manifests.

One run on the small CNN classifier (every variant kind, published and written into a commented manifest of a
fleet with three hardware classes) is shared by the tests below; a second, small run on the tabular MLP shows
a variant over the accuracy budget being dropped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.devkit import modelgen
from reconciler.distribution import tufrepo
from reconciler.distribution.httpserve import StaticServer
from reconciler.distribution.store import ModelStore
from reconciler.distribution.tufclient import TufClient
from reconciler.optimize.inspect import file_precision
from reconciler.optimize.plan import KIND_NAMES
from reconciler.serving.health import HealthPolicy, run_health_check
from reconciler.serving.precision import openvino_hint
from reconciler.serving.runtimes import load_backend
from tests._cli import run_cli

MODEL_YAML = """\
# yaml-language-server: $schema=../../schemas/model.schema.json
apiVersion: modelfleet/v1
kind: Model
metadata:
  name: classifier  # the paint-line defect classifier
spec:
  task: image-classification
  inputs:
    - name: image
      datatype: FP32
      shape: [-1, 3, 32, 32]
  outputs:
    - name: logits
      datatype: FP32
      shape: [-1, 10]
  versions:
    # first release, hand-made
    - version: "1.0.0"
      variants:
        - name: generic
          runtime: onnxruntime
          targets: [classifier/1.0.0/model.onnx]
"""
FLEET_YAML = """\
apiVersion: modelfleet/v1
kind: Fleet
metadata: {name: test}
spec:
  tuf: {metadataUrl: "http://127.0.0.1:1/metadata", targetsUrl: "http://127.0.0.1:1/targets"}
"""
DEPLOYMENT_YAML = """\
apiVersion: modelfleet/v1
kind: Deployment
metadata: {name: classifier}
spec:
  model: classifier
  version: "1.0.0"
  serveAs: classifier
  runtime: {preferences: [onnxruntime]}
"""
RUNTIMES = {"runtime.onnxruntime": "1.20.1", "runtime.openvino": "2025.1.0"}
DEVICES = {
    "nuc-1": ("x86-avx2", {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2", "fma"], **RUNTIMES}),
    "xeon-1": ("x86-vnni", {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2", "avx512_vnni"], **RUNTIMES}),
    "pi-1": ("pi4", {"hw.arch": "aarch64", "hw.cpuFlags": ["asimd", "neon"], "runtime.onnxruntime": "1.20.1"}),
}


@dataclass
class Run:
    tmp: Path
    fleet: Path
    repo: Path
    keys: Path
    out: Path
    data: dict[str, np.ndarray]
    model: bytes
    report: dict[str, Any]
    stderr: str

    def variant(self, kind: str) -> dict[str, Any]:
        return next(v for v in self.report["variants"] if v["kind"] == kind)


def _device_yaml(name: str, hw_class: str, facts: dict[str, Any]) -> str:
    return (f"apiVersion: modelfleet/v1\nkind: Device\nmetadata: {{name: {name}}}\n"
            f"spec:\n  hardwareClass: {hw_class}\n  facts: {json.dumps(facts)}\n")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("optimize")
    fleet = tmp / "fleet"
    for rel, text in {"fleet.yaml": FLEET_YAML, "models/classifier.yaml": MODEL_YAML,
                      "deployments/classifier.yaml": DEPLOYMENT_YAML,
                      **{f"devices/{n}.yaml": _device_yaml(n, c, f) for n, (c, f) in DEVICES.items()}}.items():
        (fleet / rel).parent.mkdir(parents=True, exist_ok=True)
        (fleet / rel).write_text(text)
    model = modelgen.small_cnn(seed=3)
    (tmp / "cnn.onnx").write_bytes(model)
    repo, keys = tmp / "repo", tmp / "keys"
    tufrepo.init_repo(repo, keys)
    tufrepo.add_targets(repo, [keys], [tmp / "cnn.onnx"], "classifier/1.0.0")
    (repo / "targets" / "classifier" / "1.0.0").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp / "cnn.onnx", tmp / "model.onnx")
    tufrepo.add_targets(repo, [keys], [tmp / "model.onnx"], "classifier/1.0.0")
    data = modelgen.make_sample(model, 96, seed=5, labels=True)
    np.savez(tmp / "cnn.npz", **data)
    res = run_cli("optimize", str(tmp / "cnn.onnx"), "--data", str(tmp / "cnn.npz"), "--out", str(tmp / "out"),
                  "--calibration", "32", "--runs", "5", "--batch", "4", "--max-drop", "top1=10%",
                  "--manifest", str(fleet / "models" / "classifier.yaml"), "--version", "2.0.0",
                  "--publish", str(repo), "--keys", str(keys), "--format", "json")
    assert res.code == 0, res.text
    return Run(tmp, fleet, repo, keys, tmp / "out", data, model, json.loads(res.out), res.err)


def test_every_variant_kind_is_built_measured_and_loads(cnn_run: Run) -> None:
    # The fleet has a VNNI class with OpenVINO: every kind is worth building.
    assert [v["kind"] for v in cnn_run.report["variants"]] == list(KIND_NAMES)
    for v in cnn_run.report["variants"]:
        assert v["status"] in ("kept", "dropped"), v
        assert v["agreement"]["samples"] == 64 and v["speed"]["latency_p50_ms"] > 0, v
        assert v["memory"]["load_rss_mb"] >= 0 and v["sizeBytes"] > 0, v
    kept = {v["kind"] for v in cnn_run.report["variants"] if v["status"] == "kept"}
    assert kept == {"ort-int8-static", "ort-fp32", "ov-int8", "ov-fp16"}
    assert "superseded" in cnn_run.variant("ort-int8-dynamic")["reason"]
    assert "superseded" in cnn_run.variant("ov-fp32")["reason"]
    # Kept files (and only those) are in --out, load in their runtime, and have the precision they claim.
    names = sorted(p.name for p in cnn_run.out.iterdir())
    assert names == sorted(f for k in kept for f in cnn_run.variant(k)["files"] + [f"{k}.probe.json"])
    assert cnn_run.variant("ort-int8-static")["sizeBytes"] < cnn_run.report["reference"]["sizeBytes"] / 3
    for k in kept:
        v = cnn_run.variant(k)
        files = [cnn_run.out / f for f in v["files"]]
        assert file_precision(files[0]) == v["precision"]
        backend = load_backend(v["runtime"], files=files, threads=1, precision=v["precision"])
        assert backend.infer({"image": cnn_run.data["image"][:2]})["logits"].shape == (2, 10)
        backend.close()


def _independent_outputs(path: Path, images: np.ndarray, precision: str = "fp32") -> np.ndarray:
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {"image": images})[0])
    import openvino as ov

    # The inference precision a device uses for the declared precision (not this CPU's default).
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": openvino_hint(precision)})
    return np.asarray(compiled({"image": images})[0])


def test_agreement_matches_an_independent_computation(cnn_run: Run) -> None:
    images, labels = cnn_run.data["image"][32:], cnn_run.data["labels"][32:]
    ref = _independent_outputs(cnn_run.tmp / "cnn.onnx", images)
    for k in ("ort-int8-static", "ort-fp32", "ov-int8", "ov-fp16"):
        v = cnn_run.variant(k)
        got = _independent_outputs(cnn_run.out / v["files"][0], images, v["precision"])
        a = v["agreement"]
        changed = float(np.mean(ref.argmax(1) != got.argmax(1)))
        assert abs(a["top1"] - changed) <= 1.5 / len(images), k
        assert a["accuracy_ref"] == pytest.approx(float(np.mean(ref.argmax(1) == labels)))
        err = np.abs(got.astype(np.float64) - ref)
        assert a["max_abs"] == pytest.approx(float(err.max()), rel=0.05, abs=1e-5), k
        assert a["mean_abs"] == pytest.approx(float(err.mean()), rel=0.05, abs=1e-6), k
    assert cnn_run.variant("ort-int8-static")["agreement"]["max_abs"] > 1e-3  # quantized: visibly different


def test_manifest_validates_and_keeps_its_comments(cnn_run: Run) -> None:
    text = (cnn_run.fleet / "models" / "classifier.yaml").read_text()
    assert text.startswith(MODEL_YAML)  # every original byte, comments included, kept as it was
    added = text[len(MODEL_YAML):]
    assert added.startswith('    - version: "2.0.0"\n')
    assert ("        - name: ort-int8-static-x86-vnni\n"
            "          runtime: onnxruntime\n"
            "          precision: int8\n") in added
    assert "            cpuFlags: [avx512_vnni]\n" in added
    res = run_cli("validate", str(cnn_run.fleet), "--tuf-repo", str(cnn_run.repo), "--strict")
    assert res.code == 0, res.text
    assert "0 errors, 0 warnings" in res.text


def test_validate_warns_when_a_file_lacks_the_declared_precision(cnn_run: Run, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    shutil.copytree(cnn_run.fleet, fleet)
    manifest = fleet / "models" / "classifier.yaml"
    text = manifest.read_text()
    lines = text.splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if ln.strip() == "- name: ov-fp16") + 2
    assert lines[at].strip() == "precision: fp16"
    lines[at] = lines[at].replace("fp16", "fp32")
    manifest.write_text("".join(lines))
    res = run_cli("validate", str(fleet), "--tuf-repo", str(cnn_run.repo))
    assert res.code == 0, res.text
    assert (f"{manifest}:{at + 1}:22: warning: Model/classifier: variant ov-fp16 declares precision fp32, but "
            "classifier/2.0.0/ov-fp16.xml is fp16") in res.text
    assert "0 errors, 1 warnings" in res.text
    assert run_cli("validate", str(fleet), "--tuf-repo", str(cnn_run.repo), "--strict").code == 1


def test_published_targets_verify_through_the_device_tuf_client(cnn_run: Run) -> None:
    import yaml

    version = yaml.safe_load((cnn_run.fleet / "models" / "classifier.yaml").read_text())["spec"]["versions"][-1]
    server = StaticServer(cnn_run.repo).start()
    try:
        shutil.copyfile(cnn_run.repo / "metadata" / "1.root.json", cnn_run.tmp / "root.json")
        client = TufClient(cnn_run.tmp / "dev" / "tuf", f"{server.url}/metadata", f"{server.url}/targets",
                           cnn_run.tmp / "root.json", ModelStore(cnn_run.tmp / "dev" / "store"))
        client.refresh()
        for var in version["variants"]:
            stored = client.fetch([*var["targets"], var["probe"]["target"]])
            files = [stored[t].store_path for t in var["targets"]]
            probe = json.loads(stored[var["probe"]["target"]].store_path.read_bytes())
            backend = load_backend(var["runtime"], files=files, threads=1, precision=var["precision"])
            try:
                policy = HealthPolicy.from_spec(None, var["precision"])
                result = run_health_check(backend, probe, policy, rss_before_mb=0.0)
            finally:
                backend.close()
            assert result.ok, (var["name"], result.message)
    finally:
        server.stop()


def test_render_picks_fp32_where_the_cpu_lacks_int8_instructions(cnn_run: Run) -> None:
    dep = cnn_run.fleet / "deployments" / "classifier.yaml"
    dep.write_text(DEPLOYMENT_YAML.replace('"1.0.0"', '"2.0.0"'))
    import yaml

    picks, probes = {}, {}
    for device in DEVICES:
        res = run_cli("render", "--device", device, str(cnn_run.fleet))
        assert res.code == 0, res.text
        endpoint = yaml.safe_load(res.out)["endpoints"]["classifier"]
        picks[device], probes[device] = endpoint["variant"], endpoint["probe_target"]
    assert picks == {"nuc-1": "ort-fp32", "xeon-1": "ort-int8-static-x86-vnni", "pi-1": "ort-fp32"}
    # Each device health-checks against the golden outputs of the very variant it runs.
    assert probes["xeon-1"] == "classifier/2.0.0/ort-int8-static.probe.json"
    assert probes["nuc-1"] == "classifier/2.0.0/ort-fp32.probe.json"
    res = run_cli("render", "--classes", str(cnn_run.fleet))
    assert res.code == 0, res.text
    classes = yaml.safe_load(res.out)["classes"]
    assert classes["x86-avx2"]["endpoints"] == {"classifier": "classifier 2.0.0: ort-fp32 (onnxruntime)"}
    assert classes["x86-vnni"]["endpoints"] == {
        "classifier": "classifier 2.0.0: ort-int8-static-x86-vnni (onnxruntime)"}
    # The report told the same story before anything was merged (fleet default preference: openvino first).
    assert cnn_run.report["picks"] == {"pi4": "ort-fp32", "x86-avx2": "ov-fp16", "x86-vnni": "ov-int8-x86-vnni"}


def test_over_budget_variant_is_dropped_with_the_reason(tmp_path: Path) -> None:
    model = modelgen.tabular_mlp(seed=2)
    (tmp_path / "mlp.onnx").write_bytes(model)
    np.savez(tmp_path / "mlp.npz", **modelgen.make_sample(model, 64, seed=1))
    res = run_cli("optimize", str(tmp_path / "mlp.onnx"), "--data", str(tmp_path / "mlp.npz"),
                  "--out", str(tmp_path / "out"), "--variants", "ort-fp32,ort-int8-dynamic",
                  "--max-drop", "mean_abs=0.0001", "--runs", "5", "--batch", "2")
    assert res.code == 0, res.text
    assert "regression, 64 samples (32 calibration, 32 evaluation), budget mean_abs=0.0001" in res.out
    line = next(ln for ln in res.out.splitlines() if ln.startswith("ort-int8-dynamic:"))
    assert "dropped — over the accuracy budget: mean_abs" in line and "exceeds the budget 0.0001" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ort-fp32.onnx", "ort-fp32.probe.json"]


def test_bad_input_is_one_error_line(tmp_path: Path) -> None:
    model = modelgen.tabular_mlp()
    (tmp_path / "mlp.onnx").write_bytes(model)
    np.savez(tmp_path / "wrong.npz", features=np.zeros((8, 24), np.float32), extra=np.zeros(8))
    cases = [
        (["--data", str(tmp_path / "wrong.npz")], "array(s) extra are not model inputs"),
        (["--data", str(tmp_path / "none.npz")], "none.npz: no such file"),
        (["--data", str(tmp_path / "wrong.npz"), "--max-drop", "speed=2"], "unknown metric 'speed'"),
        (["--data", str(tmp_path / "wrong.npz"), "--variants", "tflite"], "--variants: unknown tflite"),
        (["--data", str(tmp_path / "wrong.npz"), "--publish", str(tmp_path)], "--version is required"),
    ]
    for args, msg in cases:
        res = run_cli("optimize", str(tmp_path / "mlp.onnx"), "--out", str(tmp_path / "o"), *args)
        assert res.code != 0 and msg in res.err, (args, res.text)
        assert "Traceback" not in res.text and len(res.err.strip().splitlines()) <= 2, res.err
    assert not (tmp_path / "o").exists()


def test_missing_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    model = modelgen.tabular_mlp()
    (tmp_path / "mlp.onnx").write_bytes(model)
    np.savez(tmp_path / "mlp.npz", **modelgen.make_sample(model, 8))
    monkeypatch.setitem(sys.modules, "nncf", None)  # how Python marks a module as not importable
    res = run_cli("optimize", str(tmp_path / "mlp.onnx"), "--data", str(tmp_path / "mlp.npz"),
                  "--out", str(tmp_path / "o"), "--variants", "ort-fp32,ov-int8")
    assert res.code == 1
    assert res.err.strip().splitlines()[-1] == ("error: building ov-int8 needs nncf: install the optional extra with "
                               "`pip install 'modelfleet[optimize]'` (or leave those variants out with --variants)")
    assert not (tmp_path / "o").exists()
