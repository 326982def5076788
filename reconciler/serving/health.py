"""Health check a freshly loaded model version must pass before it serves.

Order: run the probe inputs once (the model must run; outputs must be finite when ``requireFinite``; outputs
must match the probe's golden outputs within ``atol``/``rtol``, by default those of the precision the runtime
actually computes in, or of the variant's declared one where that is looser), then ``warmupRuns`` timed runs whose p95 must
stay under ``maxLatencyMs``, then the process RSS growth since before the load must stay under
``maxRssGrowthMB``. Without a probe, zero-filled inputs shaped from the model's metadata are used and only
"runs", "finite" and the latency/RSS bounds are checked. The comparison logic is pure and tested directly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reconciler.serving.precision import health_tolerance
from reconciler.serving.runtimes.base import Backend
from reconciler.serving.v2.codec import V2_TO_NP, CodecError, TensorMeta, all_finite, json_tensor_to_array


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    enabled: bool = True
    warmup_runs: int = 5
    max_latency_ms: float | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    require_finite: bool = True
    max_rss_growth_mb: float | None = None

    @classmethod
    def from_spec(cls, health: Mapping[str, Any] | None, precision: str | None = None,
                  effective: str | None = None) -> HealthPolicy:
        """From a Deployment's ``spec.health`` section (camelCase keys; absent → defaults).

        ``atol``/``rtol`` default to the tolerance of ``effective``, the precision the loaded runtime computes in
        (``Backend.precision``), or of the variant's declared ``precision`` where that is looser
        (:func:`reconciler.serving.precision.health_tolerance`); the section overrides them."""
        h = health or {}
        tol = health_tolerance(precision, effective)
        return cls(
            enabled=bool(h.get("enabled", True)),
            warmup_runs=int(h.get("warmupRuns", 5)),
            max_latency_ms=h.get("maxLatencyMs"),
            atol=float(h.get("atol", tol.atol)),
            rtol=float(h.get("rtol", tol.rtol)),
            require_finite=bool(h.get("requireFinite", True)),
            max_rss_growth_mb=h.get("maxRssGrowthMB"),
        )


@dataclass(frozen=True, slots=True)
class HealthResult:
    ok: bool
    reason: str = ""
    message: str = ""
    p50_ms: float | None = None
    p95_ms: float | None = None
    rss_growth_mb: float | None = None


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample. Pure."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def compare_outputs(
    got: Mapping[str, np.ndarray],
    golden: Sequence[Mapping[str, Any]],
    *,
    atol: float,
    rtol: float,
    require_finite: bool,
) -> tuple[str, str] | None:
    """``None`` when ``got`` matches the golden probe outputs, else ``(reason, message)``. Pure."""
    if require_finite:
        for name, arr in got.items():
            if not all_finite(arr):
                bad = int(np.size(arr) - np.isfinite(arr).sum())
                return "NonFiniteOutput", f"output {name!r} has {bad} NaN/infinite value(s) of {arr.size}"
    for doc in golden:
        try:
            name, datatype, want = json_tensor_to_array(doc)
        except CodecError as exc:
            return "ProbeInvalid", f"golden output: {exc}"
        if name not in got:
            return "ProbeMismatch", f"model has no output {name!r} named by the probe"
        have = np.asarray(got[name])
        if have.shape != want.shape:
            return (
                "ProbeMismatch",
                f"output {name!r}: shape {list(have.shape)}, probe expects {list(want.shape)}",
            )
        if datatype == "BYTES" or datatype == "BOOL" or want.dtype.kind in "iu":
            same = bool(np.array_equal(have.astype(want.dtype, copy=False), want))
            if not same:
                return "ProbeMismatch", f"output {name!r} differs from the probe's golden output"
            continue
        h, w = have.astype(np.float64), want.astype(np.float64)
        close = np.isclose(h, w, atol=atol, rtol=rtol, equal_nan=not require_finite)
        if not close.all():
            idx = int(np.argmin(close.reshape(-1)))
            err = float(np.nanmax(np.abs(h - w)))
            return (
                "ProbeMismatch",
                f"output {name!r}: {int((~close).sum())} of {close.size} value(s) outside atol={atol:g} rtol={rtol:g} "
                f"(first at flat index {idx}: got {h.reshape(-1)[idx]:.6g}, want {w.reshape(-1)[idx]:.6g}; "
                f"max abs error {err:.3g})",
            )
    return None


def probe_feeds(probe: Mapping[str, Any], inputs: Sequence[TensorMeta]) -> dict[str, np.ndarray]:
    """Decode the probe's inputs and check they fit the model (raises :class:`CodecError`)."""
    docs = probe.get("inputs")
    if not isinstance(docs, list) or not docs:
        raise CodecError("probe has no 'inputs'")
    feeds: dict[str, np.ndarray] = {}
    expected = {m.name: m for m in inputs}
    for doc in docs:
        name, datatype, arr = json_tensor_to_array(doc)
        meta = expected.get(name)
        if meta is None:
            raise CodecError(f"probe input {name!r} is not a model input ({', '.join(expected)})")
        if meta.datatype != datatype:
            raise CodecError(f"probe input {name!r} is {datatype}, the model takes {meta.datatype}")
        feeds[name] = arr
    missing = set(expected) - set(feeds)
    if missing:
        raise CodecError(f"probe lacks model input(s) {', '.join(sorted(missing))}")
    return feeds


def synthetic_feeds(inputs: Sequence[TensorMeta]) -> dict[str, np.ndarray]:
    """Zero-filled inputs, variable dimensions set to 1 (for warm-up when there is no probe)."""
    feeds: dict[str, np.ndarray] = {}
    for m in inputs:
        shape = tuple(1 if d < 0 else d for d in m.shape)
        if m.datatype == "BYTES":
            arr = np.empty(shape, dtype=object)
            arr.fill(b"")
        else:
            arr = np.zeros(shape, dtype=V2_TO_NP[m.datatype])
        feeds[m.name] = arr
    return feeds


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return 0.0


def run_health_check(
    backend: Backend, probe: Mapping[str, Any] | None, policy: HealthPolicy, *, rss_before_mb: float
) -> HealthResult:
    """Check a loaded backend. Never raises for model problems: they come back as a failed result."""
    try:
        feeds = probe_feeds(probe, backend.inputs) if probe else synthetic_feeds(backend.inputs)
    except CodecError as exc:
        return HealthResult(False, "ProbeInvalid", f"probe does not fit the model: {exc}")
    if not policy.enabled:
        # Only "it loads" is required; the timing still tells the server how to schedule the model.
        try:
            samples = _timed_runs(backend, feeds, 3)
        except Exception:
            return HealthResult(True)
        return HealthResult(True, "", "", percentile(samples, 50), percentile(samples, 95))
    try:
        outputs = backend.infer(feeds)
    except Exception as exc:
        return HealthResult(False, "HealthCheckFailed", f"inference on the probe inputs failed: {exc}")
    golden = probe.get("outputs", []) if probe else []
    problem = compare_outputs(
        outputs, golden, atol=policy.atol, rtol=policy.rtol, require_finite=policy.require_finite
    )
    if problem:
        return HealthResult(False, *problem)
    try:
        samples = _timed_runs(backend, feeds, max(policy.warmup_runs, 1))
    except Exception as exc:
        return HealthResult(False, "HealthCheckFailed", f"warm-up inference failed: {exc}")
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    growth = max(0.0, rss_mb() - rss_before_mb)
    if policy.max_latency_ms is not None and p95 > policy.max_latency_ms:
        msg = f"warm-up p95 latency {p95:.3f} ms exceeds maxLatencyMs {policy.max_latency_ms:g}"
        return HealthResult(False, "LatencyTooHigh", msg, p50, p95, growth)
    if policy.max_rss_growth_mb is not None and growth > policy.max_rss_growth_mb:
        msg = f"RSS grew {growth:.1f} MB while loading, maxRssGrowthMB is {policy.max_rss_growth_mb:g}"
        return HealthResult(False, "RssGrowthTooHigh", msg, p50, p95, growth)
    return HealthResult(True, "", "", p50, p95, growth)


def _timed_runs(backend: Backend, feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.infer(feeds)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples
