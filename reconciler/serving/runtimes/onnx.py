"""ONNX Runtime backend.

Execution providers: the deployment's preference order filtered by what this build of ONNX Runtime offers,
CPU always last as the fallback. Intra-op threads are configurable; thread spinning is off so an idle server
does not burn the (few) cores of an edge device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reconciler.serving.precision import check_precision, onnxruntime_session_config
from reconciler.serving.runtimes.base import Backend, RuntimeLoadError
from reconciler.serving.runtimes.telemetry import import_onnxruntime
from reconciler.serving.v2.codec import CodecError, TensorMeta

_ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
# Providers that are listed as available but never execute a model locally.
_NOT_LOCAL = {"AzureExecutionProvider"}


def choose_providers(available: Sequence[str], preference: Sequence[str] | None) -> list[str]:
    """Preferred providers that are available, in preference order, then CPU. Pure."""
    avail = [p for p in available if p not in _NOT_LOCAL]
    if preference:
        chosen = [p for p in preference if p in avail and p != "CPUExecutionProvider"]
    else:
        chosen = [p for p in avail if p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def _meta(args: Sequence[Any]) -> list[TensorMeta]:
    out = []
    for a in args:
        dt = _ORT_TO_V2.get(a.type)
        if dt is None:
            raise RuntimeLoadError(f"tensor {a.name!r} has type {a.type}, which KServe v2 cannot carry")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (a.shape or []))
        out.append(TensorMeta(a.name, dt, shape))
    return out


class OnnxBackend(Backend):
    runtime = "onnxruntime"
    platform = "onnxruntime_onnx"

    def __init__(
        self,
        *,
        files: Sequence[Path] | None = None,
        blobs: Sequence[bytes] | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        precision: str | None = None,
    ) -> None:
        ort = import_onnxruntime()

        src: str | bytes
        items = list(files if files is not None else blobs or [])
        if len(items) != 1:
            raise RuntimeLoadError(f"an ONNX model is one file, got {len(items)}")
        src = str(items[0]) if files is not None else bytes(items[0])
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            for key, value in onnxruntime_session_config(precision).items():
                opts.add_session_config_entry(key, value)
            # ONNX Runtime has nothing to read back: it computes in the model file's types, which the declaration
            # names (modelfleet validate warns when they differ).
            self.precision = check_precision(precision)
        except ValueError as exc:
            raise RuntimeLoadError(str(exc)) from None
        self.providers = choose_providers(ort.get_available_providers(), providers)
        try:
            self._sess = ort.InferenceSession(src, sess_options=opts, providers=self.providers)
        except Exception as exc:  # ORT raises several unrelated types for bad models
            raise RuntimeLoadError(f"onnxruntime cannot load the model: {exc}") from exc
        self._inputs = _meta(self._sess.get_inputs())
        self._outputs = _meta(self._sess.get_outputs())
        self._string_inputs = {m.name for m in self._inputs if m.datatype == "BYTES"}
        self._string_outputs = {m.name for m in self._outputs if m.datatype == "BYTES"}
        self._output_names = [m.name for m in self._outputs]
        self._run = self._sess.run
        # CPU only and no optional inputs: the Python wrapper's checks (provider fallback, graph capture, OrtValue
        # ownership) do not apply; its missing-input message is kept by retrying through it on an error.
        inner = getattr(self._sess, "_sess", None)
        self._direct = (inner.run if inner is not None and self.providers == ["CPUExecutionProvider"]
                        and not any(a.type.startswith("optional") for a in self._sess.get_inputs()) else None)
        self._plain = not self._string_inputs and not self._string_outputs

    def infer(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names is not None else self._output_names
        direct = self._direct
        if direct is not None and self._plain:
            try:
                return dict(zip(names, direct(names, feeds, None), strict=True))
            except Exception:  # noqa: BLE001 - the wrapper below says what is wrong (or it was transient)
                pass
        if self._string_inputs:
            feeds = dict(feeds)
            for n in self._string_inputs & feeds.keys():
                feeds[n] = _to_str_array(n, feeds[n])
        results = self._run(names, feeds)
        out = dict(zip(names, results, strict=True))
        for n in self._string_outputs & out.keys():
            arr = out[n]
            enc = np.empty(arr.size, dtype=object)
            enc[:] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in arr.reshape(-1)]
            out[n] = enc.reshape(arr.shape)
        return out

    def close(self) -> None:
        self._sess = None  # type: ignore[assignment]
        self._run = _closed
        self._direct = None


def _closed(*_: Any) -> Any:
    raise RuntimeError("session is closed")


def _to_str_array(name: str, arr: np.ndarray) -> np.ndarray:
    # ONNX Runtime string tensors are std::string fed from Python str: the bytes must be UTF-8.
    out = np.empty(arr.size, dtype=object)
    try:
        out[:] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    except UnicodeDecodeError:
        raise CodecError(f"input {name!r}: onnxruntime string tensors must be UTF-8") from None
    return out.reshape(arr.shape)
