"""Building each variant kind with the library that does it (no hand-written quantizer). I/O edge.

``build(kind_name, src, out_dir, ctx)`` writes ``out_dir/<kind>.onnx`` (or ``<kind>.xml`` + ``<kind>.bin``)
and returns the files with the route that made them; a failure raises :class:`~.failure.StepError` with every
attempt (step, exception type, message). ONNX Runtime's quantizers run after ``quant_pre_process`` by default,
which real models break in several ways (an ``assert`` in symbolic shape inference, "Incomplete symbolic shape
inference", a pre-processed graph the quantizer then turns into an invalid model, a fused ``Gemm`` the per-channel
bias adjustment trips on): ``preprocess: auto`` tries with symbolic shape inference, then without it, then
without pre-processing, and keeps the first result that loads and runs in ONNX Runtime.
:func:`servable` first replaces ZipMap outputs (sequences of maps, which a device cannot serve as KServe v2
tensors) by the probability tensors they were made from. The heavy libraries (``onnx`` and ``sympy`` for ONNX Runtime's quantization tools,
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconciler.core.errors import UserError
from reconciler.optimize.failure import Failure, StepError, describe
from reconciler.optimize.outputs import Roles, answers, same_class
from reconciler.optimize.quantopts import CALIBRATION_METHODS, QuantOptions
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


@dataclass(frozen=True)
class BuildContext:
    sample: Sample
    quant: QuantOptions = field(default_factory=QuantOptions)
    roles: Roles | None = None  # the classifier's answer outputs (accuracy control needs them)
    max_drop: float = 0.01  # accuracy control: largest accuracy drop, absolute (0.01 = 1 point)


@dataclass
class Built:
    files: list[Path]
    route: str  # how the files were made, e.g. "quantize_static (QDQ, per-channel, minmax) without pre-processing"
    attempts: list[Failure] = field(default_factory=list)  # routes tried first that failed


def build(kind_name: str, src: Path, out_dir: Path, ctx: BuildContext) -> Built:
    fn: Callable[[Path, Path, BuildContext], Built] = {
        "ort-fp32": _ort_fp32,
        "ort-int8-dynamic": _ort_int8_dynamic,
        "ort-int8-static": _ort_int8_static,
        "ov-fp32": lambda s, o, _: _ov_plain(s, o, "ov-fp32", fp16=False),
        "ov-fp16": lambda s, o, _: _ov_plain(s, o, "ov-fp16", fp16=True),
        "ov-int8": _ov_int8,
    }[kind_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet():
        return fn(src.resolve(), out_dir.resolve(), ctx)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The libraries print progress bars and INFO lines to stdout: send them to stderr (stdout is the report)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """Symbolic shape inference saves ``sym_shape_infer_temp.onnx`` into the working directory when it fails."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _step(step: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # a library failing on one variant must not cost the others
        raise StepError([describe(step, exc)]) from exc


def _ort_fp32(src: Path, out_dir: Path, _: BuildContext) -> Built:
    import onnxruntime as ort

    dst = out_dir / "ort-fp32.onnx"
    opts = ort.SessionOptions()
    # EXTENDED fuses nodes into CPU-provider kernels that every CPU runs; ALL would also bake in memory
    # layouts chosen for *this* CPU's instruction set, which the ONNX Runtime docs warn against offline.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    _step("optimizing (onnxruntime.InferenceSession, extended level)",
          lambda: ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"]))
    return Built([dst], "onnxruntime graph optimization (extended level), saved offline")


# preprocess option -> (quant_pre_process's skip_symbolic_shape or None for no pre-processing, words)
_ROUTES: dict[str, tuple[bool | None, str]] = {
    "full": (False, "pre-processed with symbolic shape inference"),
    "no-symbolic": (True, "pre-processed without symbolic shape inference"),
    "off": (None, "not pre-processed"),
}


def _routes(preprocess: str) -> list[str]:
    return ["full", "no-symbolic", "off"] if preprocess == "auto" else [preprocess]


def _ort_quantized(src: Path, dst: Path, ctx: BuildContext, what: str, quantize: Callable[[Path], None],
                   detail: str = "", min_opset: int = 0) -> Built:
    """Pre-process (route by route, see the module's doc), quantize, and check the result loads and runs."""
    attempts: list[Failure] = []
    with tempfile.TemporaryDirectory(prefix="mf-opset-") as tmp:
        upgraded = _with_opset(src, min_opset, Path(tmp), attempts)
        changed = ""
        if upgraded is not None:
            src, changed = upgraded[0], f"{upgraded[1]} and "
        return _ort_routes(src, dst, ctx, what, quantize, detail, changed, attempts)


def _with_opset(src: Path, min_opset: int, tmp: Path, attempts: list[Failure]) -> tuple[Path, str] | None:
    """``src`` converted to ``min_opset`` when its ONNX opset is older (None when it is not, or cannot be)."""
    if not min_opset:
        return None
    import onnx

    step = f"converting the model to opset {min_opset} (onnx.version_converter)"
    try:
        model = onnx.load(str(src))
        have = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), min_opset)
        if have >= min_opset:
            return None
        dst = tmp / "opset.onnx"
        onnx.save(onnx.version_converter.convert_version(model, min_opset), str(dst))
    except Exception as exc:
        attempts.append(describe(step, exc))
        return None
    return dst, f"converted from opset {have} to {min_opset}"


def _ort_routes(src: Path, dst: Path, ctx: BuildContext, what: str, quantize: Callable[[Path], None], detail: str,
                changed: str, attempts: list[Failure]) -> Built:
    for route in _routes(ctx.quant.preprocess):
        skip_symbolic, words = _ROUTES[route]
        with tempfile.TemporaryDirectory(prefix="mf-opt-") as tmp:
            model = src
            if skip_symbolic is not None:
                model = Path(tmp) / "preprocessed.onnx"
                try:
                    from onnxruntime.quantization.shape_inference import quant_pre_process

                    with _cwd(Path(tmp)):
                        quant_pre_process(str(src), str(model), skip_symbolic_shape=skip_symbolic)
                except Exception as exc:
                    with_or_not = "without" if skip_symbolic else "with"
                    attempts.append(describe(f"pre-processing (quant_pre_process {with_or_not} symbolic shape "
                                             "inference)", exc))
                    continue
            try:
                quantize(model)
            except Exception as exc:
                attempts.append(describe(f"{what} on the model {words}", exc))
                continue
            try:
                _runs_in_onnxruntime(dst, ctx.sample)
            except Exception as exc:
                attempts.append(describe(f"loading the result of {what} on the model {words} in onnxruntime", exc))
                continue
        return Built([dst], f"{what}{detail} on the model {changed}{words}", attempts)
    dst.unlink(missing_ok=True)
    raise StepError(attempts)


def _runs_in_onnxruntime(path: Path, sample: Sample) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    sess.run(None, _calibration_items(sample)[0])


def _ort_int8_dynamic(src: Path, out_dir: Path, ctx: BuildContext) -> Built:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = out_dir / "ort-int8-dynamic.onnx"
    q = ctx.quant

    def quantize(model: Path) -> None:
        quantize_dynamic(str(model), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(q.op_types) or None, nodes_to_exclude=list(q.exclude_nodes) or None)

    return _ort_quantized(src, dst, ctx, "quantize_dynamic", quantize)


def _calibration_items(sample: Sample) -> list[dict[str, np.ndarray]]:
    calib = sample.calib()
    n = min(sample.calibration, MAX_CALIBRATION_SAMPLES)
    return [{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)]


def _ort_int8_static(src: Path, out_dir: Path, ctx: BuildContext) -> Built:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    items = _calibration_items(ctx.sample)
    q = ctx.quant

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    dst = out_dir / "ort-int8-static.onnx"

    def quantize(model: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="mf-calib-") as tmp, _cwd(Path(tmp)):  # calibration scratch files
            quantize_static(str(model), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=q.per_channel,
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[q.calibration_method]),
                            op_types_to_quantize=list(q.op_types) or None,
                            nodes_to_exclude=list(q.exclude_nodes) or None)

    detail = (f" (QDQ, {'per-channel' if q.per_channel else 'per-tensor'}, {q.calibration_method} calibration on "
              f"{len(items)} samples)")
    # Per-channel QDQ writes DequantizeLinear's `axis`, which ONNX has only from opset 13 on; the quantizer does
    # not upgrade older models itself and would write a model ONNX Runtime refuses to load.
    return _ort_quantized(src, dst, ctx, "quantize_static", quantize, detail, 13 if q.per_channel else 0)


def _ov_convert(src: Path) -> Any:
    import openvino as ov

    return _step("converting (openvino.convert_model)", lambda: ov.convert_model(str(src)))


def _ov_save(model: Any, out_dir: Path, stem: str, *, fp16: bool) -> list[Path]:
    import openvino as ov

    xml, bin_ = out_dir / f"{stem}.xml", out_dir / f"{stem}.bin"
    _step("saving (openvino.save_model)", lambda: ov.save_model(model, str(xml), compress_to_fp16=fp16))
    return [xml, bin_]


def _ov_plain(src: Path, out_dir: Path, stem: str, *, fp16: bool) -> Built:
    files = _ov_save(_ov_convert(src), out_dir, stem, fp16=fp16)
    return Built(files, f"openvino.convert_model + save_model(compress_to_fp16={fp16})")


def _ov_outputs(compiled: Any, result: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for port in compiled.outputs:
        for name in port.get_names():
            out[name] = np.asarray(result[port])
    return out


def _ov_int8(src: Path, out_dir: Path, ctx: BuildContext) -> Built:
    # NNCF reports usage through openvino_telemetry unless told it runs in CI; a publisher's build must not
    # phone home or write identifiers into $HOME, and this variable switches NNCF to its no-op telemetry.
    os.environ.setdefault("NNCF_CI", "1")
    import nncf

    nncf.set_log_level(logging.WARNING)
    model = _ov_convert(src)
    q, sample = ctx.quant, ctx.sample
    items = _calibration_items(sample)
    kwargs: dict[str, Any] = {"subset_size": min(q.subset_size or len(items), len(items))}
    if q.preset:
        kwargs["preset"] = nncf.QuantizationPreset(q.preset)
    if q.ignored_scope():
        kwargs["ignored_scope"] = nncf.IgnoredScope(**q.ignored_scope())
    said = ", ".join(f"{k}={v}" for k, v in (("preset", q.preset), ("subset_size", kwargs["subset_size"])) if v)
    if not q.accuracy_control:
        quantized = _step("quantizing (nncf.quantize)", lambda: nncf.quantize(model, nncf.Dataset(items), **kwargs))
        return Built(_ov_save(quantized, out_dir, "ov-int8", fp16=False), f"nncf.quantize ({said})")
    roles, labels = ctx.roles, sample.labels
    if roles is None or roles.answer is None or labels is None:
        raise StepError([Failure("accuracy control", "UserError",
                                 "needs a classifier and labels in the sample")])
    truth = labels[: len(items)]
    answer_roles = roles

    def accuracy(compiled: Any, data: Any) -> float:
        got = [answers(answer_roles, _ov_outputs(compiled, compiled(feeds)), 1)[0] for feeds, _ in data]
        return float(np.mean(same_class(np.asarray(got), np.asarray([y for _, y in data]))))

    validation = nncf.Dataset(list(zip(items, truth, strict=True)))
    quantized = _step(
        "quantizing (nncf.quantize_with_accuracy_control)",
        lambda: nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(items), validation, accuracy, max_drop=ctx.max_drop,
            drop_type=nncf.DropType.ABSOLUTE, **kwargs))
    route = (f"nncf.quantize_with_accuracy_control ({said}, max drop {ctx.max_drop * 100:.2f} points of accuracy "
             f"on the {len(items)} labelled calibration samples)")
    return Built(_ov_save(quantized, out_dir, "ov-int8", fp16=False), route)


@dataclass(frozen=True)
class Servable:
    """The model every variant is built from: the user's file, or a copy whose ZipMap outputs are tensors."""

    path: Path
    source: Path
    zipmaps: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # output -> class of each column

    def notes(self) -> list[str]:
        return [f"output {name}: the file's ZipMap (a sequence of {{class: probability}} maps, which a device "
                f"cannot serve as a KServe v2 tensor) is replaced by the [N, {len(classes)}] FP32 probability "
                f"tensor it was made from (columns: classes {_classes_text(classes)}); checked equal to the "
                "maps on the evaluation sample" for name, classes in self.zipmaps.items()]


def _classes_text(classes: Sequence[Any]) -> str:
    text = ", ".join(str(c) for c in classes[:6])
    return text + (f", … ({len(classes)})" if len(classes) > 6 else "")


def servable(src: Path, work: Path) -> Servable:
    """``src`` itself, or (when it has ZipMap outputs) a copy in ``work`` with those outputs as tensors."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        outs = ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"]).get_outputs()
    except Exception:  # not loadable at all: the device backend's load says why, with its own words
        return Servable(src, src)
    if not any(o.type.startswith("seq(map(") for o in outs):
        return Servable(src, src)
    try:
        import onnx
    except ImportError:
        raise UserError(f"{src}: has ZipMap outputs; replacing them needs the onnx package: "
                        f"pip install '{EXTRA}'") from None
    model = onnx.load(str(src))
    graph_outputs = {o.name: o for o in model.graph.output}
    zipmaps: dict[str, tuple[Any, ...]] = {}
    for node in model.graph.node:
        if node.op_type != "ZipMap" or node.output[0] not in graph_outputs:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "classlabels_int64s" in attrs:
            classes: tuple[Any, ...] = tuple(int(v) for v in attrs["classlabels_int64s"].ints)
        else:
            classes = tuple(v.decode("utf-8") for v in attrs["classlabels_strings"].strings)
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        out = graph_outputs[node.output[0]]
        out.type.CopyFrom(onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["N", len(classes)]))
        zipmaps[node.output[0]] = classes
    if not zipmaps:
        return Servable(src, src)
    dst = work / f"{src.stem}.tensors.onnx"
    onnx.save(model, str(dst))
    return Servable(dst, src, zipmaps)


def check_servable(s: Servable, inputs: Mapping[str, np.ndarray], tensors: Mapping[str, np.ndarray]) -> None:
    """The replaced ZipMap outputs equal the maps the user's own file gives, on ``inputs`` (raises UserError)."""
    if not s.zipmaps:
        return
    import onnxruntime as ort

    sess = ort.InferenceSession(str(s.source), providers=["CPUExecutionProvider"])
    names = list(s.zipmaps)
    n = int(next(iter(inputs.values())).shape[0])
    maps: dict[str, list[Any]] = {name: [] for name in names}
    for start in range(0, n, 256):
        got = sess.run(names, {k: v[start:start + 256] for k, v in inputs.items()})
        for name, seq in zip(names, got, strict=True):
            maps[name].extend(seq)
    for name, classes in s.zipmaps.items():
        probs = np.array([[row[c] for c in classes] for row in maps[name]], dtype=np.float32)
        if probs.shape != np.asarray(tensors[name]).shape or not np.allclose(probs, tensors[name], rtol=1e-5,
                                                                           atol=1e-6):
            raise UserError(f"{s.source}: output {name}: the probabilities read from its ZipMap differ from the "
                            "tensor it was made from; export the model with skl2onnx's zipmap=False instead")
