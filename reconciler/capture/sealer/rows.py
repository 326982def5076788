"""A captured record as a fixed-size row: the layout of an endpoint version's records, and rows back into the
arrays a sealed batch holds. Pure: numpy only, no I/O.

A :class:`RowLayout` is what every record of one stream shares: each input's and output's name, dtype and full
shape (the first axis too). Its row is the capture time (``<f8``), the trigger's code (``u1``) and each tensor's
bytes at an 8-byte aligned offset. :func:`unpack` turns ``n`` rows back into what
:func:`~reconciler.capture.openbatch.stack_runs` makes of the same ``n`` records queued in the agent: each tensor
concatenated along its first axis (scalars stacked), an output named like an input not kept twice, and per
record (time, trigger, rows).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from reconciler.capture.policy import DRIFT, LOW_CONFIDENCE, REJECTED, SAMPLED

#: A trigger's code in a row (index + 1; 0 is never written).
TRIGGERS = (SAMPLED, LOW_CONFIDENCE, DRIFT, REJECTED)
TRIGGER_CODE = {t: i + 1 for i, t in enumerate(TRIGGERS)}
_TRIGGER_NAMES = np.array((SAMPLED, *TRIGGERS), dtype=object)  # by code (0, never written, and unknown: sampled)
#: A record larger than this goes the in-agent way (a row per record must stay small next to its ring).
MAX_ROW_BYTES = 256 * 1024
#: Tensors per record a row carries (more: the in-agent way).
MAX_TENSORS = 64
HEAD_BYTES = 16  # the time (8), the trigger's code (1), padding to 8
ALIGN = 8

# (name, dtype, shape) of one tensor
Tensor = tuple[str, np.dtype, tuple[int, ...]]


@dataclass(frozen=True)
class RowLayout:
    """The inputs' and outputs' names, dtypes and full shapes, in the request's order."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @functools.cached_property
    def fields(self) -> list[tuple[str, np.dtype, tuple[int, ...], int, int]]:
        """(field name, dtype, shape, offset, bytes) per tensor, inputs first (fields ``i:name``, ``o:name``)."""
        # (cached: the sealer unpacks with it at every batch; not a dataclass field, so not in eq or hash)
        out, at = [], HEAD_BYTES
        for side, tensors in (("i", self.inputs), ("o", self.outputs)):
            for name, dtype, shape in tensors:
                n = dtype.itemsize * math.prod(shape)
                out.append((f"{side}:{name}", dtype, shape, at, n))
                at += -(-n // ALIGN) * ALIGN
        return out

    @functools.cached_property
    def itemsize(self) -> int:
        f = self.fields
        return -(-(f[-1][3] + f[-1][4]) // ALIGN) * ALIGN if f else HEAD_BYTES

    def dtype(self) -> np.dtype:
        """The rows' numpy structured dtype."""
        f = self.fields
        return np.dtype({"names": ["t", "trig"] + [x[0] for x in f],
                         "formats": ["<f8", "u1"] + [(x[1], x[2]) for x in f],
                         "offsets": [0, 8] + [x[3] for x in f], "itemsize": self.itemsize})


def _tensors(arrays: Mapping[str, np.ndarray]) -> tuple[Tensor, ...] | None:
    out = []
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.hasobject or a.dtype.kind not in "biufcSU" \
                or not a.flags.c_contiguous:
            return None
        out.append((name, a.dtype, a.shape))
    return tuple(out)


def layout_of(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> RowLayout | None:
    """The record's layout, or None when it does not fit in a row (object or non-contiguous arrays, too many
    tensors, too large, nothing in it)."""
    if not inputs and not outputs or len(inputs) + len(outputs) > MAX_TENSORS:
        return None
    ins, outs = _tensors(inputs), _tensors(outputs)
    if ins is None or outs is None:
        return None
    layout = RowLayout(ins, outs)
    return layout if layout.itemsize <= MAX_ROW_BYTES else None


def unpack(rows: np.ndarray, layout: RowLayout) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                         np.ndarray, list[str]]:
    """``n`` rows as (inputs, outputs) concatenated along each tensor's first axis, the times and the
    triggers."""
    sides: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})
    for field, _dtype, shape, _at, _n in layout.fields:
        col = rows[field]
        arr = np.ascontiguousarray(col.reshape((-1, *shape[1:])) if shape else col)
        sides[0 if field[0] == "i" else 1][field[2:]] = arr
    trig = rows["trig"]
    triggers = _TRIGGER_NAMES[np.where(trig <= len(TRIGGERS), trig, 0)].tolist()
    return sides[0], sides[1], rows["t"].astype(np.float64), triggers


def record_index(times: np.ndarray, triggers: list[str], inputs: Mapping[str, np.ndarray]) -> list[tuple[float, str,
                                                                                                       int]]:
    """(time, trigger, rows) per record, as :func:`~reconciler.capture.openbatch.stack_runs` counts rows: the
    first kept input's first axis (1 for a scalar, or when no input is kept)."""
    n = len(triggers)
    first = next(iter(inputs.values()), None)
    per = len(first) // n if first is not None and n and first.ndim else 1
    return list(zip(times.tolist(), triggers, [per] * n, strict=True))


def merged(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch's arrays by name (an output named like an input is not kept twice: the input is)."""
    return {**inputs, **{k: v for k, v in outputs.items() if k not in inputs}}
