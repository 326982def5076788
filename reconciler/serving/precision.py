"""Numeric precision: a declared property of a model variant, never an accident of the CPU.

A variant declares ``precision`` (``fp32`` when absent). It decides two things, both pure and defined here:

- how a runtime is told to compute (:func:`openvino_hint`, :func:`onnxruntime_session_config`). OpenVINO's CPU
  plugin otherwise picks its own inference precision — ``bf16`` on CPUs with AVX-512 BF16 or AMX, where an
  ``fp32`` variant's outputs then drift by percents from its golden outputs;
- how close the health check's outputs must be to the probe's golden outputs (:func:`default_tolerance`),
  unless the deployment's ``health`` section sets ``atol``/``rtol`` itself.

The default tolerances follow from each format's significand (unit roundoff ``u = 2**-p`` for ``p``
significant bits). ``fp32`` keeps the long-standing ``atol=1e-4, rtol=1e-3``: ~1000x its ``u = 6e-8``, room
for kernels that sum in another order, tight enough to catch a wrong model. The reduced formats allow 16-20
rounding units, enough for products rounded on input, a few layers of accumulation and outputs that cancel
to near zero, while an output off by a real amount (a different model, a wrong bias) still fails:

=========  ==============  ==========  =======================================================
precision  significand p   u = 2^-p    default atol = rtol
=========  ==============  ==========  =======================================================
fp32       24 bits         6.0e-8      1e-4 / 1e-3
fp16       11 bits         4.9e-4      1e-2   (~20 u)
bf16       8 bits          3.9e-3      6.25e-2 (16 u = 2^-4)
int8       8 bits (total)  3.9e-3 of   1e-1   (per-tensor quantization step 2^-7 of the tensor's
                           the range            range, ~12 steps over a few quantized layers)
=========  ==============  ==========  =======================================================
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True, slots=True)
class Tolerance:
    atol: float
    rtol: float


_TOLERANCES = {
    "fp32": Tolerance(1e-4, 1e-3),
    "fp16": Tolerance(1e-2, 1e-2),
    "bf16": Tolerance(6.25e-2, 6.25e-2),
    "int8": Tolerance(1e-1, 1e-1),
}

# OpenVINO INFERENCE_PRECISION_HINT per declared precision. int8 models carry their quantization in the graph
# (FakeQuantize); the layers left unquantized run in f32, so the result does not depend on the CPU.
_OPENVINO_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}

# ONNX Runtime's only CPU switch that lowers an fp32 model's precision is the arm64 bf16 fast-math GEMM (an
# unknown key on other builds is accepted and ignored). It is pinned off unless the variant declares bf16.
_ORT_ARM64_BF16 = "mlas.enable_gemm_fastmath_arm64_bfloat16"


def check_precision(precision: str | None) -> str:
    """``precision`` (``fp32`` when None/empty) if it is one of :data:`PRECISIONS`, else ``ValueError``."""
    p = precision or DEFAULT_PRECISION
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {p!r} (one of {', '.join(PRECISIONS)})")
    return p


def default_tolerance(precision: str | None) -> Tolerance:
    return _TOLERANCES[check_precision(precision)]


def openvino_hint(precision: str | None) -> str:
    """The ``INFERENCE_PRECISION_HINT`` an OpenVINO model of ``precision`` is compiled with."""
    return _OPENVINO_HINTS[check_precision(precision)]


def onnxruntime_session_config(precision: str | None) -> dict[str, str]:
    """Session config entries for ONNX Runtime. It computes in the types the model file declares (an fp16 or
    int8 model is fp16/int8 in the file); only bf16 opts into the arm64 bf16 fast-math GEMM."""
    return {_ORT_ARM64_BF16: "1" if check_precision(precision) == "bf16" else "0"}
