"""Runtime backends (real ONNX Runtime and OpenVINO sessions), hardware facts and the health-check logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reconciler.devkit.modelgen import identity_model, make_probe, matmul_model, small_cnn, to_openvino_ir
from reconciler.fleet.schemas import load_schema
from reconciler.serving.health import HealthPolicy, compare_outputs, percentile, run_health_check
from reconciler.serving.hwfacts import detect_facts, parse_cpu_flags, parse_meminfo_mb
from reconciler.serving.precision import default_tolerance
from reconciler.serving.runtimes import RuntimeLoadError, load_backend
from reconciler.serving.runtimes.onnx import choose_providers
from reconciler.serving.runtimes.openvino import choose_device

MM = matmul_model(seed=3)
PROBE = make_probe(MM)
X = np.array(PROBE["inputs"][0]["data"], dtype=np.float32).reshape(PROBE["inputs"][0]["shape"])
GOLD = np.array(PROBE["outputs"][0]["data"], dtype=np.float32).reshape(PROBE["outputs"][0]["shape"])
FP32 = default_tolerance("fp32")


def test_modelgen_is_deterministic_and_versions_differ_by_bias() -> None:
    assert matmul_model(seed=3) == MM
    assert make_probe(MM) == PROBE
    shifted = load_backend("onnxruntime", blobs=[matmul_model(seed=3, bias=2.0)]).infer({"input": X})[
        "output"
    ]
    np.testing.assert_allclose(shifted, GOLD + 2.0, atol=FP32.atol, rtol=FP32.rtol)
    assert 2_000_000 < len(small_cnn()) < 8_000_000


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return to_openvino_ir(MM, tmp_path_factory.mktemp("ir"), "mm")


@pytest.mark.parametrize("how", ["ort-bytes", "ort-file", "ov-ir-files", "ov-ir-bytes", "ov-onnx-bytes"])
def test_backends_load_from_bytes_or_files_and_agree(how: str, ir: tuple[Path, Path], tmp_path: Path) -> None:
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(MM)
    kwargs = {
        "ort-bytes": {"runtime": "onnxruntime", "blobs": [MM]},
        "ort-file": {"runtime": "onnxruntime", "files": [onnx_file], "threads": 1},
        "ov-ir-files": {"runtime": "openvino", "files": list(ir), "cache_dir": tmp_path / "cache"},
        "ov-ir-bytes": {
            "runtime": "openvino",
            "blobs": [ir[0].read_bytes(), ir[1].read_bytes()],
            "device": "CPU",
        },
        "ov-onnx-bytes": {"runtime": "openvino", "blobs": [MM], "threads": 1},
    }[how]
    be = load_backend(**kwargs)
    assert [m.to_json() for m in be.inputs] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert [m.to_json() for m in be.outputs] == [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]
    # Every backend computes in the declared precision (fp32 by default) on every CPU, so all agree within the
    # fp32 tolerance — also OpenVINO on CPUs where its plugin would otherwise pick bf16.
    np.testing.assert_allclose(be.infer({"input": X})["output"], GOLD, atol=FP32.atol, rtol=FP32.rtol)
    be.close()


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "UINT16", "INT8", "INT64", "FP16", "FP64", "BYTES"])
def test_onnxruntime_reports_and_carries_every_datatype(datatype: str) -> None:
    be = load_backend("onnxruntime", blobs=[identity_model(datatype)])
    assert be.inputs[0].datatype == datatype
    probe = make_probe(identity_model(datatype))
    assert run_health_check(be, probe, HealthPolicy(), rss_before_mb=0).ok


def test_openvino_refuses_string_models_and_absent_devices() -> None:
    with pytest.raises(RuntimeLoadError, match="does not serve BYTES"):
        load_backend("openvino", blobs=[identity_model("BYTES")])
    with pytest.raises(RuntimeLoadError, match="device 'NPU' is not available"):
        choose_device("NPU", ["CPU"])
    assert choose_device(None, ["CPU"]) == "CPU"
    assert choose_device(None, ["CPU", "GPU.0"]) == "AUTO"
    assert choose_device("gpu", ["CPU", "GPU.0"]) == "GPU"


def test_bad_model_bytes_and_bad_runtime_are_load_errors() -> None:
    with pytest.raises(RuntimeLoadError, match="onnxruntime cannot load"):
        load_backend("onnxruntime", blobs=[b"not a model"])
    with pytest.raises(RuntimeLoadError, match="OpenVINO cannot load"):
        load_backend("openvino", blobs=[b"<xml", b""])
    with pytest.raises(RuntimeLoadError, match="unknown runtime"):
        load_backend("tensorrt", blobs=[MM])


def test_provider_choice_follows_preference_and_availability() -> None:
    avail = ["CUDAExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(avail, None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(avail, ["TensorrtExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"]) == ["CPUExecutionProvider"]


def test_hw_facts_have_exactly_the_schema_keys() -> None:
    facts = detect_facts()
    assert set(facts) == set(load_schema("common.schema.json")["$defs"]["facts"]["properties"])
    assert "CPUExecutionProvider" in facts["runtime.onnxruntime.providers"]
    assert "CPU" in facts["runtime.openvino.devices"]
    assert facts["hw.memoryMB"] > 0
    x86 = "processor: 0\nflags\t\t: fpu sse4_2 avx2 avx512_vnni junk\n"
    assert parse_cpu_flags(x86, "x86_64") == ["avx2", "avx512_vnni", "sse4_2"]
    assert parse_cpu_flags("Features\t: fp asimd asimddp\n", "aarch64") == ["asimd", "asimddp", "neon"]
    assert parse_meminfo_mb("MemTotal:        2048000 kB\n") == 2000


def test_compare_outputs_reasons() -> None:
    gold = PROBE["outputs"]
    ok = {"output": GOLD}
    assert compare_outputs(ok, gold, atol=FP32.atol, rtol=FP32.rtol, require_finite=True) is None
    reason, msg = compare_outputs({"output": GOLD + 0.01}, gold, atol=FP32.atol, rtol=FP32.rtol, require_finite=True)
    assert reason == "ProbeMismatch" and "8 of 8 value(s) outside atol=0.0001" in msg
    assert compare_outputs({"output": GOLD + 0.01}, gold, atol=0.1, rtol=0, require_finite=True) is None
    nan = GOLD.copy()
    nan[0, 0] = np.nan
    assert compare_outputs({"output": nan}, gold, atol=1, rtol=1, require_finite=True)[0] == "NonFiniteOutput"
    assert (
        compare_outputs({"output": GOLD[:1]}, gold, atol=1, rtol=1, require_finite=True)[0] == "ProbeMismatch"
    )
    assert percentile([5, 1, 4, 2, 3], 50) == 3 and percentile([5, 1, 4, 2, 3], 95) == 5


def test_health_check_outcomes() -> None:
    be = load_backend("onnxruntime", blobs=[MM])
    assert run_health_check(be, PROBE, HealthPolicy(), rss_before_mb=0).ok
    wrong = make_probe(matmul_model(seed=4))
    assert run_health_check(be, wrong, HealthPolicy(), rss_before_mb=0).reason == "ProbeMismatch"
    slow = run_health_check(be, PROBE, HealthPolicy.from_spec({"maxLatencyMs": 1e-6}), rss_before_mb=0)
    assert slow.reason == "LatencyTooHigh" and "exceeds maxLatencyMs" in slow.message
    rss = run_health_check(be, PROBE, HealthPolicy.from_spec({"maxRssGrowthMB": 0}), rss_before_mb=0)
    assert rss.reason == "RssGrowthTooHigh"
    bad_probe = {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": []}
    assert run_health_check(be, bad_probe, HealthPolicy(), rss_before_mb=0).reason == "ProbeInvalid"
    nan_be = load_backend("onnxruntime", blobs=[matmul_model(seed=3, nan=True)])
    assert run_health_check(nan_be, None, HealthPolicy(), rss_before_mb=0).reason == "NonFiniteOutput"
    assert run_health_check(
        nan_be, None, HealthPolicy.from_spec({"requireFinite": False}), rss_before_mb=0
    ).ok
    assert run_health_check(nan_be, PROBE, HealthPolicy.from_spec({"enabled": False}), rss_before_mb=0).ok
