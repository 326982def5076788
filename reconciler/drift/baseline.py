"""The drift baseline: reference bins and proportions per feature, summary statistics, false-alarm estimates.

:func:`build_baseline` is pure (arrays in, a JSON-ready dict out); :func:`run_model` is the I/O edge that runs
the model on the reference sample with a serving runtime; :class:`Baseline` is the loaded, checked form the
device's monitor uses. File format (``kind: DriftBaseline``, ``formatVersion: 1``) in docs/monitoring.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reconciler.drift import stats
from reconciler.drift.features import TensorLayout, extract, feature_names, guess_layout, is_categorical

FORMAT_VERSION = 1
MAX_BASELINE_BYTES = 4 * 1024 * 1024
MAX_FEATURES = 512
DEFAULT_WINDOW = 1000
DEFAULT_MIN_SAMPLES = 200
FALSE_ALARM_TRIALS = 200


class BaselineError(ValueError):
    """A baseline file or a reference sample that cannot be used; the message says why."""


def _summary(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    med = float(np.median(x))
    p05, p95 = (float(v) for v in np.quantile(x, [0.05, 0.95]))
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "p05": p05, "median": med,
            "p95": p95, "max": float(x.max()), "mad": float(np.median(np.abs(x - med)))}


def categorical_index(values: np.ndarray, categories: int) -> np.ndarray:
    v = np.asarray(values).astype(np.int64, copy=False)
    return np.where((v >= 0) & (v < categories), v, categories)


def window_sizes(min_samples: int, window: int, points: int = 5) -> list[int]:
    """The window sizes the false-alarm estimate looks at: ``min_samples`` … ``window``, geometrically spaced,
    rounded to two significant digits (200, 300, 450, 670, 1000)."""
    lo, hi = max(1, min(min_samples, window)), max(1, window)
    out = {lo, hi}
    for x in np.geomspace(lo, hi, points)[1:-1]:
        out.add(int(float(f"{x:.2g}")))
    return sorted(v for v in out if lo <= v <= hi)


def _bin_feature(t: TensorLayout, values: np.ndarray, fit: np.ndarray, bins: int) -> tuple[dict[str, Any], np.ndarray]:
    """A feature's bins fitted on the rows ``fit`` (a boolean mask): (its baseline entry, every row's bin)."""
    if is_categorical(t):
        idx = categorical_index(values, t.columns)
        counts = np.bincount(idx[fit], minlength=t.columns + 1).astype(np.float64)
        entry: dict[str, Any] = {"kind": "categorical", "categories": t.columns}
    else:
        v = np.asarray(values, dtype=np.float64)
        edges = stats.value_edges(v[fit])
        binning = "values"
        if edges is None:
            edges, binning = stats.quantile_edges(v[fit], bins), "quantiles"
        idx = stats.bin_index(v, edges)
        counts = np.bincount(idx[fit], minlength=len(edges) + 1).astype(np.float64)
        entry = {"kind": "numeric", "binning": binning, "edges": [float(e) for e in edges], "stats": _summary(v[fit])}
    entry["reference"] = [float(p) for p in counts / max(1.0, counts.sum())]
    return entry, idx


def build_baseline(layouts: Sequence[TensorLayout], tensors: Mapping[str, np.ndarray], *, bins: int = stats.DEFAULT_BINS,
                   window: int = DEFAULT_WINDOW, min_samples: int = DEFAULT_MIN_SAMPLES,
                   thresholds: Mapping[str, tuple[float, float]] | None = None,
                   model: Mapping[str, Any] | None = None, labels: np.ndarray | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """Reference statistics of every monitored feature of ``tensors`` (inputs and the model's outputs), the
    false-alarm estimate per window size from a held-out half of the rows, and — for a classifier with
    probability outputs — the calibration of its confidence for the label-free accuracy estimate."""
    columns: list[tuple[TensorLayout, str, np.ndarray]] = []
    rows = 0
    for t in layouts:
        arr = np.asarray(tensors[t.name])
        rows = arr.shape[0]
        columns += [(t, name, values) for name, values in zip(feature_names(t), extract(t, arr), strict=True)]
    if len(columns) > MAX_FEATURES:
        raise BaselineError(f"{len(columns)} features; a baseline holds at most {MAX_FEATURES} (use --inputs)")
    everything = np.ones(rows, dtype=bool)
    features = []
    for t, name, values in columns:
        entry, _ = _bin_feature(t, values, everything, bins)
        features.append({"name": name, "tensor": t.name, "role": t.role, **entry})
    doc: dict[str, Any] = {
        "kind": "DriftBaseline", "formatVersion": FORMAT_VERSION, "model": dict(model or {}),
        "sample": {"rows": int(rows)}, "bins": bins,
        "tensors": [t.to_json() for t in layouts],
        "features": features,
        "falseAlarm": _false_alarms(columns, rows, bins, window, min_samples, thresholds, seed),
    }
    perf = _performance(layouts, tensors, labels)
    if perf is not None:
        doc["performance"] = perf
    return doc


def _false_alarms(columns: Sequence[tuple[TensorLayout, str, np.ndarray]], rows: int, bins: int, window: int,
                  min_samples: int, thresholds: Mapping[str, tuple[float, float]] | None, seed: int) -> dict[str, Any]:
    """The held-out estimate: half the rows (seeded shuffle) are binned as a reference would be, the other half
    are unshifted traffic the reference never saw, judged at every window size from ``min_samples`` on."""
    order = np.random.default_rng(seed).permutation(rows)
    fit = np.zeros(rows, dtype=bool)
    fit[order[: rows // 2]] = True
    refs, held = [], []
    for t, _, values in columns:
        entry, idx = _bin_feature(t, values, fit, bins)
        refs.append(np.asarray(entry["reference"]))
        held.append(idx[~fit])
    limits = dict(stats.DEFAULT_THRESHOLDS)
    limits.update(thresholds or {})
    sizes = window_sizes(min_samples, window)
    methods = {}
    for method in stats.METHODS:
        warn, alert = limits[method]
        est = stats.held_out_false_alarms(refs, int(fit.sum()), held, method, sizes, warn, alert,
                                          trials=FALSE_ALARM_TRIALS, seed=seed)
        methods[method] = {
            "warn": warn, "alert": alert,
            "warnRate": max((e.warn_rate for e in est), default=None),
            "alertRate": max((e.alert_rate for e in est), default=None),
            "bySize": [{"samples": e.samples, "warnAt": round(e.warn_at, 6), "alertAt": round(e.alert_at, 6),
                        "warnRate": e.warn_rate, "alertRate": e.alert_rate, "maxScore": round(e.max_score, 6)}
                       for e in est]}
    return {"estimate": "held-out", "referenceRows": int(fit.sum()), "heldOutRows": int(rows - fit.sum()),
            "trials": FALSE_ALARM_TRIALS, "alpha": stats.NOISE_ALPHA, "window": window, "minSamples": min_samples,
            "sizes": sizes, "methods": methods}


#: Bins of a classifier's confidence (its largest class probability) for the label-free accuracy estimate: a
#: coarse grid below 0.9 and a fine one above, where a good model's confidences are.
CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
#: Calibration pseudo-rows: a confidence bin with few labelled reference rows leans towards its mean confidence.
CALIBRATION_PRIOR = 5.0


def looks_like_probabilities(a: np.ndarray) -> bool:
    """Rows of non-negative numbers that sum to 1 (a softmax or ``predict_proba`` output, not logits)."""
    x = np.asarray(a, dtype=np.float64)
    return bool(x.ndim == 2 and x.shape[0] > 0 and x.shape[1] >= 2 and np.all(np.isfinite(x)) and x.min() >= -1e-6
                and x.max() <= 1 + 1e-6 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))


def _performance(layouts: Sequence[TensorLayout], tensors: Mapping[str, np.ndarray],
                 labels: np.ndarray | None) -> dict[str, Any] | None:
    """Confidence-based accuracy estimate (in the spirit of NannyML's CBPE) of the first classifier output
    holding probabilities: the expected accuracy of a row is the accuracy of reference rows of the same
    confidence (histogram-binning calibration on the labelled reference) — or, without labels, the
    confidence itself; a window's estimate is the mean over its rows. None: no probability output."""
    out = next((t for t in layouts if t.role == "output" and t.layout == "classes"
                and looks_like_probabilities(np.asarray(tensors[t.name]).reshape(len(tensors[t.name]), -1))), None)
    if out is None:
        return None
    probs = np.asarray(tensors[out.name], dtype=np.float64).reshape(len(tensors[out.name]), -1)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.asarray(CONFIDENCE_EDGES)
    idx = stats.bin_index(conf, edges)
    k = edges.size + 1
    count = np.bincount(idx, minlength=k).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=k)
    lower = np.concatenate([[1.0 / probs.shape[1]], edges])
    upper = np.concatenate([edges, [1.0]])
    mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1.0), np.clip((lower + upper) / 2, lower, upper))
    doc: dict[str, Any] = {"output": out.name, "method": "confidence", "edges": [float(e) for e in edges],
                           "reference": [float(c) for c in count / count.sum()]}
    y = None if labels is None else np.asarray(labels).ravel()
    if y is not None and y.size == conf.size:
        correct = np.bincount(idx, weights=(pred == y).astype(np.float64), minlength=k)
        expected = (correct + CALIBRATION_PRIOR * mean_conf) / (count + CALIBRATION_PRIOR)
        doc.update(calibrated=True, referenceAccuracy=round(float(np.mean(pred == y)), 6))
    else:
        expected = mean_conf
        doc["calibrated"] = False
    doc["expected"] = [round(float(e), 6) for e in expected]
    doc["referenceEstimate"] = round(float(np.sum(count * expected) / count.sum()), 6)
    return doc


# --- running the model (I/O edge) -----------------------------------------------------------------------------


def load_sample(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The ``.npz`` sample: arrays keyed by model input name, optional ``labels`` (ground truth)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{path}: not a readable .npz sample: {exc}") from None
    labels = arrays.pop("labels", None)
    if not arrays:
        raise BaselineError(f"{path}: no input arrays in the sample")
    return arrays, labels


def check_sample(arrays: Mapping[str, np.ndarray], metas: Sequence[Any], source: str) -> dict[str, np.ndarray]:
    """The sample's arrays cast to the model's input types; ``BaselineError`` naming every mismatch."""
    from reconciler.serving.v2.codec import V2_TO_NP

    problems = []
    feeds: dict[str, np.ndarray] = {}
    rows: set[int] = set()
    for m in metas:
        a = arrays.get(m.name)
        if a is None:
            problems.append(f"model input {m.name!r} is missing (the sample has {', '.join(sorted(arrays))})")
            continue
        want = tuple(m.shape)
        if a.ndim != len(want) or any(w not in (-1, g) for w, g in zip(want, a.shape, strict=False)):
            problems.append(f"input {m.name!r}: sample shape {list(a.shape)} does not match the model's {list(want)}")
            continue
        dt = V2_TO_NP.get(m.datatype)
        if dt is None or not np.can_cast(a.dtype, dt, casting="same_kind"):
            problems.append(f"input {m.name!r}: sample dtype {a.dtype} cannot feed a {m.datatype} input")
            continue
        feeds[m.name] = a.astype(dt, copy=False)
        rows.add(a.shape[0])
    extra = sorted(set(arrays) - {m.name for m in metas})
    if extra:
        problems.append(f"the sample has arrays the model has no input for: {', '.join(extra)}")
    if len(rows) > 1:
        problems.append(f"inputs have different numbers of rows: {sorted(rows)}")
    if problems:
        raise BaselineError(f"{source}: " + "; ".join(problems))
    return feeds


def run_model(model_files: Sequence[Path], runtime: str, arrays: Mapping[str, np.ndarray], source: str,
              batch: int = 256) -> tuple[dict[str, np.ndarray], list[Any], list[Any]]:
    """Run the model on the sample in batches: (inputs, outputs) tensors and the runtime's in/out metadata."""
    from reconciler.serving.runtimes import RuntimeLoadError, load_backend

    try:
        backend = load_backend(runtime, files=list(model_files))
    except RuntimeLoadError as exc:
        raise BaselineError(f"cannot load {model_files[0]}: {exc}") from None
    try:
        feeds = check_sample(arrays, backend.inputs, source)
        n = next(iter(feeds.values())).shape[0]
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, batch):
            try:
                out = backend.infer({k: v[start:start + batch] for k, v in feeds.items()})
            except Exception as exc:  # the runtime's own message names the problem
                raise BaselineError(f"{source}: the model failed on rows {start}..{start + batch}: {exc}") from None
            for k, v in out.items():
                parts.setdefault(k, []).append(np.asarray(v))
        tensors = dict(feeds)
        tensors.update({k: np.concatenate(v) for k, v in parts.items()})
        return tensors, list(backend.inputs), list(backend.outputs)
    finally:
        backend.close()


def layouts_for(tensors: Mapping[str, np.ndarray], inputs: Sequence[Any], outputs: Sequence[Any],
                selected: Sequence[str] | None = None, forced: Mapping[str, str] | None = None) -> list[TensorLayout]:
    """Layouts of the ``selected`` inputs (default: all) and of every output; ``forced`` overrides guesses."""
    in_names, out_names = [m.name for m in inputs], [m.name for m in outputs]
    forced = dict(forced or {})
    for what, names, known in (("--inputs", selected or [], in_names), ("--layout", forced, in_names + out_names)):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise BaselineError(f"{what}: the model has no tensor {', '.join(map(repr, unknown))} "
                                f"(inputs: {', '.join(in_names)}; outputs: {', '.join(out_names)})")
    out = [guess_layout(n, "input", tensors[n], forced.get(n)) for n in in_names if selected is None or n in selected]
    out += [guess_layout(n, "output", tensors[n], forced.get(n)) for n in out_names]
    return out


# --- the loaded baseline (device side) -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Feature:
    name: str
    tensor: str
    categorical: bool
    edges: np.ndarray
    reference: np.ndarray

    @property
    def width(self) -> int:
        return int(self.reference.size)

    def bins(self, values: np.ndarray) -> np.ndarray:
        if self.categorical:
            return categorical_index(values, self.width - 1)
        return stats.bin_index(values, self.edges)


@dataclass(frozen=True, eq=False)
class Performance:
    """The label-free accuracy estimate's calibration: expected accuracy per confidence bin of ``output``."""

    output: str
    edges: np.ndarray
    expected: np.ndarray
    calibrated: bool
    reference_accuracy: float | None

    @property
    def width(self) -> int:
        return int(self.expected.size)

    def bins(self, scores: np.ndarray) -> np.ndarray:
        a = np.asarray(scores, dtype=np.float64)
        conf = a.reshape(a.shape[0], -1).max(axis=1) if a.ndim else a.reshape(1)
        return stats.bin_index(np.nan_to_num(conf, nan=0.0), self.edges)

    def estimate(self, counts: np.ndarray) -> float | None:
        """Expected accuracy of a window with these confidence-bin counts; None for an empty window."""
        total = float(np.sum(counts))
        return float(np.dot(counts, self.expected) / total) if total > 0 else None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Performance:
        edges = np.asarray(d["edges"], dtype=np.float64)
        expected = np.asarray(d["expected"], dtype=np.float64)
        if expected.ndim != 1 or expected.size != edges.size + 1 or not np.all((expected >= 0) & (expected <= 1)):
            raise ValueError("performance: expected and edges do not fit together")
        acc = d.get("referenceAccuracy")
        return cls(str(d["output"]), edges, expected, bool(d.get("calibrated")), None if acc is None else float(acc))


@dataclass(frozen=True, eq=False)
class Baseline:
    digest: str
    layouts: tuple[TensorLayout, ...]
    features: tuple[Feature, ...]
    false_alarm: dict[str, Any]
    rows: int = 0  # reference rows: the reference's own sampling noise in the thresholds in force
    performance: Performance | None = None

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "baseline") -> Baseline:
        if len(data) > MAX_BASELINE_BYTES:
            raise BaselineError(f"{source}: {len(data)} bytes (limit {MAX_BASELINE_BYTES})")
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise BaselineError(f"{source}: not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") != "DriftBaseline":
            raise BaselineError(f"{source}: not a DriftBaseline document")
        if doc.get("formatVersion") != FORMAT_VERSION:
            raise BaselineError(f"{source}: formatVersion {doc.get('formatVersion')!r} (this agent reads "
                                f"{FORMAT_VERSION})")
        try:
            layouts = tuple(TensorLayout.from_json(t) for t in doc["tensors"])
            feats = []
            for f in doc["features"][:MAX_FEATURES]:
                ref = np.asarray(f["reference"], dtype=np.float64)
                edges = np.asarray(f.get("edges") or [], dtype=np.float64)
                cat = f["kind"] == "categorical"
                if ref.ndim != 1 or ref.size < 1 or (not cat and ref.size != edges.size + 1) or not np.all(ref >= 0):
                    raise ValueError(f"feature {f.get('name')!r}: reference and edges do not fit together")
                feats.append(Feature(str(f["name"]), str(f["tensor"]), cat, edges, ref))
            want = [n for t in layouts for n in feature_names(t)]
            if [f.name for f in feats] != want:
                raise ValueError("features do not match the tensor layouts")
            rows = int((doc.get("sample") or {}).get("rows") or 0)
            perf = Performance.from_json(doc["performance"]) if doc.get("performance") else None
            if perf is not None and perf.output not in {t.name for t in layouts if t.role == "output"}:
                raise ValueError(f"performance: no output {perf.output!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError(f"{source}: malformed: {exc}") from None
        return cls(hashlib.sha256(data).hexdigest(), layouts, tuple(feats), dict(doc.get("falseAlarm") or {}),
                   max(0, rows), perf)

    def noise_floor(self, method: str, samples: float) -> float:
        """The score an unshifted window of ``samples`` observations reaches by chance (:func:`stats.noise_floor`)."""
        return stats.noise_floor(method, samples, self.rows, [f.reference for f in self.features])


def load_baselines(paths: Sequence[Path]) -> dict[str, Baseline]:
    """Baseline files (or directories searched for them, e.g. a TUF targets folder) by sha256 digest; files
    that are not baselines are skipped, a baseline that does not load is an error naming the file."""
    out: dict[str, Baseline] = {}
    for root in paths:
        if not root.exists():
            raise BaselineError(f"{root}: no such file or directory")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file())
        for f in files:
            if f.stat().st_size > MAX_BASELINE_BYTES:
                continue
            data = f.read_bytes()
            if b'"DriftBaseline"' not in data[:256]:
                if f == root:
                    raise BaselineError(f"{f}: not a DriftBaseline document")
                continue
            b = Baseline.from_bytes(data, str(f))
            out[b.digest] = b
    return out
