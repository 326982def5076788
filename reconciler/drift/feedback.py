"""Online accuracy (classifiers) and error (regressors) from ground truth that arrives later:
``POST /v2/models/{name}/feedback``.

Requests that carry a KServe v2 ``id`` and reach the monitor leave their predictions (classes, or a regressor's
values) in a bounded join buffer (at most ``max_pending`` requests, none older than the join window). Feedback
``{"feedback": [{"id": "r-17", "label": 2}, {"id": "r-18", "labels": [0, 3]}, {"id": "r-19", "value": 3.5}]}``
is joined by id; each matched row counts as correct or not (``label``/``labels``) or by its error
(``value``/``values``) in a rolling window of the last ``accuracy_window`` labelled rows. Ids that are unknown
(never seen, sampled out, dropped, expired or already answered) are counted, never silently ignored. Pure:
time is passed in.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, deque
from typing import Any

import numpy as np

MAX_BODY = 1024 * 1024
MAX_ITEMS = 10_000
DEFAULT_JOIN_WINDOW = 600.0
DEFAULT_MAX_PENDING = 10_000
DEFAULT_ACCURACY_WINDOW = 1000


class FeedbackError(ValueError):
    """The feedback body is not usable; the message says why (answered with 400)."""


def parse_feedback(body: bytes) -> list[tuple[str, list[float]]]:
    """``(id, truths)`` per item: integer class labels (``label``/``labels``) or finite numbers (``value``/
    ``values``, regression); ``FeedbackError`` names the first item that is neither."""
    if len(body) > MAX_BODY:
        raise FeedbackError(f"feedback body is {len(body)} bytes (limit {MAX_BODY})")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise FeedbackError(f"feedback is not JSON: {exc}") from None
    items = doc.get("feedback") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise FeedbackError('expected {"feedback": [{"id": "...", "label": N}, ...]}')
    if len(items) > MAX_ITEMS:
        raise FeedbackError(f"{len(items)} feedback items (limit {MAX_ITEMS} per request)")
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("id"), str) or not it["id"]:
            raise FeedbackError(f"feedback[{i}]: needs a non-empty string 'id'")
        if "value" in it or "values" in it:
            values = it.get("values", [it.get("value")])
            if not isinstance(values, list) or not values or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
                raise FeedbackError(f"feedback[{i}]: 'value' must be a finite number, 'values' a list of them")
            out.append((it["id"], [float(x) for x in values]))
            continue
        labels = it.get("labels", [it["label"]] if "label" in it else None)
        if not isinstance(labels, list) or not labels or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in labels):
            raise FeedbackError(f"feedback[{i}]: needs an integer 'label' or a list of integer 'labels' (or a "
                                "number 'value' / 'values' for a regression model)")
        out.append((it["id"], labels))
    return out


class FeedbackJoin:
    def __init__(self, join_window: float = DEFAULT_JOIN_WINDOW, max_pending: int = DEFAULT_MAX_PENDING,
                 accuracy_window: int = DEFAULT_ACCURACY_WINDOW) -> None:
        self.join_window = join_window
        self.max_pending = max_pending
        self._pending: OrderedDict[str, tuple[float, np.ndarray, str]] = OrderedDict()
        self._recent: deque[bool] = deque(maxlen=accuracy_window)
        self._errors: deque[float] = deque(maxlen=accuracy_window)  # regression: prediction − truth
        self.joined = 0
        self.unknown = 0
        self.mismatched = 0  # label count differs from the request's rows
        self.evicted = 0  # pushed out by max_pending before feedback came

    def remember(self, request_id: str, predicted: np.ndarray, now: float, kind: str = "class") -> None:
        """A request's predictions: ``kind`` "class" (class indices) or "value" (a regressor's outputs)."""
        self._expire(now)
        self._pending.pop(request_id, None)
        self._pending[request_id] = (now, np.asarray(predicted).ravel(), kind)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.evicted += 1

    def _expire(self, now: float) -> None:
        while self._pending:
            t = next(iter(self._pending.values()))[0]
            if now - t <= self.join_window:
                break
            self._pending.popitem(last=False)

    def feedback(self, items: list[tuple[str, list[float]]], now: float) -> dict[str, Any]:
        self._expire(now)
        joined = unknown = mismatched = 0
        for rid, labels in items:
            hit = self._pending.pop(rid, None)
            if hit is None:
                unknown += 1
                continue
            _, predicted, kind = hit
            if len(labels) != predicted.size or (kind == "class" and any(isinstance(y, float) for y in labels)):
                mismatched += 1
                continue
            joined += 1
            if kind == "class":
                self._recent.extend(bool(p == y) for p, y in zip(predicted.tolist(), labels, strict=True))
            else:
                self._errors.extend(float(p) - float(y) for p, y in zip(predicted.tolist(), labels, strict=True))
        self.joined += joined
        self.unknown += unknown
        self.mismatched += mismatched
        return {"joined": joined, "unknown": unknown, "mismatched": mismatched, **self.snapshot()}

    def snapshot(self) -> dict[str, Any]:
        n, e = len(self._recent), len(self._errors)
        out: dict[str, Any] = {"accuracy": round(sum(self._recent) / n, 6) if n else None, "labelled": n + e,
                               "pending": len(self._pending)}
        if e:
            err = np.asarray(self._errors)
            out.update(mae=round(float(np.mean(np.abs(err))), 6), rmse=round(float(np.sqrt(np.mean(err ** 2))), 6))
        return out
