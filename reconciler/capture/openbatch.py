"""An endpoint's batch being filled, and its records stacked into the arrays a sealed batch holds.

The writer appends the request path's queue entries to the open batch as they are (references to the
request's arrays, no per-record tuple, dict or check), whole chunks at a time. The records' layout (names,
dtypes, ranks and shapes past the first axis) is checked once, when the batch is sealed, over all its records
at once: :func:`stack_runs` stacks the common case (one layout) in a few C-level passes, and only when that
fails splits the records into runs of one layout, each sealed as a batch of its own, in order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

MAX_OPEN_BATCH_BYTES = 4 * 1024 * 1024
RECORD_META_BYTES = 64  # what a record adds to its batch besides its arrays (its entry in the sealed index)

# A queue entry, as CaptureService.offer makes it: (observer, trigger, inputs, outputs, time, bytes).
Entry = tuple[Any, str, dict[str, np.ndarray], dict[str, np.ndarray], float, int]
TRIGGER, INPUTS, OUTPUTS, TIME, SIZE = itemgetter(1), itemgetter(2), itemgetter(3), itemgetter(4), itemgetter(5)
_DTYPE, _NDIM = attrgetter("dtype"), attrgetter("ndim")
_ROWS = itemgetter(2)  # of an index entry (time, trigger, rows)


@dataclass
class OpenBatch:
    """An endpoint's batch being filled (plaintext, in memory only, bounded)."""

    model: str
    version: str
    start: float
    entries: list[Entry] = field(default_factory=list)
    nbytes: int = 0
    limit: int = MAX_OPEN_BATCH_BYTES  # sealed at this many bytes


@dataclass(frozen=True)
class Run:
    """Records of one layout, stacked: the arrays by input/output name and (time, trigger, rows) per record."""

    entries: Sequence[Entry]
    arrays: dict[str, np.ndarray]
    index: list[tuple[float, str, int]]


def batch_meta(*, batch_id: str, device: str, endpoint: str, model: str, version: str, policy: Any,
               index: Sequence[tuple[float, str, int]], triggers: Sequence[str]) -> dict[str, Any]:
    """The metadata sealed with a batch of ``index``'s records (``policy``: the endpoint's CapturePolicy)."""
    return {
        "id": batch_id, "device": device, "endpoint": endpoint, "model": model, "modelVersion": version,
        "campaign": policy.campaign, "purpose": policy.purpose,
        "start": round(index[0][0], 3), "end": round(index[-1][0], 3), "records": len(index),
        "rows": sum(map(_ROWS, index)), "triggers": dict(Counter(triggers)),
        "redactions": [{"input": r.input, "columns": list(r.columns), "action": r.action} for r in policy.redactions],
    }


def same_layout(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """Records stack into one batch only when names, dtypes, ranks and shapes past the first axis agree."""
    if len(a) != len(b):
        return False
    for k, x in a.items():
        y = b.get(k)
        if y is None:
            return False
        if x is y:
            continue
        dx, dy = x.dtype, y.dtype
        if (dx is not dy and dx != dy) or x.ndim != y.ndim or (x.ndim > 1 and x.shape[1:] != y.shape[1:]):
            return False
    return True


def _stack_side(sides: list[dict[str, np.ndarray]], out: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """Every record's arrays of one side (inputs or outputs) stacked into ``out``; the first array's parts (its
    rows give each record's), or None when the records do not share one layout."""
    first = sides[0]
    if len(set(map(len, sides))) != 1:
        return None
    lead: list[np.ndarray] | None = None
    for name in first:
        try:
            parts = [side[name] for side in sides]
        except KeyError:
            return None
        if len(set(map(_DTYPE, parts))) != 1:
            return None
        try:  # refuses other ranks and other shapes past the first axis
            stacked = np.concatenate(parts, axis=0)
        except ValueError:
            if set(map(_NDIM, parts)) != {0}:
                return None
            stacked = np.stack(parts)  # scalars: one row each
        if name not in out:  # (an output named like an input is not kept twice)
            out[name] = stacked
        if lead is None:
            lead = parts
    return lead if lead is not None else []


def _stack(entries: Sequence[Entry]) -> Run | None:
    """The records stacked, when they share one layout; else None."""
    out: dict[str, np.ndarray] = {}
    lead = _stack_side(list(map(INPUTS, entries)), out)
    if lead is None or _stack_side(list(map(OUTPUTS, entries)), out) is None:
        return None
    rows = list(map(len, lead)) if lead and lead[0].ndim else [1] * len(entries)
    return Run(entries, out, list(zip(map(TIME, entries), map(TRIGGER, entries), rows, strict=True)))


def stack_runs(entries: Sequence[Entry]) -> list[Run]:
    """The records as runs of one layout each, in order (almost always one run)."""
    whole = _stack(entries)
    if whole is not None:
        return [whole]
    runs, start = [], 0
    for i in range(1, len(entries) + 1):
        if i == len(entries) or not (same_layout(INPUTS(entries[start]), INPUTS(entries[i]))
                                     and same_layout(OUTPUTS(entries[start]), OUTPUTS(entries[i]))):
            run = _stack(entries[start:i])
            assert run is not None  # (same_layout is what _stack checks, one record against the first)
            runs.append(run)
            start = i
    return runs
