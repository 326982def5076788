"""Numeric precision is declared, forced on the runtime, and decides the health check's tolerances.

Every test here passes on any CPU — x86-64 with or without AVX-512 BF16/AMX, arm64 — because nothing depends on
what the CPU would pick: OpenVINO is compiled with an explicit inference precision, and the tolerance logic is
checked against outputs whose rounding is emulated in numpy (so the bf16 path is exercised even on a CPU whose
OpenVINO plugin silently computes a bf16 hint in f32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.serving.health import HealthPolicy, compare_outputs, run_health_check
from reconciler.serving.precision import (
    PRECISIONS,
    default_tolerance,
    onnxruntime_session_config,
    openvino_hint,
)
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.serving.runtimes import RuntimeLoadError, load_backend
from reconciler.serving.runtimes.openvino import compile_config

# The case: a 64-wide MatMul, where OpenVINO's bf16 default is ~4 % off the fp32 result.
WIDE = matmul_model(64, 8, seed=3)
WRONG = matmul_model(64, 8, seed=3, bias=1.0)  # a wrong build: every output off by 1.0
PROBE = make_probe(WIDE, seed=7, batch=8)
WRONG_PROBE = make_probe(WRONG, seed=7, batch=8)  # same inputs, golden outputs of the wrong build
X = np.array(PROBE["inputs"][0]["data"], dtype=np.float32).reshape(PROBE["inputs"][0]["shape"])


def _weights(model: bytes) -> tuple[np.ndarray, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(model).graph.initializer}
    return inits["W"].astype(np.float32), inits["B"].astype(np.float32)


def _bf16(a: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest even), kept in a float32 container."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def _int8(a: np.ndarray) -> np.ndarray:
    """Symmetric per-tensor int8 quantize + dequantize."""
    scale = float(np.abs(a).max()) / 127.0
    return np.clip(np.round(a / scale), -127, 127).astype(np.float32) * scale


_ROUND = {"fp32": lambda a: a, "fp16": lambda a: a.astype(np.float16).astype(np.float32), "bf16": _bf16,
          "int8": _int8}


def emulate(model: bytes, x: np.ndarray, precision: str) -> np.ndarray:
    """``x @ W + b`` with inputs and weights rounded to ``precision``, fp32 accumulation, output rounded."""
    w, b = _weights(model)
    r = _ROUND[precision]
    y = r(x) @ r(w)
    return (y + b) if precision == "int8" else r(y + r(b))


def _golden() -> list[dict[str, Any]]:
    return PROBE["outputs"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tolerance_accepts_correct_outputs_at_that_precision_and_rejects_wrong_ones(precision: str) -> None:
    tol = default_tolerance(precision)
    right, wrong = emulate(WIDE, X, precision), emulate(WRONG, X, precision)
    assert compare_outputs({"output": right}, _golden(), atol=tol.atol, rtol=tol.rtol, require_finite=True) is None
    reason, _ = compare_outputs({"output": wrong}, _golden(), atol=tol.atol, rtol=tol.rtol, require_finite=True)
    assert reason == "ProbeMismatch"
    if precision in ("bf16", "int8"):
        # What broke rollouts on AVX-512 BF16 CPUs: reduced-precision outputs judged with fp32's tolerance.
        fp32 = default_tolerance("fp32")
        assert compare_outputs({"output": right}, _golden(), atol=fp32.atol, rtol=fp32.rtol, require_finite=True)


def test_tolerances_follow_the_formats_and_the_deployment_overrides_them() -> None:
    assert (default_tolerance("fp32").atol, default_tolerance("fp32").rtol) == (1e-4, 1e-3)
    assert default_tolerance(None) == default_tolerance("fp32")
    # Looser as the significand shrinks: fp32 (24 bits) < fp16 (11) < bf16 (8) <= int8.
    atols = [default_tolerance(p).atol for p in ("fp32", "fp16", "bf16", "int8")]
    assert atols == sorted(atols) and len(set(atols)) == 4
    assert HealthPolicy.from_spec({}, "bf16").atol == 6.25e-2
    overridden = HealthPolicy.from_spec({"atol": 1e-3, "rtol": 0}, "bf16")
    assert (overridden.atol, overridden.rtol) == (1e-3, 0)
    assert HealthPolicy.from_spec({}).atol == 1e-4
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        HealthPolicy.from_spec({}, "fp8")


def test_openvino_is_always_told_the_inference_precision() -> None:
    assert {p: compile_config(p)["INFERENCE_PRECISION_HINT"] for p in PRECISIONS} == {
        "fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
    assert compile_config(None)["INFERENCE_PRECISION_HINT"] == "f32"  # never left to the CPU plugin
    assert openvino_hint(None) == "f32"
    with pytest.raises(RuntimeLoadError, match="unknown precision"):
        compile_config("fp64")


def test_onnxruntime_never_lowers_an_fp32_model() -> None:
    assert onnxruntime_session_config("fp32") == {"mlas.enable_gemm_fastmath_arm64_bfloat16": "0"}
    assert onnxruntime_session_config("bf16") == {"mlas.enable_gemm_fastmath_arm64_bfloat16": "1"}


@pytest.mark.parametrize(("runtime", "precision"), [
    ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "fp16"), ("openvino", "int8"),
    ("onnxruntime", "fp32"), ("onnxruntime", "bf16"),
])
def test_forced_precision_passes_its_health_check_and_fails_a_wrong_probe(runtime: str, precision: str) -> None:
    be = load_backend(runtime, blobs=[WIDE], precision=precision)
    try:
        policy = HealthPolicy.from_spec({"warmupRuns": 1}, precision)
        assert run_health_check(be, PROBE, policy, rss_before_mb=0).ok
        assert run_health_check(be, WRONG_PROBE, policy, rss_before_mb=0).reason == "ProbeMismatch"
        if runtime == "openvino":
            assert be.inference_precision == compile_config(precision)["INFERENCE_PRECISION_HINT"] or (
                precision in ("bf16", "fp16") and be.inference_precision == "f32")  # CPU without bf16/f16 units
    finally:
        be.close()


def test_fp32_openvino_matches_onnxruntime_at_fp32_tolerance_on_every_cpu() -> None:
    tol = default_tolerance("fp32")
    ort = load_backend("onnxruntime", blobs=[WIDE], precision="fp32")
    ov = load_backend("openvino", blobs=[WIDE], precision="fp32")
    try:
        assert ov.inference_precision == "f32"
        np.testing.assert_allclose(ov.infer({"input": X})["output"], ort.infer({"input": X})["output"],
                                   atol=tol.atol, rtol=tol.rtol)
    finally:
        ort.close()
        ov.close()


def test_registry_reports_the_precision_and_reloads_when_it_changes() -> None:
    reg = ModelRegistry()
    try:
        spec = EndpointSpec(name="wide", version="1", runtime="openvino", blobs=[WIDE], digest="d" * 64,
                            probe=PROBE, health={"warmupRuns": 1}, precision="bf16")
        assert reg.apply(spec).ok
        assert reg.endpoints()["wide"].precision == "bf16"
        fp32 = EndpointSpec(**{**spec.__dict__, "precision": "fp32"})
        assert not fp32.same_build(spec)
        assert reg.apply(fp32).ok
        assert reg.endpoints()["wide"].precision == "fp32"
        bad = EndpointSpec(**{**spec.__dict__, "version": "2", "precision": "fp64"})
        result = reg.apply(bad)
        assert not result.ok and "unknown precision" in result.message
        assert reg.endpoints()["wide"].precision == "fp32"  # the last good version keeps serving
    finally:
        reg.close()
