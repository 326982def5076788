"""The device-side streaming monitor: per endpoint version, constant memory, off the request path.

On the request path :class:`EndpointMonitor` only counts, records the latency in a fixed ring, samples
(``drift.sampleRate``) and appends the request's tensors to a bounded queue (drop-and-count when full, by
items and by bytes). One background thread (:class:`DriftSupervisor`) drains every queue in batches: features
are extracted and binned with numpy against the baseline's fixed bins, added to the window (count-based or
time-decayed), NaN outputs are counted, scores and the verdict recomputed at most once a second, and the
Prometheus series updated. The status sections are re-published at most every ``reportInterval`` (or at once
when the verdict or the degraded state changes) so the status branch does not get a commit per request.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from reconciler.drift import metrics as M, stats
from reconciler.drift.baseline import Baseline, BaselineError, Feature
from reconciler.drift.features import extract_all
from reconciler.drift.feedback import FeedbackError, FeedbackJoin, parse_feedback
from reconciler.drift.settings import (
    DriftSettings,
    degraded_reasons,
    device_conditions,
    encode_counts,
    feedback_breaches,
)

LATENCY_SLOTS = 1024
MAX_QUEUE_BYTES = 16 * 1024 * 1024
log = logging.getLogger(__name__)
MAX_STATUS_FEATURES = 64
RECOMPUTE_EVERY = 1.0
#: A queued request: inputs, outputs, their bytes, the request's id (for the feedback join).
_Item = tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, str | None]
_LEVEL_VALUE = {"Insufficient": -1, "OK": 0, "Warning": 1, "Alert": 2}


class EndpointMonitor:
    """Signals of one loaded version of one endpoint (the registry's per-version observer)."""

    def __init__(self, endpoint: str, version: str, seed: int = 0) -> None:
        self.endpoint = endpoint
        self.version = version
        self.requests = 0
        self.errors = 0
        self.rejections = 0
        self.nan_outputs = 0
        self.monitored = 0
        self.dropped = 0
        self.sampled_out = 0
        self.settings = DriftSettings()
        self.baseline: Baseline | None = None
        self.problem: str | None = None  # why drift is not computed (bad baseline, …)
        self._window: stats.CountWindow | stats.DecayWindow | None = None
        self._lat = np.zeros(LATENCY_SLOTS)
        self._lat_n = 0
        self._queue: deque[_Item] = deque()
        self._join = FeedbackJoin()
        self._queue_bytes = 0
        self._ops = threading.Lock()
        self._work = threading.Lock()
        self._rand = random.Random(seed)
        self._second, self._second_n = 0, 0  # the maxPerSecond budget of the current second
        self._dirty = False
        self._computed_at = -1e18
        self.latest: dict[str, Any] | None = None
        self._published: tuple[dict[str, Any] | None, dict[str, Any]] | None = None
        self._published_at = -1e18
        self._published_key: tuple[Any, ...] | None = None
        self._series = M.Series(endpoint, version)
        self._warned_cap = False

    # -- request path (cheap) ------------------------------------------------------------------------------

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        with self._ops:
            self.requests += 1
            self._lat[self._lat_n % LATENCY_SLOTS] = seconds
            self._lat_n += 1
            rate = self.settings.sample_rate
            if rate < 1.0 and self._rand.random() >= rate:
                self.sampled_out += 1
                return
            limit = self.settings.max_per_second
            if limit is not None:
                second = int(time.monotonic())
                if second != self._second:
                    self._second, self._second_n = second, 0
                if self._second_n >= limit:
                    self.sampled_out += 1
                    return
                self._second_n += 1
            size = sum(a.nbytes for a in feeds.values()) + sum(a.nbytes for a in outputs.values())
            if len(self._queue) >= self.settings.queue or self._queue_bytes + size > MAX_QUEUE_BYTES:
                self.dropped += 1
                self._series.dropped.inc()
                return
            self._queue_bytes += size
            self._queue.append((feeds, outputs, size, request_id))

    def observe_error(self, seconds: float) -> None:
        with self._ops:
            self.requests += 1
            self.errors += 1
            self._lat[self._lat_n % LATENCY_SLOTS] = seconds
            self._lat_n += 1

    def observe_rejection(self) -> None:
        with self._ops:
            self.rejections += 1

    # -- configuration (agent) ----------------------------------------------------------------------------

    def configure(self, settings: DriftSettings, baseline: Baseline | None, problem: str | None = None) -> None:
        """New settings or baseline; the window restarts only when the bins or the window kind change."""
        with self._work:
            same_bins = baseline is not None and self.baseline is not None and baseline.digest == self.baseline.digest
            same_window = (settings.window, settings.half_life) == (self.settings.window, self.settings.half_life)
            self.settings = settings
            self.problem = problem
            if not (same_bins and same_window and self._window is not None):
                self.baseline = baseline if settings.enabled else None
                self._window = self._new_window() if self.baseline is not None else None
                self.latest = None
            self._dirty = True

    def _new_window(self) -> stats.CountWindow | stats.DecayWindow:
        assert self.baseline is not None
        widths = [f.width for f in self.baseline.features]
        if self.baseline.performance is not None:  # the confidence bins ride in the same window, last
            widths.append(self.baseline.performance.width)
        if len(self.baseline.features) > MAX_STATUS_FEATURES and not self._warned_cap:
            self._warned_cap = True
            log.warning("%s@%s: the baseline has %d features; the status carries the bin counts of the %d worst "
                        "(drift.binsOmitted)", self.endpoint, self.version, len(self.baseline.features),
                        MAX_STATUS_FEATURES)
        if self.settings.half_life:
            return stats.DecayWindow(widths, self.settings.half_life)
        return stats.CountWindow(widths, self.settings.window)

    # -- worker (off the request path) ----------------------------------------------------------------------

    def process(self, now: float) -> int:
        """Drain the queue into the window; recompute scores when due. Returns how many requests it took."""
        with self._ops:
            items = list(self._queue)
            self._queue.clear()
            self._queue_bytes = 0
        with self._work:
            if items:
                self.monitored += len(items)
                self._series.monitored.inc(len(items))
                self._remember_ids(items, now)
                for batch, rows in _batches(items):
                    self._count_nan(batch, rows)
                    if self._window is not None and self.baseline is not None:
                        self._add(batch, now)
                        self._dirty = True
            if self._dirty and now - self._computed_at >= RECOMPUTE_EVERY:
                self._compute(now)
        return len(items)

    def _remember_ids(self, items: list[_Item], now: float) -> None:
        """Predictions of requests with an id, for the feedback join: the predicted classes of a classifier
        (argmax of its ``classes`` output, else its integer ``labels`` output), else the first value of a
        regression output (``scores``)."""
        lays = self.baseline.layouts if self.baseline else ()
        cls_name = next((t.name for t in lays if t.layout == "classes"), None)
        label_name = next((t.name for t in lays if t.role == "output" and t.layout == "labels"), None)
        reg_name = next((t.name for t in lays if t.role == "output" and t.layout == "scores"), None)
        for _, outputs, _, rid in items:
            if rid is None:
                continue
            if not cls_name and label_name and outputs.get(label_name) is not None:  # integer class labels out
                labels = outputs[label_name]
                self._join.remember(rid, labels.reshape(labels.shape[0], -1)[:, 0].astype(np.int64), now)
                continue
            if cls_name or reg_name:
                out = outputs.get(cls_name) if cls_name else None
                value = None if cls_name else outputs.get(reg_name or "")
            else:  # no baseline: a float [N, C ≥ 2] output is a classifier's, a float [N] or [N, 1] a regressor's
                out = next((a for a in outputs.values() if a.ndim == 2 and a.shape[1] >= 2 and a.dtype.kind == "f"), None)
                value = None if out is not None else next(
                    (a for a in outputs.values() if a.dtype.kind == "f" and a.ndim in (1, 2) and a.size == len(a)), None)
            if out is not None:
                self._join.remember(rid, np.argmax(out.reshape(out.shape[0], -1), axis=1), now)
            elif value is not None:
                self._join.remember(rid, value.reshape(value.shape[0], -1)[:, 0].astype(np.float64), now, kind="value")

    def feedback(self, body: bytes, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """``POST …/feedback``: join ground-truth labels to remembered predictions; (HTTP status, answer)."""
        now = time.monotonic() if now is None else now
        try:
            items = parse_feedback(body)
        except FeedbackError as exc:
            return 400, {"error": str(exc)}
        self.process(now)  # requests still queued for the monitor are remembered first
        with self._work:
            answer = self._join.feedback(items, now)
        self._series.set_feedback(answer)
        return 200, answer

    def _count_nan(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Requests (not rows) with a non-finite output value; ``rows`` are the requests' first rows."""
        bad: np.ndarray | None = None
        for name, a in batch.items():
            if name.startswith("out:") and a.dtype.kind in "fc" and a.ndim:
                rowbad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
                bad = rowbad if bad is None else bad | rowbad
        if bad is not None and bad.any():
            n = int((np.add.reduceat(bad, rows) > 0).sum())
            self.nan_outputs += n
            self._series.nan_outputs.inc(n)

    def _add(self, batch: dict[str, np.ndarray], now: float) -> None:
        assert self.baseline is not None and self._window is not None
        tensors = {k.split(":", 1)[1]: v for k, v in batch.items()}
        got = extract_all(self.baseline.layouts, tensors)
        if got is None:
            return
        _, feats = got
        binned = [None if v is None else f.bins(v) for f, v in zip(self.baseline.features, feats, strict=True)]
        perf = self.baseline.performance
        if perf is not None:
            scores = tensors.get(perf.output)
            binned.append(None if scores is None else perf.bins(scores))
        if isinstance(self._window, stats.DecayWindow):
            self._window.add(binned, now)
        else:
            self._window.add(binned)

    def _compute(self, now: float) -> None:
        assert self._work.locked()
        self._computed_at = now
        self._dirty = False
        if self._window is None or self.baseline is None:
            self.latest = None
            return
        s = self.settings
        base = self.baseline
        counts = self._window.counts()
        perf_counts = counts[len(base.features)] if base.performance is not None else None
        counts = counts[: len(base.features)]
        n = self._window.n_at(now) if isinstance(self._window, stats.DecayWindow) else self._window.n
        scores = {f.name: stats.score(s.method, c, f.reference)
                  for f, c in zip(base.features, counts, strict=True) if c.sum() > 0}
        warn_at, alert_at = stats.thresholds_at(s.warn, s.alert, base.noise_floor(s.method, n))
        v = stats.verdict(scores, n, warn=warn_at, alert=alert_at, min_samples=s.min_samples, top_k=s.top_k)
        keep = status_features(base.features, scores)
        self.latest = {
            "baseline": base.digest, "method": s.method, "level": v.level,
            "score": None if v.score is None else round(v.score, 6), "warn": s.warn, "alert": s.alert,
            "warnAt": round(warn_at, 6), "alertAt": round(alert_at, 6),
            "samples": round(n, 1), "minSamples": s.min_samples, "action": s.action,
            **({"halfLifeSeconds": s.half_life} if s.half_life else {"window": s.window}),
            "worst": [{"feature": f, "score": sc} for f, sc in v.worst],
            "features": len(base.features),
            "bins": {f.name: encode_counts(c) for f, c in zip(base.features, counts, strict=True) if f.name in keep},
        }
        if len(keep) < len(base.features):
            self.latest["binsOmitted"] = len(base.features) - len(keep)
        estimate = None
        if base.performance is not None and perf_counts is not None:
            estimate = base.performance.estimate(perf_counts)
            self.latest["performance"] = {
                "estimatedAccuracy": None if estimate is None else round(estimate, 4),
                "samples": round(float(perf_counts.sum()), 1), "method": "confidence",
                "calibrated": base.performance.calibrated,
                **({"referenceAccuracy": base.performance.reference_accuracy}
                   if base.performance.reference_accuracy is not None else {})}
        self._series.set_scores(s.method, v.score, _LEVEL_VALUE[v.level], n, v.worst)
        self._series.set_estimated_accuracy(estimate)

    # -- status -----------------------------------------------------------------------------------------------

    def operational(self) -> dict[str, Any]:
        with self._ops:
            lat = self._lat[: min(self._lat_n, LATENCY_SLOTS)].copy()
            ops: dict[str, Any] = {"requests": self.requests, "errors": self.errors, "rejections": self.rejections,
                                   "nanOutputs": self.nan_outputs, "monitored": self.monitored,
                                   "sampledOut": self.sampled_out, "dropped": self.dropped}
        if lat.size:
            p50, p95, p99 = np.percentile(lat, [50, 95, 99]) * 1000.0
            ops["latencyMs"] = {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}
        if self._join.joined or self._join.unknown:
            with self._work:
                ops["feedback"] = {**self._join.snapshot(), "joined": self._join.joined, "unknown": self._join.unknown}
            breaches = feedback_breaches(ops["feedback"], self.settings)
            if breaches:
                ops["feedback"]["breaches"] = breaches
        ops["degraded"] = degraded_reasons(ops, self.settings)
        return ops

    def published(self, now: float) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """(drift section, operational section) for the status document, refreshed at most every
        ``reportInterval`` unless the verdict level or the degraded state changed."""
        with self._work:
            if self._dirty:
                self._compute(now)
            drift = dict(self.latest) if self.latest is not None else None
        if drift is None and self.problem:
            drift = {"level": "Unavailable", "message": self.problem[:512]}
        ops = self.operational()
        key = ((drift or {}).get("level"), tuple(ops["degraded"]) != ())
        if self._published is None or key != self._published_key or now - self._published_at >= self.settings.report_interval:
            self._published, self._published_key, self._published_at = (drift, ops), key, now
        return self._published

    def close(self) -> None:
        self._series.remove()


def status_features(features: Sequence[Feature], scores: Mapping[str, float]) -> set[str]:
    """The features whose bin counts go into the status: all of them up to ``MAX_STATUS_FEATURES``, else that
    many chosen deliberately — the worst scores first (ties by name), features without data last — so what is
    left out (``binsOmitted``) is what drifts least."""
    if len(features) <= MAX_STATUS_FEATURES:
        return {f.name for f in features}
    ranked = sorted(features, key=lambda f: (f.name not in scores, -scores.get(f.name, 0.0), f.name))
    return {f.name for f in ranked[:MAX_STATUS_FEATURES]}


def _batches(items: list[_Item]) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Requests concatenated into as few batches as possible (same tensors, trailing shapes and dtypes): the
    numpy work then runs once per batch instead of once per request. Returns (tensors keyed ``in:``/``out:`` +
    name, index of each request's first row). Requests without one common batch dimension are left out."""
    groups: dict[tuple[Any, ...], list[_Item]] = {}
    for it in items:
        key = (tuple((k, a.shape[1:], a.dtype) for k, a in it[0].items()),
               tuple((k, a.shape[1:], a.dtype) for k, a in it[1].items()))
        groups.setdefault(key, []).append(it)
    out = []
    for reqs in groups.values():
        rows = [_rows(r) for r in reqs]
        reqs = [r for r, n in zip(reqs, rows, strict=True) if n is not None]
        if not reqs:
            continue
        sizes = np.array([n for n in rows if n is not None], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        batch = {f"in:{k}": np.concatenate([r[0][k] for r in reqs]) for k in reqs[0][0]}
        batch.update({f"out:{k}": np.concatenate([r[1][k] for r in reqs]) for k in reqs[0][1]})
        out.append((batch, starts))
    return out


def _rows(item: _Item) -> int | None:
    """The request's batch size, None when its tensors do not share a leading dimension."""
    n = None
    for side in (item[0], item[1]):
        for a in side.values():
            if a.ndim == 0 or (n is not None and a.shape[0] != n):
                return None
            n = a.shape[0]
    return n


class DriftSupervisor:
    """Owns every endpoint version's monitor and the one worker thread that feeds their windows."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval: float = 0.05) -> None:
        self.clock = clock
        self.interval = interval
        self._monitors: dict[tuple[str, str], EndpointMonitor] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observer_for(self, spec: Any) -> EndpointMonitor:
        """The registry's ``observer_factory``: a fresh monitor for a freshly loaded version."""
        m = EndpointMonitor(spec.name, spec.version)
        with self._lock:
            old = self._monitors.get((spec.name, spec.version))
            if old is not None:
                m.configure(old.settings, old.baseline, old.problem)
                old.close()
            self._monitors[(spec.name, spec.version)] = m
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="modelfleet-drift", daemon=True)
                self._thread.start()
        return m

    def get(self, endpoint: str, version: str) -> EndpointMonitor | None:
        return self._monitors.get((endpoint, version))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.drain()

    def drain(self) -> int:
        with self._lock:
            monitors = list(self._monitors.values())
        return sum(m.process(self.clock()) for m in monitors)

    def retire(self, alive: Iterable[tuple[str, str]]) -> None:
        """Forget monitors of versions no longer loaded (their series leave /metrics too)."""
        keep = set(alive)
        with self._lock:
            for key in [k for k in self._monitors if k not in keep]:
                self._monitors.pop(key).close()

    def sync(self, endpoints: list[dict[str, Any]], specs: Mapping[str, Mapping[str, Any]],
             read_baseline: Callable[[Mapping[str, Any]], bytes]) -> list[tuple[str, bool, str, str]]:
        """The agent's hook, once per pass: configure each serving version's monitor from its spec (deployment
        ``drift`` section, baseline target), add the ``drift``/``operational`` sections to the status endpoints
        and return the device conditions (``DriftDetected``, ``Degraded``)."""
        now = self.clock()
        for e in endpoints:
            m = self.get(e["name"], str(e.get("version"))) if e.get("version") is not None else None
            if m is None:
                continue
            spec = specs.get(e["name"]) or {}
            settings = DriftSettings.from_section(spec.get("drift"))
            target = spec.get("driftBaselineTarget")
            baseline, problem = m.baseline, None
            if target is None:
                baseline = None
            elif baseline is None or baseline.digest != target.get("digest"):
                try:
                    baseline = Baseline.from_bytes(read_baseline(target), str(target.get("path")))
                except (BaselineError, OSError, ValueError) as exc:
                    baseline, problem = None, f"drift baseline unusable: {exc}"
            if (settings, baseline, problem) != (m.settings, m.baseline, m.problem):
                m.configure(settings, baseline, problem)
            drift, ops = m.published(now)
            if drift is not None:
                e["drift"] = drift
            e["operational"] = ops
        return device_conditions(endpoints)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.retire(())


def monitors_of(supervisor: DriftSupervisor) -> Mapping[tuple[str, str], EndpointMonitor]:
    return dict(supervisor._monitors)
