"""Numeric precision: a declared property of a model variant, never an accident of the CPU.

A variant declares ``precision`` (``fp32`` when absent). It decides two things, both pure and defined here:

- how a runtime is told to compute (:func:`openvino_hint`, :func:`onnxruntime_session_config`). OpenVINO's CPU
  plugin otherwise picks its own inference precision — ``bf16`` on CPUs with AVX-512 BF16 or AMX, where an
  ``fp32`` variant's outputs then drift by percents from its golden outputs;
- how close the health check's outputs must be to the probe's golden outputs (:func:`default_tolerance`),
  unless the deployment's ``health`` section sets ``atol``/``rtol`` itself.

The declaration is a request: a runtime computes in a format only where the CPU can. OpenVINO's CPU plugin
documents what it does with an ``INFERENCE_PRECISION_HINT`` it cannot honour natively (``f16`` on a CPU without
native fp16, e.g. AVX-512 BF16 without AVX-512 FP16): it keeps its default floating-point precision — ``bf16``
where the CPU has bf16 (``BF16`` in ``OPTIMIZATION_CAPABILITIES``), else ``f32`` (:func:`openvino_cpu_precision`).
So the device reads back what the compiled model actually uses (:func:`effective_precision`), reports it, and
health-checks against it (:func:`health_tolerance`: the looser of the declared and the effective format's).

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

from collections.abc import Iterable
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

# OpenVINO element type names (``get_type_name()``) of the floating-point formats, as this module names them.
_FROM_OPENVINO = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
# OPTIMIZATION_CAPABILITIES entry that says the CPU computes a format natively (f32: always).
_OPENVINO_CAPABILITY = {"f16": "FP16", "bf16": "BF16"}

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


def openvino_cpu_precision(hint: str, capabilities: Iterable[str]) -> str:
    """The inference precision OpenVINO's CPU plugin documents for ``INFERENCE_PRECISION_HINT`` ``hint``
    (``f32``/``f16``/``bf16``) on a CPU whose ``OPTIMIZATION_CAPABILITIES`` are ``capabilities``. Pure.

    A hint the CPU supports natively is used as given. Otherwise the plugin keeps its default floating-point
    precision: the half-precision format the CPU does have (``bf16`` with ``BF16``, e.g. AVX-512 BF16 or AMX
    without AVX-512 FP16; ``f16`` with ``FP16``, e.g. an arm64 CPU with fp16 arithmetic), else ``f32``
    (CPU device guide, "Floating Point Data Types Specifics" and "Inference Precision Hint"). A ``bf16`` hint on
    an AVX-512 CPU without native bf16 may also run as ``bf16`` in the plugin's software simulation mode; the
    plugin then still reads back ``bf16``.
    """
    caps = set(capabilities)
    if hint not in ("f32", "f16", "bf16"):
        raise ValueError(f"unknown OpenVINO inference precision {hint!r} (one of f32, f16, bf16)")
    if hint == "f32" or _OPENVINO_CAPABILITY[hint] in caps:
        return hint
    for fallback in ("bf16", "f16"):
        if _OPENVINO_CAPABILITY[fallback] in caps:
            return fallback
    return "f32"


def effective_precision(declared: str | None, openvino_readback: str | None) -> str:
    """The precision a variant declared ``declared`` actually computes in, from the ``INFERENCE_PRECISION_HINT``
    its compiled OpenVINO model reads back (None: nothing read back, e.g. ONNX Runtime, which computes in the
    model file's types). The declared precision when the runtime honoured its hint (``int8`` stays ``int8``: its
    hint is ``f32`` for the layers left in float); else the format read back."""
    d = check_precision(declared)
    if openvino_readback is None or openvino_readback == openvino_hint(d):
        return d
    return _FROM_OPENVINO.get(openvino_readback, d)


def health_tolerance(declared: str | None, effective: str | None = None) -> Tolerance:
    """Default health-check tolerance of a variant declared ``declared`` that computes in ``effective``: the
    looser of the two formats' (a variant declared fp16 that runs bf16 is judged as bf16; one declared bf16 that
    runs in f32 keeps bf16's, as its golden outputs may have been recorded at bf16)."""
    a, b = default_tolerance(declared), default_tolerance(effective or declared)
    return Tolerance(max(a.atol, b.atol), max(a.rtol, b.rtol))
