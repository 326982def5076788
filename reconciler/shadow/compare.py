"""One mirrored request: does the candidate's answer agree with the live one, row by row? Pure.

A *row* is one input example: the first dimension of the outputs (a request of batch 8 is 8 rows; an output
without a batch dimension makes the whole request one row). A row agrees when every compared output agrees on it:

- ``top1`` — float scores ``[rows, classes]``: the same arg-max (a classifier's label, a detector's best class);
- ``exact`` — labels (integer, bool, string outputs): equal values;
- ``tolerance`` — every element within ``|candidate - live| <= atol + rtol * |live|`` (regression outputs);
- ``auto`` (default) — ``exact`` for non-float outputs, ``top1`` for float outputs of shape ``[rows, k >= 2]``,
  ``tolerance`` for the other float outputs.

A candidate value that is NaN or infinite where the live value is finite makes the row *non-finite* (and not
agreeing); a missing output or a different shape makes every row disagree (a *mismatch*). Whatever the method,
float outputs also get their absolute and relative errors measured (relative to ``max(|live|, 1e-6)``, over the
elements both answers have finite).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from reconciler.shadow.spec import CompareSettings

REL_FLOOR = 1e-6
MAX_OUTPUTS = 16  # per-output error aggregates kept (bounded whatever the model)


@dataclass(slots=True)
class OutputError:
    """Absolute and relative error of one float output over the compared elements (aggregatable)."""

    max_abs: float = 0.0
    sum_abs: float = 0.0
    count: int = 0
    max_rel: float = 0.0

    def add(self, other: OutputError) -> None:
        self.max_abs = max(self.max_abs, other.max_abs)
        self.sum_abs += other.sum_abs
        self.count += other.count
        self.max_rel = max(self.max_rel, other.max_rel)


@dataclass(slots=True)
class SampleResult:
    rows: int = 0
    agreed: int = 0
    nonfinite: int = 0  # rows where the candidate gave NaN/Inf and the live version did not
    mismatch: str | None = None  # why every row disagrees (missing output, other shape)
    skipped: bool = False  # nothing to compare (the compared output was not in the live answer)
    errors: dict[str, OutputError] = field(default_factory=dict)


def _method(method: str, arr: np.ndarray) -> str:
    if method != "auto":
        return method
    if arr.dtype.kind not in "fc":
        return "exact"
    return "top1" if arr.ndim == 2 and arr.shape[1] >= 2 else "tolerance"


def _rows_of(live: Mapping[str, np.ndarray], names: list[str]) -> int:
    """The request's rows: the outputs' shared first dimension (1 when they have none or disagree)."""
    firsts = {np.asarray(live[n]).shape[0] if np.ndim(live[n]) >= 1 else -1 for n in names}
    return firsts.pop() if len(firsts) == 1 and -1 not in firsts and 0 not in firsts else 1


def _error(lf: np.ndarray, d: np.ndarray, finite: bool) -> OutputError:
    """Errors of ``d = candidate - live`` (float64) over the elements both have finite."""
    if not finite:
        ok = np.isfinite(d)
        lf, d = lf[ok], d[ok]
    if d.size == 0:
        return OutputError()
    ad = np.abs(d)
    rel = ad / np.maximum(np.abs(lf), REL_FLOOR)
    return OutputError(float(ad.max()), float(ad.sum()), int(ad.size), float(rel.max()))


def compare(live: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            settings: CompareSettings) -> SampleResult:
    """Compare one request's answers (``live`` as the client got it, ``candidate`` from the shadow run)."""
    if settings.output is not None:
        if settings.output not in live:
            return SampleResult(skipped=True)
        names = [settings.output]
    else:
        names = sorted(live)
    if not names:
        return SampleResult(skipped=True)
    rows = _rows_of(live, names)
    res = SampleResult(rows=rows)
    agree = np.ones(rows, dtype=bool)
    nonfinite = np.zeros(rows, dtype=bool)
    for name in names:
        lv = np.asarray(live[name])
        if name not in candidate:
            res.mismatch = f"the candidate has no output {name!r}"
            agree[:] = False
            continue
        cv = np.asarray(candidate[name])
        if cv.shape != lv.shape:
            res.mismatch = f"output {name!r}: candidate shape {list(cv.shape)}, live {list(lv.shape)}"
            agree[:] = False
            continue
        method = _method(settings.method, lv)
        lr, cr = lv.reshape(rows, -1), cv.reshape(rows, -1)
        floats = lv.dtype.kind in "fc" and cv.dtype.kind in "fc"
        if floats:
            lf = lr.astype(np.float64)
            d = cr.astype(np.float64) - lf
            finite = bool(np.isfinite(d).all())  # the common case: one check, no per-row work
            if not finite:
                nonfinite |= (~np.isfinite(cr) & np.isfinite(lr)).any(axis=1)
            if len(res.errors) < MAX_OUTPUTS or name in res.errors:
                res.errors[name] = _error(lf, d, finite)
        if method == "top1" and floats:
            same = np.argmax(lr, axis=1) == np.argmax(cr, axis=1) if lr.shape[1] else np.ones(rows, dtype=bool)
        elif method == "tolerance" and floats:
            same = np.isclose(cr, lr, atol=settings.atol, rtol=settings.rtol, equal_nan=True).all(axis=1)
        else:
            same = (lr == cr).all(axis=1) if lr.shape[1] else np.ones(rows, dtype=bool)
        agree &= np.asarray(same, dtype=bool)
    agree &= ~nonfinite
    res.agreed = int(agree.sum())
    res.nonfinite = int(nonfinite.sum())
    return res
