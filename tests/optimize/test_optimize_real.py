"""`modelfleet optimize` on what users bring: published models shipped in PyPI wheels, and skl2onnx classifiers.

- The PaddleOCR text-direction classifier and text detector from ``rapidocr-onnxruntime`` (weights as Constant
  nodes, opset 11/12, dynamic height and width): symbolic shape inference fails on both, so ONNX Runtime's
  int8 variants come from the fallback routes; every variant kind is produced.
- scikit-learn classifiers on its bundled datasets converted with skl2onnx, with and without ZipMap: the label
  output comes first, so accuracy and top-1 must come from it; OpenVINO cannot convert their ``ai.onnx.ml`` ops.

Where a variant fails or falls back, the test calls the library itself to show that it is the library that
fails, and the report must carry that failure (step, type, message). Accuracy and top-1 are compared with an
independent computation (sklearn's own ``predict``; the variant files run in their runtime by hand).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.optimize.inspect import file_precision
from reconciler.optimize.plan import KIND_NAMES
from reconciler.serving.precision import openvino_hint
from reconciler.serving.runtimes import load_backend
from tests._cli import CliResult, run_cli
from tests.optimize import realmodels as rm

FAST = ("--runs", "5", "--batch", "2")


@dataclass
class Run:
    tmp: Path
    model: Path
    data: dict[str, np.ndarray]
    calibration: int
    res: CliResult
    report: dict[str, Any]

    def variant(self, kind: str) -> dict[str, Any]:
        return next(v for v in self.report["variants"] if v["kind"] == kind)

    def files(self, kind: str) -> list[Path]:
        return [self.tmp / "out" / f for f in self.variant(kind)["files"]]

    def evaluation(self) -> dict[str, np.ndarray]:
        return {k: v[self.calibration:] for k, v in self.data.items() if k != "labels"}


def _optimize(tmp: Path, model: Path, data: dict[str, np.ndarray], calibration: int, *args: str,
              fmt: str = "json") -> Run:
    np.savez(tmp / "sample.npz", **data)
    res = run_cli("optimize", str(model), "--data", str(tmp / "sample.npz"), "--out", str(tmp / "out"),
                  "--calibration", str(calibration), *FAST, "--format", fmt, *args)
    assert res.code == 0, res.text
    assert "Traceback" not in res.text
    return Run(tmp, model, data, calibration, res, json.loads(res.out) if fmt == "json" else {})


def _library_failure(fn: Callable[[], object]) -> tuple[str, str] | None:
    """What the library itself raises (type name, one-line message), or None when it succeeds."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - whatever the library raises is what the report must carry
        return type(exc).__name__, " ".join(str(exc).split())
    return None


def _run_file(path: Path, precision: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a variant file run by hand in its runtime (not through modelfleet's backends)."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in sess.run(None, feeds)]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": openvino_hint(precision)})
    result = compiled(feeds)
    return [np.asarray(result[port]) for port in compiled.outputs]


# --- the rapidocr text-direction classifier -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("cls")
    return _optimize(tmp, rm.rapidocr_model(rm.CLS_MODEL), rm.cls_sample(96, seed=1), 48,
                     "--variants", ",".join(KIND_NAMES), "--max-drop", "accuracy=5%",
                     "--accuracy-control", "--nncf-preset", "mixed", "--subset-size", "32",
                     "--ignored-scope", "type:MatMul")


def test_every_variant_kind_of_the_ocr_classifier_is_produced(cls_run: Run, tmp_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for kind in KIND_NAMES:
        v = cls_run.variant(kind)
        assert v["status"] in ("kept", "dropped"), (kind, v["reason"])
        assert v["route"] and v["sizeBytes"] > 0, kind
    # Symbolic shape inference fails on this model; the report carries the library's own failure and the
    # route that ran instead.
    direct = _library_failure(lambda: quant_pre_process(str(cls_run.model), str(tmp_path / "p.onnx"),
                                                        skip_symbolic_shape=False))
    static = cls_run.variant("ort-int8-static")
    if direct is None:
        assert static["attempts"] == [] and "pre-processed with symbolic shape inference" in static["route"]
    else:
        first = static["attempts"][0]
        assert first["step"] == "pre-processing (quant_pre_process with symbolic shape inference)"
        assert first["type"] == direct[0] and direct[1] in first["message"]
        if direct[1] == "":  # a bare assert: the report names where it is
            assert "(at symbolic_shape_infer.py:" in first["message"]
        assert "pre-processed with symbolic shape inference" not in static["route"]
    # Per-channel QDQ needs opset 13; the model is opset 11, so it was converted, and the weights are int8.
    assert "converted from opset 11 to 13" in static["route"]
    assert static["sizeBytes"] < cls_run.report["reference"]["sizeBytes"] * 0.75
    for kind in ("ort-int8-static", "ort-int8-dynamic", "ov-int8"):
        v = cls_run.variant(kind)
        if v["status"] == "kept":
            assert file_precision(cls_run.files(kind)[0]) == "int8"


def test_ocr_classifier_accuracy_and_top1_match_an_independent_computation(cls_run: Run) -> None:
    feeds = cls_run.evaluation()
    labels = cls_run.data["labels"][cls_run.calibration:]
    ref = _run_file(cls_run.model, "fp32", feeds)[0].argmax(1)
    ref_acc = float(np.mean(ref == labels))
    assert cls_run.report["reference"]["agreement"]["accuracy_ref"] == pytest.approx(ref_acc)
    assert ref_acc > 0.9  # real text, real model: the labels mean something
    kept = [v for v in cls_run.report["variants"] if v["status"] == "kept"]
    assert kept
    for v in cls_run.report["variants"]:
        assert v["agreement"]["accuracy_ref"] == pytest.approx(ref_acc), v["kind"]
    for v in kept:  # their files are in --out: run them by hand (one sample of slack for another thread count)
        got = _run_file(cls_run.files(v["kind"])[0], v["precision"], feeds)[0].argmax(1)
        a = v["agreement"]
        assert abs(a["top1"] - float(np.mean(got != ref))) <= 1.01 / len(labels), v["kind"]
        assert abs(a["accuracy"] - float(np.mean(got == labels))) <= 1.01 / len(labels), v["kind"]


def test_accuracy_control_and_nncf_options_reach_nncf(cls_run: Run) -> None:
    import openvino as ov

    v = cls_run.variant("ov-int8")
    assert v["route"].startswith("nncf.quantize_with_accuracy_control (preset=mixed, subset_size=32, max drop "
                                 "5.00 points of accuracy on the 48 labelled calibration samples)")
    assert cls_run.report["quantOptions"] == {"preset": "mixed", "subset_size": 32, "ignored_types": ["MatMul"],
                                              "accuracy_control": True}
    # Read back from the IR what NNCF did: the ignored MatMul takes no quantized input, convolutions do.
    model = ov.Core().read_model(str(cls_run.files("ov-int8")[0])) if v["status"] == "kept" else None
    if model is None:
        pytest.fail(f"ov-int8 was not kept: {v['reason']}")

    def quantized_inputs(op: Any) -> bool:
        return any(op.input_value(i).get_node().get_type_name() == "FakeQuantize" for i in range(op.get_input_size()))

    ops = model.get_ordered_ops()
    assert not any(quantized_inputs(op) for op in ops if op.get_type_name() == "MatMul")
    assert any(quantized_inputs(op) for op in ops if op.get_type_name() in ("Convolution", "GroupConvolution"))


# --- the rapidocr text detector --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def det_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("det")
    cwd = os.getcwd()
    os.chdir(tmp)  # symbolic shape inference writes into the working directory when it fails: it must not
    try:
        return _optimize(tmp, rm.rapidocr_model(rm.DET_MODEL), rm.det_sample(16, seed=2), 8,
                         "--variants", ",".join(KIND_NAMES), "--max-drop", "mean_rel=50%")
    finally:
        os.chdir(cwd)


def test_every_variant_kind_of_the_ocr_detector_is_produced(det_run: Run, tmp_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for kind in KIND_NAMES:
        v = det_run.variant(kind)
        assert v["status"] in ("kept", "dropped"), (kind, v["reason"])
    assert sorted(p.name for p in det_run.tmp.iterdir()) == ["out", "sample.npz"]  # nothing left behind
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        direct = _library_failure(lambda: quant_pre_process(str(det_run.model), str(tmp_path / "p.onnx"),
                                                            skip_symbolic_shape=False))
    finally:
        os.chdir(cwd)
    for kind in ("ort-int8-static", "ort-int8-dynamic"):
        v = det_run.variant(kind)
        if direct is None:
            assert v["attempts"] == [], kind
        else:
            assert (v["attempts"][0]["type"], v["attempts"][0]["message"]) == direct, kind
    assert det_run.variant("ort-int8-static")["sizeBytes"] < det_run.report["reference"]["sizeBytes"] / 2


def test_ocr_detector_errors_match_an_independent_computation(det_run: Run) -> None:
    feeds = det_run.evaluation()
    ref = _run_file(det_run.model, "fp32", feeds)[0].astype(np.float64)
    for kind in ("ort-int8-static", "ort-fp32", "ov-fp16"):
        v = det_run.variant(kind)
        got = _run_file(det_run.files(kind)[0], v["precision"], feeds)[0] if v["status"] == "kept" else None
        if got is None:
            continue
        err = np.abs(got - ref)
        a = v["agreement"]
        assert a["max_abs"] == pytest.approx(float(err.max()), rel=0.05, abs=1e-4), kind
        assert a["mean_abs"] == pytest.approx(float(err.mean()), rel=0.05, abs=1e-5), kind


# --- skl2onnx classifiers ----------------------------------------------------------------------------------------


_MLP_RUNS: dict[bool, tuple[Run, rm.Tabular]] = {}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Callable[[bool], tuple[Run, rm.Tabular]]:
    """The digits MLP optimized into every kind, exported with (True) or without (False) ZipMap; run once each."""

    def get(zipmap: bool) -> tuple[Run, rm.Tabular]:
        if zipmap not in _MLP_RUNS:
            tmp = tmp_path_factory.mktemp("mlp-zipmap" if zipmap else "mlp")
            t = rm.sklearn_classifier("digits", zipmap=zipmap)
            (tmp / "mlp.onnx").write_bytes(t.onnx)
            run = _optimize(tmp, tmp / "mlp.onnx", {"X": t.x, "labels": t.y.astype(np.int64)}, 100,
                            "--variants", ",".join(KIND_NAMES))
            _MLP_RUNS[zipmap] = (run, t)
        return _MLP_RUNS[zipmap]

    return get


@pytest.mark.parametrize("zipmap", [False, True], ids=["tensors", "zipmap"])
def test_sklearn_classifier_accuracy_is_sklearns_own(mlp: Callable[[bool], tuple[Run, rm.Tabular]],
                                                     zipmap: bool) -> None:
    run, t = mlp(zipmap)
    x, y = t.x[run.calibration:], t.y[run.calibration:]
    predicted = t.clf.predict(x)
    sklearn_acc = float(np.mean(predicted == y))
    assert run.report["reference"]["agreement"]["accuracy_ref"] == pytest.approx(sklearn_acc)
    assert run.report["budget"] == {"accuracy": 0.01}  # labels in the sample: judged against them
    label = "output_label" if zipmap else "label"
    assert run.report["notes"][0].startswith(f"classifier outputs: the answer is the label output {label} (INT64 [N])")
    for kind in ("ort-int8-static", "ort-int8-dynamic", "ort-fp32"):
        v = run.variant(kind)
        assert v["status"] in ("kept", "dropped"), (kind, v["reason"])
        a = v["agreement"]
        assert a["accuracy_ref"] == pytest.approx(sklearn_acc)
        if v["status"] != "kept":
            continue
        got = _run_file(run.files(kind)[0], "fp32", {"X": x})[0].reshape(-1)
        assert a["accuracy"] == pytest.approx(float(np.mean(got == y))), kind
        assert a["top1"] == pytest.approx(float(np.mean(got != predicted))), kind


@pytest.mark.parametrize("zipmap", [False, True], ids=["tensors", "zipmap"])
def test_openvino_fails_on_sklearn_ops_as_the_library_does(mlp: Callable[[bool], tuple[Run, rm.Tabular]],
                                                           zipmap: bool) -> None:
    import openvino as ov

    run, _ = mlp(zipmap)
    # The ZipMap export is served (and converted) as its tensor form, which is what the plain export is.
    direct = _library_failure(lambda: ov.convert_model(str(mlp(False)[0].model)))
    for kind in ("ov-int8", "ov-fp16", "ov-fp32"):
        v = run.variant(kind)
        if direct is None:
            assert v["status"] in ("kept", "dropped"), kind
            continue
        assert v["status"] == "failed"
        assert v["error"] == {"step": "converting (openvino.convert_model)", "type": direct[0], "message": direct[1]}
        assert v["reason"] == f"converting (openvino.convert_model): {direct[0]}: {direct[1]}"


def test_quantize_static_falls_back_where_the_library_fails(mlp: Callable[[bool], tuple[Run, rm.Tabular]],
                                                            tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    run, t = mlp(False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"X": t.x[i:i + 1]} for i in range(run.calibration)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    def pre_then_quantize() -> None:
        quant_pre_process(str(run.model), str(tmp_path / "pre.onnx"), skip_symbolic_shape=False)
        quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)

    direct = _library_failure(pre_then_quantize)
    v = run.variant("ort-int8-static")
    assert v["status"] in ("kept", "dropped"), v["reason"]
    if direct is None:
        assert v["attempts"] == []
        return
    first = v["attempts"][0]
    assert first["step"] == "quantize_static on the model pre-processed with symbolic shape inference"
    assert (first["type"], first["message"]) == direct
    assert v["route"].endswith("on the model not pre-processed")


def test_zipmap_probabilities_are_served_as_the_tensor_behind_the_maps(
        mlp: Callable[[bool], tuple[Run, rm.Tabular]]) -> None:
    import onnxruntime as ort

    run, t = mlp(True)
    assert any("ZipMap" in n for n in run.report["notes"])
    x = t.x[run.calibration:run.calibration + 20]
    maps = ort.InferenceSession(t.onnx, providers=["CPUExecutionProvider"]).run(["output_probability"], {"X": x})[0]
    want = np.array([[m[c] for c in range(10)] for m in maps], np.float32)
    backend = load_backend("onnxruntime", files=run.files("ort-fp32"), threads=1, precision="fp32")
    try:
        got = backend.infer({"X": x})
    finally:
        backend.close()
    assert got["output_probability"].shape == (20, 10)
    np.testing.assert_allclose(got["output_probability"], want, rtol=1e-5, atol=1e-6)
    assert (got["output_label"] == t.clf.predict(x)).all()
    # The same model without ZipMap gives the same figures.
    plain, _ = mlp(False)
    assert run.variant("ort-fp32")["agreement"]["accuracy"] == plain.variant("ort-fp32")["agreement"]["accuracy"]


def test_string_labels_and_zipmap_with_string_classes(tmp_path: Path) -> None:
    t = rm.sklearn_classifier("iris", zipmap=True, string_labels=True)
    (tmp_path / "iris.onnx").write_bytes(t.onnx)
    run = _optimize(tmp_path, tmp_path / "iris.onnx", {"X": t.x, "labels": t.y.astype(str)}, 30,
                    "--variants", "ort-fp32,ort-int8-dynamic")
    sklearn_acc = float(np.mean(t.clf.predict(t.x[30:]) == t.y[30:]))
    assert run.report["reference"]["agreement"]["accuracy_ref"] == pytest.approx(sklearn_acc)
    assert run.variant("ort-fp32")["agreement"]["accuracy"] == pytest.approx(sklearn_acc)
    assert run.variant("ort-fp32")["agreement"]["top1"] == 0.0
    assert "columns: classes setosa, versicolor, virginica" in " ".join(run.report["notes"])


# --- quantizer options, read back from the files they produced ---------------------------------------------------


def test_onnxruntime_options_reach_the_quantizer(tmp_path: Path) -> None:
    import onnx

    t = rm.sklearn_classifier("digits", zipmap=False)
    (tmp_path / "mlp.onnx").write_bytes(t.onnx)
    (tmp_path / "q.yaml").write_text("onnxruntime:\n  preprocess: full\n  perChannel: true\n"
                                     "  calibrationMethod: entropy\n  excludeNodes: [MatMul1]\n")
    run = _optimize(tmp_path, tmp_path / "mlp.onnx", {"X": t.x[:200]}, 100, "--variants", "ort-int8-static",
                    "--quantize-options", str(tmp_path / "q.yaml"), "--preprocess", "off", "--per-tensor",
                    "--max-drop", "mean_abs=1")
    v = run.variant("ort-int8-static")
    assert v["status"] == "kept", v["reason"]
    assert v["route"] == "quantize_static (QDQ, per-tensor, entropy calibration on 100 samples) on the model not " \
                         "pre-processed"  # the flags over the file, the file over the defaults
    assert v["attempts"] == []
    model = onnx.load(str(run.files("ort-int8-static")[0]))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    matmuls = {n.name: n for n in model.graph.node if n.op_type == "MatMul"}
    weight_dq = [producers.get(n.input[1]) for n in matmuls.values()]
    # MatMul1 was excluded: its weight is the fp32 initializer; MatMul's weight is dequantized, per tensor.
    assert matmuls["MatMul1"].input[1] in inits and inits[matmuls["MatMul1"].input[1]].data_type == onnx.TensorProto.FLOAT
    dq = weight_dq[list(matmuls).index("MatMul")]
    assert dq is not None and dq.op_type == "DequantizeLinear"
    assert list(inits[dq.input[1]].dims) == []  # one scale for the whole tensor


def test_bad_options_are_one_error_line(tmp_path: Path) -> None:
    t = rm.sklearn_classifier("iris", zipmap=False)
    (tmp_path / "m.onnx").write_bytes(t.onnx)
    np.savez(tmp_path / "s.npz", X=t.x)
    (tmp_path / "bad.yaml").write_text("onnxruntime:\n  perChanel: true\n")
    det = rm.rapidocr_model(rm.DET_MODEL)
    np.savez(tmp_path / "det.npz", **rm.det_sample(4))
    cases = [
        ([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "s.npz"), "--quantize-options", str(tmp_path / "bad.yaml")],
         "onnxruntime.perChanel: unknown option"),
        ([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "s.npz"), "--quantize-options", str(tmp_path / "no.yaml")],
         "no.yaml: no such file"),
        ([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "s.npz"), "--ignored-scope", "layer:x"],
         "expected name:NODE, pattern:REGEX or type:OP"),
        ([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "s.npz"), "--label-output", "probabilities"],
         "--label-output probabilities: probabilities (FP32 [N, 3]) is not an integer or string tensor"),
        ([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "s.npz"), "--score-output", "nope"],
         "--score-output nope: the model has no such output (it has label (INT64 [N]), probabilities (FP32 [N, 3]))"),
        ([str(det), "--data", str(tmp_path / "det.npz"), "--accuracy-control"],
         "--accuracy-control needs a classifier"),
    ]
    for args, msg in cases:
        res = run_cli("optimize", *args, "--out", str(tmp_path / "o"))
        assert res.code == 2 and msg in res.err, (args, res.text)
        assert "Traceback" not in res.text and len(res.err.strip().splitlines()) <= 2, res.err
    assert not (tmp_path / "o").exists()


def test_named_outputs_override_detection(tmp_path: Path) -> None:
    t = rm.sklearn_classifier("wine", zipmap=False)
    (tmp_path / "wine.onnx").write_bytes(t.onnx)
    run = _optimize(tmp_path, tmp_path / "wine.onnx", {"X": t.x, "labels": t.y.astype(np.int64)}, 30,
                    "--variants", "ort-fp32", "--score-output", "probabilities", fmt="table")
    # The answer is now the argmax of the probabilities: for classes 0..2 the same as sklearn's predict.
    assert "note: classifier outputs: the answer is the argmax of probabilities (FP32 [N, 3])" in run.res.out
    sklearn_acc = float(np.mean(t.clf.predict(t.x[30:]) == t.y[30:]))
    assert "built by:\n  ort-fp32: onnxruntime graph optimization (extended level), saved offline\n" in run.res.out
    ref_row = next(ln for ln in run.res.out.splitlines() if ln.startswith("fp32-reference"))
    assert ref_row.endswith(f"acc {sklearn_acc * 100:.2f}%")
    row = next(ln for ln in run.res.out.splitlines() if ln.startswith("ort-fp32 "))
    assert row.endswith(f"top1 0.00%, acc {sklearn_acc * 100:.2f}% (+0.00pt)")
