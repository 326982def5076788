"""``ModelInferRequest`` → the decoded request the application core checks; outputs → ``ModelInferResponse``.

A request carries its tensors either raw (``raw_input_contents``: one entry per input, in the binary tensor data
extension's layout, so decoding is :func:`~reconciler.serving.v2.codec.binary_array` over the bytes) or typed
(``contents.fp32_contents`` …, the field of the input's datatype). The answer takes the request's form: raw when
the request was raw (what tritonclient sends), typed when it was typed — unless an output's datatype has no typed
field (FP16), then raw for all, as the protocol wants one form per response. Every problem is a
:class:`~reconciler.serving.v2.codec.CodecError` (INVALID_ARGUMENT); typed contents count against the same
element limit as JSON tensors (each element is a Python object on the way).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reconciler.serving.grpc import grpc_predict_v2_pb2 as pb
from reconciler.serving.grpc.wire import bytes_field
from reconciler.serving.v2.codec import (
    V2_TO_NP,
    CodecError,
    InferRequest,
    JsonLimits,
    RequestedOutput,
    binary_array,
    check_shape,
    datatype_of,
    tensor_to_binary,
)
from reconciler.serving.v2.handler import Response
from reconciler.serving.v2.jsonio import count_nonfinite

GRPC_CT = b"application/grpc"
#: Field numbers of ``raw_input_contents`` and ``raw_output_contents`` (grpc_predict_v2.proto).
RAW_INPUT_FIELD = pb.ModelInferRequest.RAW_INPUT_CONTENTS_FIELD_NUMBER
RAW_OUTPUT_FIELD = pb.ModelInferResponse.RAW_OUTPUT_CONTENTS_FIELD_NUMBER
ID_FIELD = pb.ModelInferResponse.ID_FIELD_NUMBER

#: datatype → (typed contents field, the numpy dtype protobuf gives, (min, max) when narrower than that field)
TYPED: dict[str, tuple[str, Any, tuple[int, int] | None]] = {
    "BOOL": ("bool_contents", np.bool_, None),
    "INT8": ("int_contents", np.int32, (-(2**7), 2**7 - 1)),
    "INT16": ("int_contents", np.int32, (-(2**15), 2**15 - 1)),
    "INT32": ("int_contents", np.int32, None),
    "INT64": ("int64_contents", np.int64, None),
    "UINT8": ("uint_contents", np.uint32, (0, 2**8 - 1)),
    "UINT16": ("uint_contents", np.uint32, (0, 2**16 - 1)),
    "UINT32": ("uint_contents", np.uint32, None),
    "UINT64": ("uint64_contents", np.uint64, None),
    "FP32": ("fp32_contents", np.float32, None),
    "FP64": ("fp64_contents", np.float64, None),
    "BYTES": ("bytes_contents", object, None),
}


def parameters(params: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as a plain dict."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which is not None else None
    return out


def decode(msg: Any, limits: JsonLimits, raw: list[memoryview] | None = None) -> InferRequest:
    """The tensors of a ``ModelInferRequest`` (see the module docstring); ``raw``: its ``raw_input_contents``
    when they were taken off the message on the wire (:func:`~.wire.split_bytes_field`), else read from it."""
    try:
        return _decode(msg, limits, raw)
    except (ValueError, MemoryError, OverflowError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"invalid request: {exc}") from None


def _decode(msg: Any, limits: JsonLimits, raw: list[memoryview] | None) -> InferRequest:
    if not msg.inputs:
        raise CodecError("'inputs' must be a non-empty array")
    if raw is None:
        raw = list(msg.raw_input_contents)  # upb gives a new copy of an entry on every access: once each
    if raw and len(raw) != len(msg.inputs):
        raise CodecError(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for i, t in enumerate(msg.inputs):
        name = t.name
        if not name:
            raise CodecError("each input needs a 'name'")
        if name in inputs:
            raise CodecError(f"input {name!r} given twice")
        datatype = t.datatype
        if datatype not in V2_TO_NP:
            raise CodecError(f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join(sorted(V2_TO_NP))})")
        shape = check_shape(name, list(t.shape))
        if raw:
            if t.HasField("contents"):
                raise CodecError(f"input {name!r}: has contents while the request uses raw_input_contents")
            arr = binary_array(name, datatype, shape, memoryview(raw[i]), limits)
        else:
            arr = _typed(name, datatype, shape, t, limits)
        inputs[name] = arr
        datatypes[name] = datatype
    outputs: list[RequestedOutput] | None = None
    if msg.outputs:
        outputs = []
        for o in msg.outputs:
            if not o.name:
                raise CodecError("each requested output needs a 'name'")
            if "classification" in o.parameters:
                raise CodecError("the classification extension is not supported")
            outputs.append(RequestedOutput(o.name, True))
    params = parameters(msg.parameters) if msg.parameters else {}
    return InferRequest(msg.id or None, inputs, datatypes, outputs, True, params)


def _typed(name: str, datatype: str, shape: tuple[int, ...], t: Any, limits: JsonLimits) -> np.ndarray:
    typed = TYPED.get(datatype)
    if typed is None:
        raise CodecError(f"input {name!r}: {datatype} has no typed contents: send it in raw_input_contents")
    field, wire_dtype, bounds = typed
    n = math.prod(shape)
    if n > limits.max_elements:
        raise CodecError(f"input {name!r}: more than {limits.max_elements} elements in typed contents "
                         "(send large tensors in raw_input_contents)")
    values = getattr(t.contents, field)
    if len(values) != n:
        raise CodecError(f"input {name!r}: shape {list(shape)} needs {n} elements, contents.{field} has {len(values)}")
    if wire_dtype is object:
        arr = np.empty(n, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    arr = np.fromiter(values, dtype=wire_dtype, count=n)
    if bounds is not None and n and (arr.min() < bounds[0] or arr.max() > bounds[1]):
        raise CodecError(f"input {name!r}: a value outside {datatype}'s range {bounds[0]}..{bounds[1]}")
    return arr.astype(V2_TO_NP[datatype], copy=False).reshape(shape)


def encoder(raw: bool) -> Any:
    """The application core's ``encode`` for a request that was raw (``raw``) or typed."""

    def encode(model: Any, req_id: str | None, outputs: dict[str, np.ndarray],
               requested: list[RequestedOutput]) -> Response:
        return Response(200, encode_response(model.name, model.version, req_id, outputs, requested, raw), GRPC_CT)

    return encode


def encode_response(name: str, version: str, req_id: str | None, outputs: dict[str, np.ndarray],
                    requested: list[RequestedOutput], raw: bool) -> bytes:
    arrays = [(r.name, outputs[r.name]) for r in requested]
    types = [datatype_of(a) for _, a in arrays]
    raw = raw or any(dt not in TYPED for dt in types)
    if raw and not any(map(count_nonfinite, (a for _, a in arrays))):
        return _raw_response(name, version, req_id, arrays, types)
    resp = pb.ModelInferResponse(model_name=name, model_version=version, id=req_id or "")
    raw_out: list[bytes | memoryview] = []
    for (oname, arr), dt in zip(arrays, types, strict=True):
        t = resp.outputs.add(name=oname, datatype=dt, shape=arr.shape)
        nonfinite = count_nonfinite(arr)
        if nonfinite:
            t.parameters["nonfinite_values"].int64_param = nonfinite
        if raw:
            data = tensor_to_binary(arr, dt)
            raw_out += (bytes_field(RAW_OUTPUT_FIELD, len(data)), data)
        elif dt == "BYTES":
            t.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1))
        else:
            getattr(t.contents, TYPED[dt][0]).extend(arr.reshape(-1).tolist())
    if not raw_out:
        return resp.SerializeToString()  # type: ignore[no-any-return]
    # The raw contents after the rest (fields may come in any order): one copy of each output, in the join.
    return b"".join((resp.SerializeToString(), *raw_out))


#: (model, version, each output's name, datatype and shape) → that response's fields other than ``id`` and the
#: raw contents, serialized: the same for every answer of a kind (a model answers few kinds), so a raw answer
#: with finite outputs is joined from bytes instead of built as a message each time.
_HEADS: dict[tuple[Any, ...], bytes] = {}
_HEADS_MAX = 256


def _raw_response(name: str, version: str, req_id: str | None, arrays: list[tuple[str, np.ndarray]],
                  types: list[str]) -> bytes:
    key = (name, version, *((oname, dt, arr.shape) for (oname, arr), dt in zip(arrays, types, strict=True)))
    head = _HEADS.get(key)
    if head is None:
        resp = pb.ModelInferResponse(model_name=name, model_version=version)
        for (oname, arr), dt in zip(arrays, types, strict=True):
            resp.outputs.add(name=oname, datatype=dt, shape=arr.shape)
        head = resp.SerializeToString()
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[key] = head
    parts: list[bytes | memoryview] = [head]
    if req_id:
        rid = req_id.encode()
        parts += (bytes_field(ID_FIELD, len(rid)), rid)
    for (_, arr), dt in zip(arrays, types, strict=True):
        data = tensor_to_binary(arr, dt)
        parts += (bytes_field(RAW_OUTPUT_FIELD, len(data)), data)
    return b"".join(parts)
