"""Request plans: what a request's JSON says about its tensors, decoded and checked once per model version.

A client sends the same kind of request again and again: a binary-tensor request repeats its JSON header byte
for byte (names, datatypes, shapes, sizes, requested outputs) with new tensor bytes; a JSON request repeats its
names, datatypes and shapes with new ``data``. The first such request is decoded and validated in full
(:mod:`~reconciler.serving.v2.codec`); when that succeeds, its :class:`Plan` is kept on the model version
(``LoadedModel.plans``), keyed by the exact header bytes (binary) or by the names, datatypes and the ``repr`` of
the shapes (a JSON document with nothing but ``inputs``; ``repr`` tells ``[1, 16]`` from ``[true, 16]`` and
``[1.0, 16]``). A later request with the same key skips everything that depends only on the key:

- binary inputs become numpy arrays over the request body where the plan says their bytes are (no copy);
  JSON inputs go through the same element checks as ever (:func:`~reconciler.serving.v2.jsonio.to_array`);
- the value checks that depend on the data still run: declared ranges, BOOL bytes;
- the answer's JSON is an :class:`AnswerTemplate`: built once for the outputs' shapes and datatypes, filled
  with each answer's data while every value is finite (non-finite values are counted in the answer's JSON).

Anything a plan does not cover exactly — a new key, a failing check, a request with an ``id``, outputs of
another shape, a non-finite value — goes the full way, so every error and edge case answers as before (the
tests compare both ways byte for byte). Bounded: ``PLANS_MAX`` plans per version (then the cache starts over),
keys up to ``KEY_MAX`` bytes, JSON plans for bodies up to ``JSON_BODY_MAX`` bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import isfinite
from typing import Any

import numpy as np

from reconciler.serving.v2.codec import (
    V2_TO_NP,
    CodecError,
    InferRequest,
    RequestedOutput,
    TensorMeta,
    check_bool_bytes,
    check_range,
    datatype_of,
    flatten,
    has_range,
    output_doc,
    response_head,
)
from reconciler.serving.v2.handler import Response
from reconciler.serving.v2.jsonio import SMALL_ARRAY, JsonError, count_nonfinite, dumps_data, to_array

OCTET_CT = b"application/octet-stream"
HCL = b"inference-header-content-length"
PLANS_MAX = 64
KEY_MAX = 4096
#: JSON requests larger than this are decoded the full way (their ``data`` may be parsed in slices).
JSON_BODY_MAX = 16 * 1024
#: An answer template is rebuilt for new output shapes at most this many times per plan (dynamic shapes).
TEMPLATE_REBUILDS = 8


class AnswerTemplate:
    """The answer's JSON for outputs of given shapes and datatypes, with finite values: ``pieces`` surround
    the ``data`` of the JSON outputs; binary outputs follow the JSON, in order."""

    __slots__ = ("pieces", "outputs", "header_len", "all_binary", "headers")

    def __init__(self, pieces: tuple[bytes, ...], outputs: tuple[tuple[Any, ...], ...]) -> None:
        self.pieces = pieces
        #: (name, binary, shape, numpy dtype, dtype on the wire, small float?) per requested output
        self.outputs = outputs
        self.all_binary = all(o[1] for o in outputs) and len(pieces) == 1
        self.header_len = len(pieces[0]) if self.all_binary else None
        #: The answer's extra HTTP headers when all outputs are binary (the JSON header's length is fixed).
        self.headers = ((HCL, b"%d" % len(pieces[0])),) if self.all_binary else ()

    @classmethod
    def build(cls, model_name: str, model_version: str, outputs: Mapping[str, np.ndarray],
              requested: Sequence[RequestedOutput]) -> AnswerTemplate | None:
        pieces: list[bytes] = []
        cur = [response_head(model_name, model_version, None)]
        spec = []
        for i, r in enumerate(requested):
            arr = outputs[r.name]
            datatype = datatype_of(arr)
            if datatype == "BYTES":
                return None
            dtype = V2_TO_NP[datatype]
            cur.append(b"," if i else b',"outputs":[')
            if r.binary:
                cur.append(output_doc(r.name, datatype, arr.shape, {"binary_data_size": arr.size * dtype.itemsize}))
            else:
                cur += [output_doc(r.name, datatype, arr.shape, {})[:-1], b',"data":']
                pieces.append(b"".join(cur))
                cur = [b"}"]
            spec.append((r.name, r.binary, arr.shape, arr.dtype, dtype, arr.dtype.kind == "f" and arr.size <= SMALL_ARRAY))
        if not requested:
            cur.append(b',"outputs":[')
        cur.append(b"]}")
        pieces.append(b"".join(cur))
        return cls(tuple(pieces), tuple(spec))

    def fill(self, outputs: Mapping[str, np.ndarray]) -> tuple[bytes, int | None] | None:
        """The answer (body, binary header length), or None when an output's shape, datatype or a non-finite
        value does not fit the template."""
        pieces = self.pieces
        if self.all_binary:  # the JSON is all template; the common case of a binary-tensor client
            parts = [pieces[0]]
            for name, _, shape, dtype, wire, small_float in self.outputs:
                arr = outputs[name]
                if arr.shape != shape or arr.dtype != dtype:
                    return None
                if small_float:
                    if not isfinite(sum(arr.ravel().tolist())):
                        return None
                elif count_nonfinite(arr):
                    return None
                parts.append(arr.tobytes() if small_float and dtype == wire else
                             memoryview(np.ascontiguousarray(arr, dtype=wire)).cast("B"))
            return b"".join(parts), self.header_len
        body: list[bytes] = [pieces[0]]
        chunks: list[Any] = []
        k = 1
        for name, binary, shape, dtype, wire, _ in self.outputs:
            arr = outputs[name]
            if arr.shape != shape or arr.dtype != dtype:
                return None
            if binary:
                if count_nonfinite(arr):
                    return None
                chunks.append(memoryview(np.ascontiguousarray(arr, dtype=wire)).cast("B"))
            else:
                data, nonfinite = dumps_data(arr)
                if nonfinite:
                    return None
                body += data
                body.append(pieces[k])
                k += 1
        if not chunks:
            return b"".join(body), None
        header = b"".join(body)
        return b"".join([header, *chunks]), len(header)


class Plan:
    """One kind of request to one model version, decoded and validated (see the module docstring)."""

    __slots__ = ("header_len", "body_len", "inputs", "checks", "output_names", "requested", "template",
                 "rebuilds")

    def __init__(self, header_len: int | None, body_len: int | None, inputs: tuple[Any, ...],
                 checks: tuple[tuple[TensorMeta, bool], ...], requested: list[RequestedOutput]) -> None:
        self.header_len = header_len
        self.body_len = body_len
        self.inputs = inputs
        self.checks = checks  # (meta, bool bytes?) of inputs whose values are checked per request
        self.requested = requested
        self.output_names = [r.name for r in requested]
        self.template: AnswerTemplate | None = None
        self.rebuilds = 0

    def binary_feeds(self, body: bytes) -> dict[str, np.ndarray] | None:
        if len(body) != self.body_len:
            return None
        feeds = {}
        for name, dtype, count, offset, shape in self.inputs:
            feeds[name] = np.frombuffer(body, dtype, count, offset).reshape(shape)
        return feeds if not self.checks or self._values_ok(feeds) else None

    def json_feeds(self, doc: dict[str, Any]) -> dict[str, np.ndarray] | None:
        feeds = {}
        for (name, datatype, dtype, count, shape), t in zip(self.inputs, doc["inputs"], strict=True):
            data = t["data"]
            if data and type(data[0]) is list:
                data = flatten(data)
            if len(data) != count:
                return None  # the full way says what is wrong
            try:
                feeds[name] = to_array(name, datatype, dtype, data).reshape(shape)
            except JsonError:
                return None
        return feeds if not self.checks or self._values_ok(feeds) else None

    def _values_ok(self, feeds: dict[str, np.ndarray]) -> bool:
        try:
            for meta, bool_bytes in self.checks:
                if bool_bytes:
                    check_bool_bytes(meta.name, feeds[meta.name])
                else:
                    check_range(meta, feeds[meta.name])
        except CodecError:
            return False  # the full way answers the error (and hands the rejected inputs to data capture)
        return True

    def answer(self, model_name: str, model_version: str, outputs: Mapping[str, np.ndarray]) -> Response | None:
        """The answer from the template; None when it does not fit (the caller encodes it the full way)."""
        t = self.template
        if t is not None:
            filled = t.fill(outputs)
            if filled is not None:
                if t.all_binary:
                    return Response(200, filled[0], OCTET_CT, t.headers)
                if filled[1] is None:
                    return Response(200, filled[0])
                return Response(200, filled[0], OCTET_CT, ((HCL, b"%d" % filled[1]),))
        if self.rebuilds < TEMPLATE_REBUILDS:
            self.rebuilds += 1
            self.template = AnswerTemplate.build(model_name, model_version, outputs, self.requested)
        return None


def json_key(doc: Any) -> tuple[Any, ...] | None:
    """The plan key of a parsed JSON request: names, datatypes and shapes of its inputs, if it has nothing else."""
    if type(doc) is not dict or len(doc) != 1:
        return None
    inputs = doc.get("inputs")
    if type(inputs) is not list or not inputs:
        return None
    key = []
    for t in inputs:
        if type(t) is not dict or len(t) != 4 or type(t.get("data")) is not list:
            return None
        key.append((t.get("name"), t.get("datatype"), repr(t.get("shape"))))
    return tuple(key)


def _checks(metas: Sequence[TensorMeta], req: InferRequest) -> tuple[tuple[TensorMeta, bool], ...]:
    checks = [(m, False) for m in metas if has_range(m)]
    checks += [(m, True) for m in metas if m.datatype == "BOOL" and req.binary_at.get(m.name) is not None]
    return tuple(checks)


def learn(plans: dict[Any, Plan], req: InferRequest, header_len: int | None, body: bytes, doc: Any,
          metas: Sequence[TensorMeta], requested: list[RequestedOutput]) -> Plan | None:
    """Keep the plan of a request that decoded and validated in full, if a plan can answer its kind."""
    if req.id is not None or any(a.dtype.kind == "O" for a in req.inputs.values()):
        return None  # an id is in every header (each one a new key); BYTES inputs vary in layout
    key: Any
    if header_len is not None:
        if header_len > KEY_MAX or len(req.binary_at) != len(req.inputs):
            return None
        key = bytes(memoryview(body)[:header_len])
        inputs: tuple[Any, ...] = tuple(
            (name, arr.dtype, arr.size, header_len + req.binary_at[name], arr.shape) for name, arr in req.inputs.items())
        plan = Plan(header_len, len(body), inputs, _checks(metas, req), requested)
    else:
        key = json_key(doc)
        if key is None or len(body) > JSON_BODY_MAX:
            return None
        inputs = tuple((name, req.datatypes[name], V2_TO_NP[req.datatypes[name]], arr.size, arr.shape)
                       for name, arr in req.inputs.items())
        plan = Plan(None, None, inputs, _checks(metas, req), requested)
    if len(plans) >= PLANS_MAX:
        plans.clear()
    plans[key] = plan
    return plan


def planned(plans: dict[Any, Plan], header_len: int | None, body: bytes,
            doc: Any) -> tuple[Plan, dict[str, np.ndarray]] | None:
    """The plan and feeds of a request a kept plan answers; None to take the full way."""
    if header_len is not None:
        if header_len > KEY_MAX or header_len < 0:
            return None
        key = body[:header_len]
        plan = plans.get(key if type(key) is bytes else bytes(key))
        if plan is None or plan.header_len != header_len:
            return None
        feeds = plan.binary_feeds(body)
    else:
        key = json_key(doc)
        plan = plans.get(key) if key is not None else None
        if plan is None:
            return None
        feeds = plan.json_feeds(doc)
    return None if feeds is None else (plan, feeds)
