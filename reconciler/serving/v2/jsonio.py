"""The JSON half of the KServe v2 codec, bounded in memory and in time the GIL is held — pure, no I/O.

``json.loads`` holds the GIL for the whole document and turns every number into a Python object (12–25× the
text size), so one large JSON request would stall the server's event loop and multiply memory. Here:

- :func:`loads_request` rejects documents with more than ``MAX_CONTAINERS`` arrays/objects (deep or wide
  nesting) before parsing, then cuts every large tensor ``"data"`` array out of the document, parses the small
  rest with ``json.loads``, and hands each cut array back as a :class:`DataSpan`;
- :func:`span_to_array` parses a span in slices of ``SLICE_BYTES`` straight into a numpy array of the input's
  datatype (the GIL is handed over between slices; the Python objects of one slice at a time are alive);
- :func:`to_array` is the element check both paths share: numbers for numeric datatypes (JSON ``true``/
  ``false`` are not numbers: 400), ``true``/``false`` for BOOL, integers in range for integer datatypes;
- :func:`dumps_data` writes an output's ``data`` in slices too, as strict RFC 8259 JSON: non-finite values
  (NaN, ±Infinity have no JSON form) become ``null`` and are counted, so the response can say how many.

Parsing and writing go through ``orjson`` (8–17× faster than the stdlib on tensor data, and it writes numpy
arrays without a Python float per element). A document ``orjson`` refuses is parsed again by the stdlib decoder,
whose messages say what is wrong (``NaN`` tokens, nesting depth) and which keeps integers beyond 64 bits exact.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

MAX_CONTAINERS = 131_072  # arrays + objects in one JSON document (a nested [8,3,224,224] tensor has 5,409)
SKELETON_MAX_BYTES = 1 << 20  # the JSON around the cut-out data arrays
CUT_MIN_BYTES = 64 * 1024  # data arrays at least this long are cut out and parsed in slices
SLICE_BYTES = 64 * 1024
_OUT_SLICE = 65536  # output elements per orjson.dumps call (~0.5 ms)
SMALL_ARRAY = 256  # up to this many elements, a Python list is cheaper than numpy's per-call work
#: Pause between slices: a CPU-bound thread hands the GIL over only every 5 ms when asked, and every step of
#: the event loop's answer to a health check has to ask again; a short sleep hands it over at once.
_HAND_OVER_S = 0.0002

_DATA_TAIL = re.compile(rb"\s*:\s*\[")
_NON_SPACE = re.compile(rb"\S")
_BAD_CLOSE = re.compile(rb"\]\s*[^\s,\]]")  # "]" not followed by "," or "]"
_BAD_OPEN = re.compile(rb"[^\s,\[]\s*\[")  # "[" not preceded by "," or "["
_MARK = b"\\u0000mf"


class JsonError(ValueError):
    """Malformed or over-limit JSON; the message is for the client (status 400)."""


def _no_constant(name: str) -> Any:
    raise JsonError(f"malformed JSON in request: {name} is not a JSON number (RFC 8259)")


# Built once: json.loads/json.dumps with any option build a new decoder/encoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
#: Strict RFC 8259 output, compact (stdlib; :func:`dumps` is the fast path).
ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_BEYOND_INT64 = float(2**63)


def dumps(doc: Any) -> bytes:
    """Compact JSON of a document of str/int/float/bool/None/list/dict (no NaN in it: callers count them)."""
    return orjson.dumps(doc)


def _loads(text: bytes | bytearray | memoryview) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # the stdlib decoder below either accepts it (integers beyond 64 bits) or says precisely why not
    return _DECODER.decode(bytes(text).decode("utf-8"))


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_bytes: int = 16 * 1024 * 1024
    max_elements: int = 4_194_304


@dataclass(frozen=True, slots=True)
class DataSpan:
    """A tensor ``data`` array cut out of the document: the text between its brackets, nesting removed."""

    text: bytes
    elements: int


def loads_request(text: bytes, limits: JsonLimits) -> Any:
    """Parse a request document; large ``data`` arrays come back as :class:`DataSpan`."""
    if len(text) > limits.max_bytes:
        raise JsonError(f"the JSON part of the request is {len(text)} bytes; the limit is {limits.max_bytes}")
    if text.count(b"[") + text.count(b"{") > MAX_CONTAINERS:
        raise JsonError(f"more than {MAX_CONTAINERS} JSON arrays/objects (send flat 'data' or binary tensors)")
    spans: list[DataSpan] = []
    if len(text) > SKELETON_MAX_BYTES and _MARK not in text:
        text = _cut_spans(text, spans, limits)
        if len(text) > SKELETON_MAX_BYTES:
            raise JsonError(
                f"more than {SKELETON_MAX_BYTES} bytes of JSON outside numeric tensor 'data' arrays "
                "(send large BYTES tensors with the binary extension)"
            )
    try:
        doc = _loads(text)
    except RecursionError:
        raise JsonError("malformed JSON in request: nested too deeply") from None
    except JsonError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonError(f"malformed JSON in request: {exc}") from None
    if spans:
        _put_back(doc, spans)
    return doc


def _cut_spans(text: bytes, spans: list[DataSpan], limits: JsonLimits) -> bytes:
    # bytes.find, not a regex over the whole text: each call is short, and the GIL is free between them.
    out: list[bytes] = []
    pos = search = 0
    while (key := text.find(b'"data"', search)) >= 0:
        m = _DATA_TAIL.match(text, key + 6)
        search = key + 6
        if m is None:
            continue
        start = m.end() - 1
        end = _matching_bracket(text, start)
        if end is None:
            continue
        search = end + 1
        if end - start < CUT_MIN_BYTES:
            continue
        inner = text[start + 1 : end]
        if b"[" in inner:
            if _BAD_CLOSE.search(inner) or _BAD_OPEN.search(inner):
                raise JsonError("malformed JSON in request: a nested 'data' array is not well-formed")
            inner = inner.translate(None, b"[]")
        elements = inner.count(b",") + 1 if _NON_SPACE.search(inner) else 0
        if elements > limits.max_elements:
            raise JsonError(f"a tensor has more than {limits.max_elements} elements in JSON 'data'")
        out.append(text[pos:start])
        out.append(b'"%s%d"' % (_MARK, len(spans)))
        spans.append(DataSpan(inner, elements))
        pos = end + 1
    if not spans:
        return text
    out.append(text[pos:])
    return b"".join(out)


def _matching_bracket(text: bytes, start: int) -> int | None:
    """Index of the "]" closing the array at ``start``; None if it holds strings (those are not cut)."""
    depth, pos = 1, start + 1
    while True:
        close = text.find(b"]", pos)
        if close < 0:
            return None
        opened = text.count(b"[", pos, close)
        if text.find(b'"', pos, close) >= 0:
            return None
        if opened == 0:
            depth -= 1
            if depth == 0:
                return close
            pos = close + 1
            continue
        nxt = text.find(b"[", pos, close)
        depth += 1
        pos = nxt + 1


def _put_back(doc: Any, spans: list[DataSpan]) -> None:
    found = 0
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    for t in inputs if isinstance(inputs, list) else ():
        data = t.get("data") if isinstance(t, dict) else None
        if isinstance(data, str) and data.startswith("\0mf"):
            t["data"] = spans[int(data[3:])]
            found += 1
    if found != len(spans):
        raise JsonError("large JSON 'data' arrays are only accepted in 'inputs'")


def span_to_array(name: str, datatype: str, dtype: np.dtype[Any], span: DataSpan) -> np.ndarray:
    """Parse a cut-out ``data`` array slice by slice into a flat array of ``dtype``."""
    text = span.text
    parts: list[np.ndarray] = []
    pos, end = 0, len(text)
    while pos < end:
        if pos:
            time.sleep(_HAND_OVER_S)
        cut = text.find(b",", pos + SLICE_BYTES)
        if cut < 0:
            cut = end
        try:
            items = _loads(b"[" + text[pos:cut] + b"]")
        except JsonError:
            raise
        except ValueError as exc:
            raise JsonError(f"input {name!r}: malformed JSON in 'data': {exc}") from None
        parts.append(to_array(name, datatype, dtype, items))
        pos = cut + 1
    if not parts:
        return np.zeros(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


_INT_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})


def to_array(name: str, datatype: str, dtype: np.dtype[Any], items: list[Any]) -> np.ndarray:
    """Flat JSON values → a flat array of ``dtype``, with the element rules of the datatype."""
    types = set(map(type, items))
    if datatype == "BOOL":
        if not types <= {bool}:
            raise JsonError(f"input {name!r}: BOOL data must be true/false")
        return np.array(items, dtype=np.bool_)
    if bool in types:
        raise JsonError(f"input {name!r}: {datatype} data must be numbers; JSON true/false are not (use BOOL)")
    if datatype in _INT_TYPES:
        if not types <= {int}:
            if any(type(v) is float and v.is_integer() and abs(v) >= _BEYOND_INT64 for v in items):
                # orjson reads an integer beyond 64 bits as a float: it is out of range for every datatype
                raise JsonError(f"input {name!r}: value out of range for {datatype}")
            raise JsonError(f"input {name!r}: {datatype} data must be integers")
        if not items:
            return np.zeros(0, dtype=dtype)
        info = np.iinfo(dtype)
        if min(items) < info.min or max(items) > info.max:
            raise JsonError(f"input {name!r}: value out of range for {datatype}")
        return np.array(items, dtype=dtype)
    if not types <= {int, float}:
        raise JsonError(f"input {name!r}: {datatype} data must be numbers")
    try:
        raw = np.array(items, dtype=np.float64)
    except OverflowError:
        raise JsonError(f"input {name!r}: a number is out of range for {datatype}") from None
    with np.errstate(over="ignore"):  # beyond the datatype's range is ±inf, as IEEE 754 casts do
        return raw.astype(dtype, copy=False)


def dumps_data(arr: np.ndarray) -> tuple[list[bytes], int]:
    """Flat JSON ``data`` of a numeric/BOOL tensor as pieces to join, and its count of non-finite values.

    Non-finite values are written as ``null`` (orjson's rule for numpy floats). Floats are written from their
    float64 value, as ``tolist()`` + ``json`` did (an FP32 0.1 is ``0.10000000149011612``): a client reading
    the text back gets the exact value the runtime produced. Pieces of ``_OUT_SLICE`` elements keep each GIL
    hold short."""
    flat = arr.reshape(-1)
    nonfinite = count_nonfinite(flat)
    kind = flat.dtype.kind
    if flat.size <= SMALL_ARRAY and kind in "fiub":
        # Python floats are the float64 values, written by the same shortest-round-trip code: the same text,
        # without numpy's per-call setup (a tiny model's whole output costs less than the cast alone).
        return [orjson.dumps(flat.tolist())], nonfinite
    want = np.dtype(np.float64) if kind == "f" else flat.dtype.newbyteorder("=")
    flat = np.ascontiguousarray(flat, dtype=want)
    if flat.size <= _OUT_SLICE:
        return [orjson.dumps(flat, option=_NUMPY)], nonfinite
    pieces: list[bytes] = [b"["]
    for i in range(0, flat.size, _OUT_SLICE):
        if i:
            time.sleep(_HAND_OVER_S)
        text = orjson.dumps(flat[i : i + _OUT_SLICE], option=_NUMPY)
        pieces.append(text[1:-1] if i == 0 else b"," + text[1:-1])
    pieces.append(b"]")
    return pieces, nonfinite


def count_nonfinite(arr: np.ndarray) -> int:
    if arr.dtype.kind != "f" or arr.size == 0:
        return 0
    # One sum for the common case: a finite float64 sum means every value is finite (a NaN or ±inf makes the sum
    # non-finite; a sum that only overflows falls through to the exact count). Small arrays as a Python list: no
    # numpy reduction setup.
    if math.isfinite(sum(arr.reshape(-1).tolist()) if arr.size <= SMALL_ARRAY else arr.sum(dtype=np.float64)):
        return 0
    finite = np.isfinite(arr)
    return 0 if finite.all() else int(arr.size - np.count_nonzero(finite))
