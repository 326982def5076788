"""KServe v2 (Open Inference Protocol) tensor (de)serialisation and request validation — pure, no I/O.

Flow for one ``/infer`` call: :func:`decode_request` turns the body (JSON, optionally followed by the binary
tensor data extension's raw bytes) into numpy arrays; :func:`validate_inputs` checks them against the model's
input metadata (names, datatypes, shapes with ``-1`` wildcards, declared value ranges); the runtime runs;
:func:`encode_response` builds the JSON (or JSON + binary) response. Every problem with a request raises
:class:`CodecError` whose message is what the client sees in ``{"error": …}`` with status 400.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reconciler.serving.v2.jsonio import (
    DataSpan,
    JsonError,
    JsonLimits,
    count_nonfinite,
    dumps,
    dumps_data,
    loads_request,
    span_to_array,
    to_array,
)

# KServe v2 datatype -> numpy dtype (little-endian, as the binary extension requires).
V2_TO_NP: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
NP_TO_V2: dict[np.dtype[Any], str] = {np.dtype(v).newbyteorder("="): k for k, v in V2_TO_NP.items()}
NP_TO_V2[np.dtype(np.str_)] = "BYTES"
NP_TO_V2[np.dtype(np.bytes_)] = "BYTES"
DATATYPES = frozenset(V2_TO_NP)

_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


class CodecError(ValueError):
    """A malformed or invalid request; the message is returned to the client with status 400."""


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """One model input or output: name, KServe v2 datatype, shape (``-1`` = variable), optional value range."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    min: float | None = None
    max: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_decl(cls, decl: Mapping[str, Any]) -> TensorMeta:
        """From a Model manifest tensor declaration (``{"name","datatype","shape","range"?}``)."""
        rng = decl.get("range") or {}
        return cls(
            name=str(decl["name"]),
            datatype=str(decl["datatype"]),
            shape=tuple(int(d) for d in decl.get("shape", ())),
            min=rng.get("min"),
            max=rng.get("max"),
        )


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None
    binary_default: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Where each binary input's bytes start, counted from the end of the JSON header.
    binary_at: dict[str, int] = field(default_factory=dict)


def datatype_of(arr: np.ndarray) -> str:
    """The KServe v2 datatype of a numpy array (object/str/bytes arrays are ``BYTES``)."""
    try:
        return NP_TO_V2[arr.dtype.newbyteorder("=")]
    except KeyError:
        if arr.dtype.kind in "USO":
            return "BYTES"
        raise CodecError(f"unsupported tensor dtype {arr.dtype}") from None


def _num_elements(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


MAX_DIM = 2**31 - 1  # largest accepted dimension value
MAX_NDIM = 32


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
        raise CodecError(
            f"input {name!r}: 'shape' must be a list of non-negative integers up to {MAX_DIM}, got {str(shape)[:200]}"
        )
    if len(shape) > MAX_NDIM:
        raise CodecError(f"input {name!r}: 'shape' has more than {MAX_NDIM} dimensions")
    nonzero = 1
    for d in shape:
        nonzero *= d or 1
    if nonzero > 2**48:  # numpy cannot describe such an array, even when a 0 makes it empty
        raise CodecError(f"input {name!r}: 'shape' {shape} is too large")
    return tuple(shape)


def flatten(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _json_array(
    name: str, datatype: str, shape: tuple[int, ...], data: Any, limits: JsonLimits | None = None
) -> np.ndarray:
    n = _num_elements(shape)
    max_elements = (limits or JsonLimits()).max_elements
    if n > max_elements:
        raise CodecError(f"input {name!r}: shape {list(shape)} has more than {max_elements} elements for JSON")
    if isinstance(data, DataSpan):
        if data.elements != n:
            raise CodecError(f"input {name!r}: shape {list(shape)} needs {n} elements, 'data' has {data.elements}")
        if datatype == "BYTES":
            raise CodecError(f"input {name!r}: BYTES data in JSON must be strings")
        try:
            return span_to_array(name, datatype, V2_TO_NP[datatype], data).reshape(shape)
        except JsonError as exc:
            raise CodecError(str(exc)) from None
    if not isinstance(data, list):
        raise CodecError(f"input {name!r}: 'data' must be a JSON array")
    flat = data if not data or not isinstance(data[0], list) else flatten(data)
    if len(flat) != n:
        raise CodecError(f"input {name!r}: shape {list(shape)} needs {n} elements, 'data' has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise CodecError(f"input {name!r}: BYTES data in JSON must be strings")
        arr = np.empty(n, dtype=object)
        arr[:] = [v.encode("utf-8") for v in flat]
        return arr.reshape(shape)
    if any(isinstance(v, list) for v in flat):
        raise CodecError(f"input {name!r}: 'data' is not a list of numbers")
    try:
        return to_array(name, datatype, V2_TO_NP[datatype], flat).reshape(shape)
    except JsonError as exc:
        raise CodecError(str(exc)) from None


def _binary_array(
    name: str, datatype: str, shape: tuple[int, ...], raw: memoryview, limits: JsonLimits
) -> np.ndarray:
    n = _num_elements(shape)
    if datatype == "BYTES":
        if n > limits.max_elements:  # each element becomes a Python object
            raise CodecError(f"input {name!r}: more than {limits.max_elements} BYTES elements")
        items: list[bytes] = []
        pos, end = 0, len(raw)
        while pos < end:
            if pos + 4 > end:
                raise CodecError(f"input {name!r}: truncated BYTES element length")
            (ln,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + ln > end:
                raise CodecError(f"input {name!r}: truncated BYTES element")
            items.append(bytes(raw[pos : pos + ln]))
            pos += ln
        if len(items) != n:
            raise CodecError(f"input {name!r}: shape {list(shape)} needs {n} elements, got {len(items)}")
        arr = np.empty(n, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = V2_TO_NP[datatype]
    if len(raw) != n * dtype.itemsize:
        raise CodecError(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {n * dtype.itemsize} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if datatype == "BOOL":
        check_bool_bytes(name, arr)
    return arr


#: The public names of the per-tensor steps, for a front that parses its own envelope (reconciler.serving.grpc).
check_shape = _check_shape
binary_array = _binary_array


def check_bool_bytes(name: str, arr: np.ndarray) -> None:
    """A BOOL tensor from raw bytes: each byte must be 0 or 1."""
    if arr.size and (arr.view(np.uint8) > 1).any():
        raise CodecError(f"input {name!r}: BOOL bytes must be 0 or 1")


def decode_request(
    body: bytes, header_length: int | None = None, limits: JsonLimits | None = None, doc: Any = None
) -> InferRequest:
    """Parse an ``/infer`` body. ``header_length`` is the ``Inference-Header-Content-Length`` header, if any;
    ``doc``: the body's JSON document when the caller has parsed it already (with ``loads_request``).

    Every problem, including absurd shapes and JSON nested too deeply, is a :class:`CodecError` (400)."""
    try:
        return _decode_request(body, header_length, limits or JsonLimits(), doc)
    except (ValueError, MemoryError, OverflowError, RecursionError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"invalid request: {exc}") from None


def _decode_request(body: bytes, header_length: int | None, limits: JsonLimits, doc: Any) -> InferRequest:
    if header_length is None:
        header_bytes, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise CodecError(
                f"Inference-Header-Content-Length {header_length} is larger than the body ({len(body)} bytes)"
            )
        mv = memoryview(body)
        header_bytes, binary = bytes(mv[:header_length]), mv[header_length:]
    if doc is None:
        try:
            doc = loads_request(header_bytes, limits)
        except JsonError as exc:
            raise CodecError(str(exc)) from None
    if not isinstance(doc, dict):
        raise CodecError("request must be a JSON object")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise CodecError("'id' must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise CodecError("'parameters' must be an object")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise CodecError("'inputs' must be a non-empty array")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    binary_at: dict[str, int] = {}
    offset = 0
    for t in inputs_doc:
        if not isinstance(t, dict):
            raise CodecError("each input must be an object")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise CodecError("each input needs a 'name'")
        if name in inputs:
            raise CodecError(f"input {name!r} given twice")
        datatype = t.get("datatype")
        if datatype not in V2_TO_NP:
            raise CodecError(
                f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join(sorted(DATATYPES))})"
            )
        shape = _check_shape(name, t.get("shape"))
        tparams = t.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            if type(size) is not int or size < 0:
                raise CodecError(f"input {name!r}: binary_data_size must be a non-negative integer")
            if "data" in t:
                raise CodecError(f"input {name!r}: has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise CodecError(
                    f"input {name!r}: truncated binary data (needs {size} bytes at offset {offset}, "
                    f"{len(binary) - offset} left)"
                )
            arr = _binary_array(name, datatype, shape, binary[offset : offset + size], limits)
            binary_at[name] = offset
            offset += size
        else:
            if "data" not in t:
                raise CodecError(f"input {name!r}: needs 'data' or parameters.binary_data_size")
            arr = _json_array(name, datatype, shape, t["data"], limits)
        inputs[name] = arr
        datatypes[name] = datatype
    if offset != len(binary):
        raise CodecError(f"{len(binary) - offset} bytes of binary data not claimed by any input")
    outputs: list[RequestedOutput] | None = None
    binary_default = bool(params.get("binary_data_output", False))
    outs_doc = doc.get("outputs")
    if outs_doc is not None:
        if not isinstance(outs_doc, list):
            raise CodecError("'outputs' must be an array")
        outputs = []
        for o in outs_doc:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise CodecError("each requested output needs a 'name'")
            oparams = o.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise CodecError(f"output {o['name']!r}: 'parameters' must be an object")
            if "classification" in oparams:
                raise CodecError("the classification extension is not supported")
            outputs.append(RequestedOutput(o["name"], bool(oparams.get("binary_data", binary_default))))
    return InferRequest(req_id, inputs, datatypes, outputs, binary_default, params, binary_at)


def validate_inputs(req: InferRequest, metas: Iterable[TensorMeta]) -> dict[str, np.ndarray]:
    """Check the decoded inputs against the model's inputs; returns the feed dict for the runtime."""
    expected = {m.name: m for m in metas}
    for name in req.inputs:
        if name not in expected:
            raise CodecError(f"unknown input {name!r} (model inputs: {', '.join(sorted(expected))})")
    for name, meta in expected.items():
        arr = req.inputs.get(name)
        if arr is None:
            raise CodecError(f"missing input {name!r}")
        dt = req.datatypes[name]
        if dt != meta.datatype:
            raise CodecError(f"input {name!r}: datatype {dt} does not match the model's {meta.datatype}")
        if meta.shape:
            if arr.ndim != len(meta.shape) or any(
                want != -1 and want != got for want, got in zip(meta.shape, arr.shape, strict=True)
            ):
                raise CodecError(
                    f"input {name!r}: shape {list(arr.shape)} does not match the model's {list(meta.shape)}"
                )
        if has_range(meta):
            check_range(meta, arr)
    return req.inputs


def has_range(meta: TensorMeta) -> bool:
    """The input declares a value range its values are checked against (numeric datatypes only)."""
    return (meta.min is not None or meta.max is not None) and meta.datatype not in ("BYTES", "BOOL")


def check_range(meta: TensorMeta, arr: np.ndarray) -> None:
    name = meta.name
    if not arr.size:
        return
    if meta.datatype in _FLOAT_TYPES and np.isnan(arr).any():
        raise CodecError(f"input {name!r}: NaN outside the declared range")
    if meta.min is not None and arr.min() < meta.min:
        raise CodecError(f"input {name!r}: value {arr.min()} below the declared minimum {meta.min}")
    if meta.max is not None and arr.max() > meta.max:
        raise CodecError(f"input {name!r}: value {arr.max()} above the declared maximum {meta.max}")


def select_outputs(req: InferRequest, available: Sequence[str]) -> list[RequestedOutput]:
    """The outputs to return: the requested ones (all must exist) or every model output."""
    if req.outputs is None:
        return [RequestedOutput(n, req.binary_default) for n in available]
    known = set(available)
    for o in req.outputs:
        if o.name not in known:
            raise CodecError(f"unknown output {o.name!r} (model outputs: {', '.join(available)})")
    return req.outputs


def _bytes_items(arr: np.ndarray) -> list[bytes]:
    out = []
    for v in arr.reshape(-1):
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, str):
            out.append(v.encode("utf-8"))
        else:
            out.append(bytes(v))
    return out


def tensor_to_binary(arr: np.ndarray, datatype: str) -> bytes | memoryview:
    """Raw bytes of a tensor in the binary tensor data extension's layout (a view when no copy is needed)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in _bytes_items(arr))
    return memoryview(np.ascontiguousarray(arr, dtype=V2_TO_NP[datatype])).cast("B")


def tensor_to_json_data(name: str, arr: np.ndarray, datatype: str) -> list[Any]:
    """Flat JSON ``data`` of a tensor."""
    if datatype == "BYTES":
        try:
            return [b.decode("utf-8") for b in _bytes_items(arr)]
        except UnicodeDecodeError:
            raise CodecError(f"output {name!r} holds non-UTF-8 bytes: request it with binary_data") from None
    return arr.reshape(-1).tolist()


def encode_response(
    model_name: str,
    model_version: str,
    req_id: str | None,
    outputs: Mapping[str, np.ndarray],
    requested: Sequence[RequestedOutput],
) -> tuple[bytes, int | None]:
    """Response body and, if any output is binary, the ``Inference-Header-Content-Length`` value.

    The JSON is strict RFC 8259 in both paths: a non-finite value in a JSON ``data`` array is written as
    ``null``; binary data keeps the IEEE 754 value. Either way the output's ``parameters.nonfinite_values``
    says how many there are (absent when there are none)."""
    parts: list[bytes] = []
    chunks: list[bytes | memoryview] = []
    for r in requested:
        arr = outputs[r.name]
        datatype = datatype_of(arr)
        params: dict[str, int] = {}
        data: list[bytes] | None = None
        if r.binary:
            raw = tensor_to_binary(arr, datatype)
            params["binary_data_size"] = len(raw)
            nonfinite = count_nonfinite(arr)
            chunks.append(raw)
        elif datatype == "BYTES":
            data, nonfinite = [_dumps(tensor_to_json_data(r.name, arr, datatype))], 0
        else:
            data, nonfinite = dumps_data(arr)
        if nonfinite:
            params["nonfinite_values"] = nonfinite
        parts.append(b"," if parts else b',"outputs":[')
        doc = output_doc(r.name, datatype, arr.shape, params)
        if data is None:
            parts.append(doc)
        else:
            parts += [doc[:-1], b',"data":', *data, b"}"]
    if not parts:
        parts.append(b',"outputs":[')
    header = b"".join([response_head(model_name, model_version, req_id), *parts, b"]}"])
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)  # one copy of the tensor bytes


def response_head(model_name: str, model_version: str, req_id: str | None) -> bytes:
    """The start of a response document, up to (not including) its ``outputs``."""
    resp: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if req_id is not None:
        resp["id"] = req_id
    return _dumps(resp)[:-1]


def output_doc(name: str, datatype: str, shape: Sequence[int], params: Mapping[str, int]) -> bytes:
    """One output's object in a response, without its ``data``."""
    doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
    if params:
        doc["parameters"] = params
    return _dumps(doc)


_dumps = dumps


def json_tensor_to_array(doc: Mapping[str, Any]) -> tuple[str, str, np.ndarray]:
    """A probe/JSON tensor ``{"name","datatype","shape","data"}`` → (name, datatype, array)."""
    name = doc.get("name")
    if not isinstance(name, str):
        raise CodecError("tensor needs a 'name'")
    datatype = doc.get("datatype")
    if datatype not in V2_TO_NP:
        raise CodecError(f"tensor {name!r}: unknown datatype {datatype!r}")
    shape = _check_shape(name, doc.get("shape"))
    return name, datatype, _json_array(name, datatype, shape, doc.get("data"))


def all_finite(arr: np.ndarray) -> bool:
    """No NaN/inf in a float tensor (other datatypes are always finite)."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return True
    return bool(np.isfinite(arr).all())


def is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
