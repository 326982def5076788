"""Accuracy agreement of a variant with the fp32 reference, and the accuracy budget that keeps or drops it. Pure.

Metrics (computed on the evaluation part of the sample):

- ``top1`` — classifiers only: the share of samples whose answer differs from the fp32 reference's. The answer
  is the model's label output when it has one, else the argmax of its scores (:mod:`~.outputs`). Budget in
  percent: ``top1=1%`` keeps a variant that changes at most 1 % of the answers.
- ``accuracy`` — classifiers with ``labels`` in the sample: the drop of accuracy against those labels, in
  percentage points (``accuracy=0.5%``).
- ``max_abs`` / ``mean_abs`` — the largest and the mean absolute difference to the reference outputs
  (plain numbers: ``mean_abs=0.01``), over every numeric output; a classifier's label output is left out
  (class ids are not magnitudes: ``top1`` judges it), and so are string outputs.
- ``max_rel`` / ``mean_rel`` — ``max_abs`` divided by the largest reference magnitude, ``mean_abs`` divided by
  the mean reference magnitude (``mean_rel=2%``). Relative to the output's scale rather than element-wise, so
  outputs near zero do not blow up.

The default budget: ``accuracy=1%`` for a classifier whose sample has labels (judged against the truth, not
only against fp32), ``top1=1%`` for one without, ``mean_rel=2%`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reconciler.optimize.outputs import Roles, answers, roles_of_arrays, same_class

PERCENT_METRICS = ("top1", "accuracy", "max_rel", "mean_rel")
ABS_METRICS = ("max_abs", "mean_abs")
METRICS = PERCENT_METRICS + ABS_METRICS
DEFAULT_BUDGET = {"classifier": {"top1": 0.01}, "labelled": {"accuracy": 0.01}, "regression": {"mean_rel": 0.02}}


@dataclass(frozen=True)
class Agreement:
    task: str
    samples: int
    max_abs: float | None  # None: the model has no numeric output to compare (only labels)
    mean_abs: float | None
    max_rel: float | None
    mean_rel: float | None
    top1: float | None = None  # share of samples whose class changed (0..1)
    accuracy_ref: float | None = None
    accuracy: float | None = None

    def value(self, metric: str) -> float | None:
        if metric == "accuracy":
            if self.accuracy is None or self.accuracy_ref is None:
                return None
            return self.accuracy_ref - self.accuracy
        return getattr(self, metric)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], *, task: str,
              roles: Roles | None = None, labels: np.ndarray | None = None) -> Agreement:
    """Compare a variant's outputs with the reference's (same samples, same order)."""
    samples = int(np.asarray(next(iter(reference.values()))).shape[0]) if reference else 0
    if task == "classifier" and roles is None:
        roles = roles_of_arrays(reference)
    skip = {roles.label} if task == "classifier" and roles is not None else set()
    diffs, mags = [], []
    for name, ref in reference.items():
        if name not in got:
            raise ValueError(f"variant has no output {name!r}")
        r, g = np.asarray(ref), np.asarray(got[name])
        if r.shape != g.shape:
            raise ValueError(f"output {name!r}: shape {list(g.shape)}, reference {list(r.shape)}")
        if name in skip or r.dtype.kind not in "biuf" or g.dtype.kind not in "biuf":
            continue
        r, g = r.astype(np.float64), g.astype(np.float64)
        diffs.append(np.abs(g - r).reshape(-1))
        mags.append(np.abs(r).reshape(-1))
    max_abs = mean_abs = max_rel = mean_rel = None
    if diffs:
        diff, mag = np.concatenate(diffs), np.concatenate(mags)
        max_abs = float(diff.max()) if diff.size else 0.0
        mean_abs = float(diff.mean()) if diff.size else 0.0
        max_rel = _ratio(max_abs, float(mag.max()) if mag.size else 0.0)
        mean_rel = _ratio(mean_abs, float(mag.mean()) if mag.size else 0.0)
    top1 = acc_ref = acc = None
    if task == "classifier" and roles is not None and roles.answer is not None and samples:
        r_cls, g_cls = answers(roles, reference, samples), answers(roles, got, samples)
        top1 = float(np.mean(~same_class(r_cls, g_cls)))
        if labels is not None:
            y = np.asarray(labels).reshape(-1)[:samples]
            acc_ref, acc = float(np.mean(same_class(r_cls, y))), float(np.mean(same_class(g_cls, y)))
    return Agreement(task, samples, max_abs, mean_abs, max_rel, mean_rel, top1, acc_ref, acc)


def reference_accuracy(reference: Mapping[str, np.ndarray], roles: Roles | None,
                       labels: np.ndarray | None) -> float | None:
    """The fp32 model's own accuracy against the sample's labels (None without labels or an answer output)."""
    if labels is None or not reference:
        return None
    roles = roles or roles_of_arrays(reference)
    if roles.answer is None:
        return None
    n = int(np.asarray(next(iter(reference.values()))).shape[0])
    return float(np.mean(same_class(answers(roles, reference, n), np.asarray(labels).reshape(-1)[:n])))


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


class BudgetError(ValueError):
    pass


def parse_budget(items: Sequence[str]) -> dict[str, float]:
    """``["top1=1%", "mean_abs=0.01"]`` → ``{"top1": 0.01, "mean_abs": 0.01}`` (percentages as fractions)."""
    out: dict[str, float] = {}
    for item in items:
        metric, sep, text = item.partition("=")
        metric, text = metric.strip(), text.strip()
        if not sep or not text:
            raise BudgetError(f"{item!r}: expected METRIC=VALUE, e.g. top1=1%")
        if metric not in METRICS:
            raise BudgetError(f"{item!r}: unknown metric {metric!r} (one of {', '.join(METRICS)})")
        percent = text.endswith("%")
        if percent and metric in ABS_METRICS:
            raise BudgetError(f"{item!r}: {metric} is an absolute error, give a number (e.g. {metric}=0.01)")
        try:
            value = float(text[:-1] if percent else text)
        except ValueError:
            raise BudgetError(f"{item!r}: {text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise BudgetError(f"{item!r}: the limit must be a finite number >= 0")
        if metric in out:
            raise BudgetError(f"{item!r}: {metric} is given twice")
        out[metric] = value / 100.0 if percent else value
    return out


def effective_budget(budget: Mapping[str, float], task: str, labelled: bool = False) -> dict[str, float]:
    """The user's budget, or the default when none was given (a labelled classifier is judged on its labels)."""
    if budget:
        return dict(budget)
    return dict(DEFAULT_BUDGET["labelled" if task == "classifier" and labelled else task])


def over_budget(a: Agreement, budget: Mapping[str, float]) -> str | None:
    """Why the variant is over the budget (the first metric that is), or None when within it."""
    for metric, limit in budget.items():
        value = a.value(metric)
        if value is None:
            if metric == "accuracy":
                what = "without labels in the sample (and a label or scores output)"
            elif metric == "top1":
                what = "without a classifier (--task classifier) that has a label or scores output"
            else:
                what = "on this model: it has no numeric output besides its labels"
            return f"{metric} cannot be measured {what}"
        if not value <= limit:  # also catches NaN
            return f"{metric} {format_metric(metric, value)} exceeds the budget {format_metric(metric, limit)}"
    return None


def format_metric(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in PERCENT_METRICS:
        return f"{value * 100:.2f}%"
    return f"{value:.3g}"
