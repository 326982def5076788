"""OpenVINO backend.

Reads OpenVINO IR (``.xml`` + ``.bin``) or ONNX, from files or from bytes, and compiles it for the requested
device (``CPU``/``GPU``/``NPU``/``AUTO``; default ``CPU`` when it is the only device, else ``AUTO``) with the
latency performance hint. BYTES (string) tensors are refused at load: they crash this OpenVINO build. Compiled blobs are cached in ``cache_dir`` so a restart does not recompile.
Concurrent ``infer`` calls each take an infer request from a small pool.
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reconciler.serving.precision import effective_precision, openvino_hint
from reconciler.serving.runtimes.base import Backend, RuntimeLoadError
from reconciler.serving.runtimes.telemetry import import_openvino
from reconciler.serving.v2.codec import TensorMeta

_OV_TO_V2 = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
    "string": "BYTES",
}
_VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


@functools.cache
def core() -> Any:
    """The process-wide OpenVINO Core (creating one costs a plugin scan)."""
    ov = import_openvino()

    return ov.Core()


@functools.cache
def available_devices() -> tuple[str, ...]:
    return tuple(core().available_devices)


def capabilities(device: str = "CPU") -> list[str]:
    """The device's ``OPTIMIZATION_CAPABILITIES`` (``FP32``, ``BF16``, ``FP16``, ``INT8``, …): the formats it
    computes natively (:func:`reconciler.serving.precision.openvino_cpu_precision`)."""
    return [str(c) for c in core().get_property(device, "OPTIMIZATION_CAPABILITIES")]


def choose_device(requested: str | None, available: Sequence[str]) -> str:
    """The device string to compile for. Pure; raises :class:`RuntimeLoadError` for an absent device."""
    if not requested:
        return "CPU" if list(available) == ["CPU"] else "AUTO"
    req = requested.upper()
    if req.split(":")[0] in _VIRTUAL_DEVICES:
        return req
    # "GPU" matches "GPU.0", "GPU.1", … as OpenVINO enumerates several devices of one kind.
    if any(d == req or d.split(".")[0] == req for d in available):
        return req
    raise RuntimeLoadError(
        f"OpenVINO device {requested!r} is not available (available: {', '.join(available)})"
    )


def compile_config(precision: str | None, threads: int | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    """``compile_model`` properties. Pure. The inference precision is always set from the declared precision:
    left to the CPU plugin it is bf16 on CPUs with AVX-512 BF16/AMX, and an fp32 model's outputs drift."""
    try:
        hint = openvino_hint(precision)
    except ValueError as exc:
        raise RuntimeLoadError(str(exc)) from None
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def _compiled_precision(compiled: Any, requested: str) -> str:
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    except Exception:  # virtual devices (AUTO, MULTI) may not expose it
        return requested


def _meta(ports: Sequence[Any]) -> list[TensorMeta]:
    out = []
    for p in ports:
        tname = p.get_element_type().get_type_name()
        dt = _OV_TO_V2.get(tname)
        if dt is None:
            raise RuntimeLoadError(
                f"tensor {p.get_any_name()!r} has type {tname}, which KServe v2 cannot carry"
            )
        shape = tuple(d.get_length() if d.is_static else -1 for d in p.get_partial_shape())
        out.append(TensorMeta(p.get_any_name(), dt, shape))
    return out


class OpenVINOBackend(Backend):
    runtime = "openvino"
    platform = "openvino_ir"

    def __init__(
        self,
        *,
        files: Sequence[Path] | None = None,
        blobs: Sequence[bytes] | None = None,
        threads: int | None = None,
        device: str | None = None,
        cache_dir: Path | None = None,
        precision: str | None = None,
    ) -> None:
        c = core()
        items = list(files if files is not None else blobs or [])
        if len(items) not in (1, 2):
            raise RuntimeLoadError(
                f"an OpenVINO model is an .xml + .bin pair or one .onnx file, got {len(items)}"
            )
        self.device = choose_device(device, available_devices())
        config = compile_config(precision, threads, cache_dir)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        try:
            if files is not None:
                model = c.read_model(str(items[0]), str(items[1]) if len(items) == 2 else None)
            else:
                weights = bytes(items[1]) if len(items) == 2 else b""
                model = c.read_model(model=bytes(items[0]), weights=weights)
            self._compiled = c.compile_model(model, self.device, config)
        except RuntimeLoadError:
            raise
        except Exception as exc:
            raise RuntimeLoadError(f"OpenVINO cannot load the model: {exc}") from exc
        #: The compiled model's INFERENCE_PRECISION_HINT, read back: the hint, or what the plugin falls back to
        #: on a CPU without that format (``bf16`` for an ``f16`` hint on AVX-512 BF16 without FP16, else ``f32``).
        self.inference_precision = _compiled_precision(self._compiled, config["INFERENCE_PRECISION_HINT"])
        self.precision = effective_precision(precision, self.inference_precision)
        self._inputs = _meta(self._compiled.inputs)
        self._outputs = _meta(self._compiled.outputs)
        if any(m.datatype == "BYTES" for m in self._inputs + self._outputs):
            # OpenVINO string tensors corrupt the heap in this build (abort at interpreter exit).
            self._compiled = None
            raise RuntimeLoadError(
                "the OpenVINO backend does not serve BYTES (string) tensors; use onnxruntime"
            )
        self._output_names = [m.name for m in self._outputs]
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pool.put(self._compiled.create_infer_request())

    def infer(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names is not None else self._output_names
        try:
            req = self._pool.get_nowait()
        except queue.Empty:
            req = self._compiled.create_infer_request()
        try:
            res = req.infer(feeds, share_inputs=False, share_outputs=False)
            out: dict[str, np.ndarray] = {}
            for port, value in res.items():
                for name in port.get_names():
                    if name in names:
                        out[name] = value  # share_outputs=False: already the caller's own copy
        finally:
            self._pool.put(req)
        return {n: out[n] for n in names}

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                break
        self._compiled = None
