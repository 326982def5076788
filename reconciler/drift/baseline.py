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


def build_baseline(layouts: Sequence[TensorLayout], tensors: Mapping[str, np.ndarray], *, bins: int = stats.DEFAULT_BINS,
                   window: int = DEFAULT_WINDOW, thresholds: Mapping[str, tuple[float, float]] | None = None,
                   model: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Reference statistics of every monitored feature of ``tensors`` (inputs and the model's outputs)."""
    features: list[dict[str, Any]] = []
    ref_bins: list[np.ndarray] = []
    ref_props: list[np.ndarray] = []
    rows = 0
    for t in layouts:
        arr = np.asarray(tensors[t.name])
        rows = arr.shape[0]
        for name, values in zip(feature_names(t), extract(t, arr), strict=True):
            f: dict[str, Any] = {"name": name, "tensor": t.name, "role": t.role}
            if is_categorical(t):
                idx = categorical_index(values, t.columns)
                counts = np.bincount(idx, minlength=t.columns + 1).astype(np.float64)
                f.update(kind="categorical", categories=t.columns)
            else:
                v = np.asarray(values, dtype=np.float64)
                edges = stats.quantile_edges(v, bins)
                idx = stats.bin_index(v, edges)
                counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
                f.update(kind="numeric", edges=[float(e) for e in edges], stats=_summary(v))
            props = counts / max(1.0, counts.sum())
            f["reference"] = [float(p) for p in props]
            features.append(f)
            ref_bins.append(idx)
            ref_props.append(props)
    if len(features) > MAX_FEATURES:
        raise BaselineError(f"{len(features)} features; a baseline holds at most {MAX_FEATURES} (use --inputs)")
    limits = dict(stats.DEFAULT_THRESHOLDS)
    limits.update(thresholds or {})
    false_alarms = {}
    for method in stats.METHODS:
        warn, alert = limits[method]
        warn_rate, alert_rate = stats.false_alarm_rates(ref_bins, ref_props, method, window, [warn, alert],
                                                        trials=FALSE_ALARM_TRIALS, seed=seed)
        false_alarms[method] = {"warn": warn, "alert": alert, "warnRate": warn_rate, "alertRate": alert_rate}
    return {
        "kind": "DriftBaseline", "formatVersion": FORMAT_VERSION, "model": dict(model or {}),
        "sample": {"rows": int(rows)}, "bins": bins,
        "tensors": [t.to_json() for t in layouts],
        "features": features,
        "falseAlarm": {"window": window, "trials": FALSE_ALARM_TRIALS, "methods": false_alarms},
    }


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
class Baseline:
    digest: str
    layouts: tuple[TensorLayout, ...]
    features: tuple[Feature, ...]
    false_alarm: dict[str, Any]

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
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError(f"{source}: malformed: {exc}") from None
        return cls(hashlib.sha256(data).hexdigest(), layouts, tuple(feats), dict(doc.get("falseAlarm") or {}))


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
