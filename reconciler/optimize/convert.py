"""Building each variant kind with the library that does it (no hand-written quantizer). I/O edge.

``build(kind_name, src, out_dir, sample)`` writes ``out_dir/<kind>.onnx`` (or ``<kind>.xml`` + ``<kind>.bin``)
and returns the files. The heavy libraries (``onnx`` and ``sympy`` for ONNX Runtime's quantization tools,
``nncf`` for OpenVINO post-training quantization) come with the optional extra ``modelfleet[optimize]``;
:func:`check_extra` names what is missing before any work starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from reconciler.core.errors import UserError
from reconciler.optimize.sample import Sample

EXTRA = "modelfleet[optimize]"
# Which importable modules each kind needs beyond onnxruntime (always installed; openvino is in the extra).
_NEEDS: dict[str, tuple[str, ...]] = {
    "ort-int8-static": ("onnx", "sympy"),
    "ort-int8-dynamic": ("onnx", "sympy"),
    "ort-fp32": (),
    "ov-int8": ("openvino", "nncf"),
    "ov-fp16": ("openvino",),
    "ov-fp32": ("openvino",),
}
MAX_CALIBRATION_SAMPLES = 1000


def missing_modules(kinds: Sequence[str]) -> list[str]:
    wanted = sorted({m for k in kinds for m in _NEEDS[k]})
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def check_extra(kinds: Sequence[str]) -> None:
    missing = missing_modules(kinds)
    if missing:
        raise UserError(f"building {', '.join(k for k in kinds if set(_NEEDS[k]) & set(missing))} needs "
                        f"{', '.join(missing)}: install the optional extra with `pip install '{EXTRA}'` "
                        "(or leave those variants out with --variants)")


def build(kind_name: str, src: Path, out_dir: Path, sample: Sample) -> list[Path]:
    fn = {
        "ort-fp32": _ort_fp32,
        "ort-int8-dynamic": _ort_int8_dynamic,
        "ort-int8-static": _ort_int8_static,
        "ov-fp32": lambda s, o, _: _ov_save(s, o, "ov-fp32", fp16=False),
        "ov-fp16": lambda s, o, _: _ov_save(s, o, "ov-fp16", fp16=True),
        "ov-int8": _ov_int8,
    }[kind_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet():
        return fn(src, out_dir, sample)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The libraries print progress bars and INFO lines to stdout: send them to stderr (stdout is the report)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _ort_fp32(src: Path, out_dir: Path, _: Sample) -> list[Path]:
    import onnxruntime as ort

    dst = out_dir / "ort-fp32.onnx"
    opts = ort.SessionOptions()
    # EXTENDED fuses nodes into CPU-provider kernels that every CPU runs; ALL would also bake in memory
    # layouts chosen for *this* CPU's instruction set, which the ONNX Runtime docs warn against offline.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return [dst]


def _preprocessed(src: Path, tmp: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "preprocessed.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    return pre


def _ort_int8_dynamic(src: Path, out_dir: Path, _: Sample) -> list[Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = out_dir / "ort-int8-dynamic.onnx"
    with tempfile.TemporaryDirectory(prefix="mf-opt-") as tmp:
        quantize_dynamic(str(_preprocessed(src, Path(tmp))), str(dst), weight_type=QuantType.QInt8)
    return [dst]


def _calibration_items(sample: Sample) -> list[dict[str, np.ndarray]]:
    calib = sample.calib()
    n = min(sample.calibration, MAX_CALIBRATION_SAMPLES)
    return [{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)]


def _ort_int8_static(src: Path, out_dir: Path, sample: Sample) -> list[Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    items = _calibration_items(sample)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    dst = out_dir / "ort-int8-static.onnx"
    with tempfile.TemporaryDirectory(prefix="mf-opt-") as tmp:
        quantize_static(str(_preprocessed(src, Path(tmp))), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return [dst]


def _ov_save(src: Path, out_dir: Path, stem: str, *, fp16: bool, model: object | None = None) -> list[Path]:
    import openvino as ov

    xml, bin_ = out_dir / f"{stem}.xml", out_dir / f"{stem}.bin"
    ov.save_model(model if model is not None else ov.convert_model(str(src)), str(xml), compress_to_fp16=fp16)
    return [xml, bin_]


def _ov_int8(src: Path, out_dir: Path, sample: Sample) -> list[Path]:
    import openvino as ov

    # NNCF reports usage through openvino_telemetry unless told it runs in CI; a publisher's build must not
    # phone home or write identifiers into $HOME, and this variable switches NNCF to its no-op telemetry.
    os.environ.setdefault("NNCF_CI", "1")
    import nncf

    nncf.set_log_level(logging.WARNING)
    items = _calibration_items(sample)
    quantized = nncf.quantize(ov.convert_model(str(src)), nncf.Dataset(items), subset_size=len(items))
    return _ov_save(src, out_dir, "ov-int8", fp16=False, model=quantized)
