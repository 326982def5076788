"""Prometheus series of the drift monitor (default registry: on the inference server's ``/metrics``).

Cardinality is bounded: per endpoint version one overall score, level and window size, and per-feature
scores only for the ``topK`` worst features (series of features that leave the top k are removed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from prometheus_client import Counter, Gauge

SCORE = Gauge("modelfleet_drift_score", "Worst feature's drift score of the current window.",
              ["endpoint", "version", "method"])
FEATURE_SCORE = Gauge("modelfleet_drift_feature_score", "Drift score of one of the top-k drifting features.",
                      ["endpoint", "version", "feature"])
LEVEL = Gauge("modelfleet_drift_level", "Drift verdict: -1 insufficient data, 0 ok, 1 warning, 2 alert.",
              ["endpoint", "version"])
SAMPLES = Gauge("modelfleet_drift_window_samples", "Observations in the drift window (effective count when "
                "time-decayed).", ["endpoint", "version"])
MONITORED = Counter("modelfleet_drift_monitored_requests_total", "Requests whose tensors reached the monitor.",
                    ["endpoint", "version"])
DROPPED = Counter("modelfleet_drift_dropped_requests_total", "Requests not monitored because the monitor's "
                  "queue was full.", ["endpoint", "version"])
NAN_OUTPUTS = Counter("modelfleet_inference_nan_outputs_total", "Monitored requests with NaN or infinite outputs.",
                      ["endpoint", "version"])
ACCURACY = Gauge("modelfleet_model_accuracy", "Share of correct predictions among the last labelled rows "
                 "(POST /v2/models/{name}/feedback).", ["endpoint", "version"])
ERROR = Gauge("modelfleet_model_error", "Regression error among the last labelled rows (POST "
              "/v2/models/{name}/feedback): mean absolute (mae) or root mean squared (rmse).",
              ["endpoint", "version", "kind"])
ESTIMATED_ACCURACY = Gauge("modelfleet_model_estimated_accuracy", "Label-free accuracy estimate of the drift "
                           "window: the calibrated confidence of a classifier's probability output, averaged.",
                           ["endpoint", "version"])


class Series:
    """The series of one endpoint version, created once (``labels()`` is too slow per request)."""

    def __init__(self, endpoint: str, version: str) -> None:
        self.labels = (endpoint, version)
        self.dropped = DROPPED.labels(endpoint, version)
        self.monitored = MONITORED.labels(endpoint, version)
        self.nan_outputs = NAN_OUTPUTS.labels(endpoint, version)
        self.accuracy = ACCURACY.labels(endpoint, version)
        self._method: str | None = None
        self._errors: set[str] = set()
        self._estimated = False
        self._features: set[str] = set()

    def set_scores(self, method: str, score: float | None, level: int, samples: float,
                   worst: Sequence[tuple[str, float]]) -> None:
        e, v = self.labels
        if self._method not in (None, method):
            with contextlib.suppress(KeyError):
                SCORE.remove(e, v, self._method)
        self._method = method
        if score is not None:
            SCORE.labels(e, v, method).set(score)
        LEVEL.labels(e, v).set(level)
        SAMPLES.labels(e, v).set(samples)
        top = {f for f, _ in worst}
        for gone in self._features - top:
            with contextlib.suppress(KeyError):
                FEATURE_SCORE.remove(e, v, gone)
        for f, s in worst:
            FEATURE_SCORE.labels(e, v, f).set(s)
        self._features = top

    def set_feedback(self, snapshot: dict) -> None:
        e, v = self.labels
        if snapshot.get("accuracy") is not None:
            self.accuracy.set(snapshot["accuracy"])
        for kind in ("mae", "rmse"):
            if snapshot.get(kind) is not None:
                ERROR.labels(e, v, kind).set(snapshot[kind])
                self._errors.add(kind)

    def set_estimated_accuracy(self, value: float | None) -> None:
        e, v = self.labels
        if value is not None:
            ESTIMATED_ACCURACY.labels(e, v).set(value)
            self._estimated = True

    def remove(self) -> None:
        e, v = self.labels
        for kind in self._errors:
            with contextlib.suppress(KeyError):
                ERROR.remove(e, v, kind)
        if self._estimated:
            with contextlib.suppress(KeyError):
                ESTIMATED_ACCURACY.remove(e, v)
        for metric, extra in ((SCORE, (self._method,)), (LEVEL, ()), (SAMPLES, ()), (MONITORED, ()),
                              (DROPPED, ()), (NAN_OUTPUTS, ()), (ACCURACY, ())):
            if extra == (None,):
                continue
            with contextlib.suppress(KeyError):
                metric.remove(e, v, *extra)
        for f in self._features:
            with contextlib.suppress(KeyError):
                FEATURE_SCORE.remove(e, v, f)
        self._features = set()
