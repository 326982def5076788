"""Numeric precision is declared, requested from the runtime, read back, and decides the health check's tolerances.

Every test here passes on any CPU — x86-64 with or without AVX-512 BF16/FP16/AMX, arm64 — because none expects one
machine's answer: OpenVINO is compiled with an explicit inference precision and what it reads back is judged
against OpenVINO's documented fallbacks for the CPU's own capabilities (``OPTIMIZATION_CAPABILITIES``), and the
tolerance logic is checked against outputs whose rounding is emulated in numpy (so the bf16 path is exercised
even on a CPU whose OpenVINO plugin computes a bf16 hint in f32). The CPU of the issue — AVX-512 BF16 but no
native fp16, where an ``f16`` hint runs ``bf16`` — is reproduced on any newer x86 CPU by capping oneDNN's
instruction set (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``) in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.serving.health import HealthPolicy, compare_outputs, run_health_check
from reconciler.serving.precision import (
    PRECISIONS,
    default_tolerance,
    effective_precision,
    health_tolerance,
    onnxruntime_session_config,
    openvino_cpu_precision,
    openvino_hint,
)
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.serving.runtimes import RuntimeLoadError, load_backend
from reconciler.serving.runtimes.openvino import capabilities, compile_config
from tests.packaging.conftest import REPO_ROOT

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
            # What OpenVINO documents for this hint on this CPU: the hint where the CPU has the format natively,
            # else its default (bf16 on AVX-512 BF16/AMX CPUs, f32 on CPUs with neither; a bf16 hint may also
            # run in the plugin's bf16 simulation on AVX-512 CPUs without native bf16).
            hint = compile_config(precision)["INFERENCE_PRECISION_HINT"]
            documented = {openvino_cpu_precision(hint, capabilities())} | ({"bf16"} if hint == "bf16" else set())
            assert be.inference_precision in documented, (hint, capabilities())
            assert be.precision == effective_precision(precision, be.inference_precision)
        else:
            assert be.precision == precision  # ONNX Runtime computes in the file's types: nothing to read back
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


# -- the precision actually used: OpenVINO's documented fallbacks, read back, reported and judged by ---------------

@pytest.mark.parametrize(("hint", "caps", "expected"), [
    ("f32", ["FP32", "BF16", "FP16"], "f32"),       # f32 is always honoured, also where the default is lower
    ("f16", ["FP32", "BF16", "FP16"], "f16"),       # Sapphire Rapids+ (AVX-512 FP16 / AMX-FP16): native
    ("f16", ["FP32", "BF16", "INT8"], "bf16"),      # the issue: AVX-512 BF16 (Cooper Lake, Zen 4), no fp16
    ("f16", ["FP32", "INT8"], "f32"),               # AVX2 / AVX-512 without either half format
    ("f16", ["FP32", "FP16"], "f16"),               # arm64 with fp16 arithmetic
    ("bf16", ["FP32", "BF16"], "bf16"),
    ("bf16", ["FP32", "FP16"], "f16"),              # arm64: the plugin's default half format
    ("bf16", ["FP32"], "f32"),
])
def test_openvino_cpu_precision_follows_the_documented_fallbacks(hint: str, caps: list[str], expected: str) -> None:
    assert openvino_cpu_precision(hint, caps) == expected
    with pytest.raises(ValueError, match="unknown OpenVINO inference precision"):
        openvino_cpu_precision("f64", caps)


def test_effective_precision_is_what_the_runtime_read_back() -> None:
    assert effective_precision("fp16", "f16") == "fp16"
    assert effective_precision("fp16", "bf16") == "bf16"  # the CPU
    assert effective_precision("fp16", "f32") == "fp32"
    assert effective_precision("bf16", "f32") == "fp32"
    assert effective_precision("int8", "f32") == "int8"   # its hint: the quantization is in the graph
    assert effective_precision(None, "f32") == "fp32"
    assert effective_precision("bf16", None) == "bf16"    # nothing read back (ONNX Runtime)
    with pytest.raises(ValueError, match="unknown precision"):
        effective_precision("fp8", "f32")


def test_health_tolerance_is_the_looser_of_declared_and_effective() -> None:
    assert health_tolerance("fp16", "bf16") == default_tolerance("bf16")
    assert health_tolerance("bf16", "fp32") == default_tolerance("bf16")  # goldens may be bf16's
    assert health_tolerance("int8", "int8") == default_tolerance("int8")
    assert health_tolerance("fp32") == default_tolerance("fp32")
    policy = HealthPolicy.from_spec({}, "fp16", "bf16")
    assert (policy.atol, policy.rtol) == (6.25e-2, 6.25e-2)
    assert HealthPolicy.from_spec({"atol": 1e-3}, "fp16", "bf16").atol == 1e-3  # the deployment's own wins


# A probe that tells the formats apart: two products that cancel, the first off a bf16 grid point by 0.9 of half a
# bf16 step. In bf16 the output is 0 instead of 0.028 — outside fp16's tolerance (1e-2), inside bf16's (6.25e-2);
# fp16 (and f32) keep it within 1e-2.
K = 16
_W = np.zeros((K, 2), np.float32)
_W[:2, :] = 1.0
_X = np.zeros((4, K), np.float32)
_X[:, 0], _X[:, 1] = 8 * (1 + 0.9 * 2**-8), -8.0


def _cancel_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"])], "cancel",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [-1, K])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [-1, 2])],
        [numpy_helper.from_array(_W, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _cancel_probe(bias: float = 0.0) -> dict[str, Any]:
    """Golden outputs of the model (``bias`` 1.0: of a build whose outputs are all off by 1.0)."""
    y = _X.astype(np.float64) @ _W.astype(np.float64) + bias
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(_X.shape), "data": _X.ravel().tolist()}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}]}


def test_bf16_outputs_of_an_fp16_variant_fail_fp16s_tolerance_and_pass_the_effective_one() -> None:
    """What the health check must do on the issue's CPU, with bf16's rounding emulated (runs on every CPU)."""
    golden = _cancel_probe()["outputs"]
    as_bf16 = {"output": _bf16(_bf16(_X) @ _bf16(_W))}
    as_fp16 = {"output": _ROUND["fp16"](_ROUND["fp16"](_X) @ _W)}
    fp16, judged = HealthPolicy.from_spec({}, "fp16"), HealthPolicy.from_spec({}, "fp16", "bf16")
    assert compare_outputs(as_fp16, golden, atol=fp16.atol, rtol=fp16.rtol, require_finite=True) is None
    reason, _ = compare_outputs(as_bf16, golden, atol=fp16.atol, rtol=fp16.rtol, require_finite=True)
    assert reason == "ProbeMismatch"
    assert compare_outputs(as_bf16, golden, atol=judged.atol, rtol=judged.rtol, require_finite=True) is None
    wrong = {"output": as_bf16["output"] + 1.0}
    assert compare_outputs(wrong, golden, atol=judged.atol, rtol=judged.rtol, require_finite=True)


# Runs in a child process: the oneDNN ISA cap must be set before OpenVINO loads. Prints what it saw as JSON.
_CHILD = """
import json, sys
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.serving.runtimes.openvino import capabilities
from tests.serving.test_precision import _cancel_model, _cancel_probe

out = {"capabilities": capabilities(), "results": {}}
for precision in ("fp32", "fp16", "bf16"):
    reg = ModelRegistry()
    try:
        spec = EndpointSpec(name="e", version="1", runtime="openvino", blobs=[_cancel_model()], digest="d" * 64,
                            probe=_cancel_probe(), health={"warmupRuns": 1}, precision=precision, device="CPU")
        ok = reg.apply(spec)
        readback = None
        if ok.ok:
            with reg.get("e") as model:
                readback = model.backend.inference_precision
        state = reg.endpoints()["e"]
        wrong = reg.apply(EndpointSpec(**{**spec.__dict__, "version": "2", "probe": _cancel_probe(bias=1.0)}))
        out["results"][precision] = {
            "ok": ok.ok, "message": ok.message, "applied": ok.precision,
            "readback": readback,
            "declared": state.precision, "effective": state.effective_precision,
            "wrong": [wrong.ok, wrong.reason]}
    finally:
        reg.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("isa", ["", "AVX512_CORE_BF16"], ids=["this-cpu", "capped-at-avx512-bf16"])
def test_openvino_reports_and_health_checks_the_precision_it_actually_uses(isa: str) -> None:
    """Each declared precision loads and passes its health check, the registry reports the precision the compiled
    model reads back — the one OpenVINO documents for this CPU's capabilities — and a wrong build still fails.
    Capped at AVX-512 BF16 (a no-op on CPUs below it), an x86 CPU with native fp16 behaves like the issue's: the
    fp16 variant runs bf16, and only bf16's tolerance accepts its outputs on the cancelling probe."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ONEDNN_MAX_CPU_ISA": isa}
    if not isa:
        env.pop("ONEDNN_MAX_CPU_ISA")
    r = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.splitlines()[-1])
    caps = seen["capabilities"]
    for precision, res in seen["results"].items():
        assert res["ok"], (precision, caps, res)
        hint = openvino_hint(precision)
        documented = {openvino_cpu_precision(hint, caps)} | ({"bf16"} if hint == "bf16" else set())
        assert res["readback"] in documented, (precision, caps, res)
        effective = effective_precision(precision, res["readback"])
        assert (res["declared"], res["effective"], res["applied"]) == (precision, effective, effective)
        assert res["wrong"] == [False, "ProbeMismatch"], (precision, res)
    if isa and "BF16" in caps and "FP16" not in caps:  # the CPU (always so here on an x86 CPU with bf16)
        assert seen["results"]["fp16"]["effective"] == "bf16"
