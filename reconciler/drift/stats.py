"""Pure drift math on fixed bins: edges, bin counts, scores, windows, merging, verdicts. No I/O, no clock.

Every distribution here is a vector of bin counts over fixed bins taken from the baseline, so a window costs
``features × bins`` numbers whatever its length, and windows from many devices merge by adding counts.

Scores between the reference proportions ``q`` and the window's proportions ``p`` (both smoothed with
``EPS`` so that an empty bin never gives an infinite score):

* PSI  = Σ (p − q) · ln(p / q)                          (symmetrised KL divergence)
* JS   = sqrt(½ KL(p‖m) + ½ KL(q‖m)) / sqrt(ln 2), m = ½(p + q)   (Jensen–Shannon distance, base 2, in [0, 1])
* KS   = max_k |P_k − Q_k| over the cumulative sums     (Kolmogorov–Smirnov on the bins)
* L∞   = max_k |p_k − q_k|                              (categorical outputs: largest change of a class share)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

METHODS = ("psi", "js", "ks", "linf")
#: Common-practice thresholds (warn, alert) per method; PSI 0.1/0.25 is the credit-scoring rule of thumb.
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "psi": (0.1, 0.25),
    "js": (0.1, 0.2),
    "ks": (0.1, 0.2),
    "linf": (0.1, 0.2),
}
#: Smoothing of empty bins (proportion floor) before PSI/JS; documented in docs/monitoring.md.
EPS = 1e-4
DEFAULT_BINS = 10
MAX_BINS = 64


# --- bins -----------------------------------------------------------------------------------------------------


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior edges of (up to) ``bins`` equal-mass bins of ``values``; the outer bins are open-ended.

    Repeated quantiles (discrete data) collapse, so a feature may get fewer bins. Computed in float64 with
    the "lower" quantile rule (edges are sample values), so the same sample gives the same edges on every CPU.
    """
    if not 2 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 2 and {MAX_BINS}, got {bins}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros(0)
    qs = np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="lower")
    return np.unique(qs)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: 0 … len(edges). A value equal to an edge goes to the bin above it."""
    return np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (length ``len(edges) + 1``) of the finite ``values``."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return np.bincount(bin_index(x, edges), minlength=len(edges) + 1).astype(np.float64)


def category_counts(values: np.ndarray, n_categories: int) -> np.ndarray:
    """Counts of integer categories 0 … n−1; anything else is counted in an extra last "other" bin."""
    v = np.asarray(values).ravel().astype(np.int64, copy=False)
    inside = (v >= 0) & (v < n_categories)
    counts = np.bincount(v[inside], minlength=n_categories).astype(np.float64)
    return np.append(counts, float(v.size - int(inside.sum())))


def proportions(counts: Sequence[float] | np.ndarray, eps: float = EPS) -> np.ndarray:
    """Counts → proportions with every bin floored at ``eps`` and renormalised."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    p = c / total if total > 0 else np.full(c.shape, 1.0 / max(1, c.size))
    p = np.maximum(p, eps)
    return p / p.sum()


# --- scores ---------------------------------------------------------------------------------------------------


def psi(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)
    div = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    return float(math.sqrt(max(0.0, div) / math.log(2.0)))


def ks_binned(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def linf(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.max(np.abs(p - q)))


_SCORES = {"psi": psi, "js": js_distance, "ks": ks_binned, "linf": linf}


def score(method: str, window_counts: np.ndarray, reference: np.ndarray) -> float:
    """One score of a window's counts against the reference proportions (both over the same bins)."""
    if method not in _SCORES:
        raise ValueError(f"unknown drift method {method!r} (one of {', '.join(METHODS)})")
    if method in ("ks", "linf"):  # distances of plain proportions: no smoothing needed or wanted
        c = np.asarray(window_counts, dtype=np.float64)
        total = c.sum()
        p = c / total if total > 0 else np.zeros_like(c)
        r = np.asarray(reference, dtype=np.float64)
        return _SCORES[method](p, r / r.sum())
    return _SCORES[method](proportions(window_counts), proportions(reference))


def all_scores(window_counts: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {m: score(m, window_counts, reference) for m in METHODS}


# --- windows --------------------------------------------------------------------------------------------------


class CountWindow:
    """The last ~``size`` observations of every feature, as bin counts in ``blocks`` rotating blocks.

    Memory is ``blocks × features × bins`` floats, whatever ``size`` is. The window slides by whole blocks
    (``size / blocks`` observations), so it holds between ``size − size/blocks`` and ``size`` observations.
    """

    def __init__(self, bins_per_feature: Sequence[int], size: int, blocks: int = 10) -> None:
        if size < blocks:
            raise ValueError(f"window size {size} is smaller than its {blocks} blocks")
        self.widths = list(bins_per_feature)
        self.offsets = np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)
        self.size = int(size)
        self.block_size = max(1, self.size // blocks)
        self._blocks = np.zeros((blocks, int(self.offsets[-1])), dtype=np.float64)
        self._filled = np.zeros(blocks, dtype=np.int64)  # observations per block
        self._cur = 0

    def add(self, feature_bins: Sequence[np.ndarray | None]) -> None:
        """Add ``n`` observations: one array of ``n`` bin indices per feature (all the same length; ``None``
        for a feature this batch does not carry)."""
        n = next((len(b) for b in feature_bins if b is not None), 0)
        start = 0
        while start < n:
            room = self.block_size - int(self._filled[self._cur])
            if room == 0:
                self._cur = (self._cur + 1) % len(self._filled)
                self._blocks[self._cur] = 0.0
                self._filled[self._cur] = 0
                continue
            take = min(room, n - start)
            row = self._blocks[self._cur]
            flat = [idx[start:start + take] + self.offsets[f] for f, idx in enumerate(feature_bins) if idx is not None]
            if flat:  # one bincount for all features: the per-call overhead dominates for small batches
                row += np.bincount(np.concatenate(flat), minlength=row.size)
            self._filled[self._cur] += take
            start += take

    @property
    def n(self) -> float:
        return float(self._filled.sum())

    def counts(self) -> list[np.ndarray]:
        total = self._blocks.sum(axis=0)
        return [total[self.offsets[i]:self.offsets[i + 1]] for i in range(len(self.widths))]


class DecayWindow:
    """Exponentially time-decayed bin counts: an observation ``half_life`` seconds old weighs ½."""

    def __init__(self, bins_per_feature: Sequence[int], half_life: float) -> None:
        if half_life <= 0:
            raise ValueError("half-life must be positive")
        self.widths = list(bins_per_feature)
        self.offsets = np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)
        self.rate = math.log(2.0) / half_life
        self._counts = np.zeros(int(self.offsets[-1]), dtype=np.float64)
        self._weight = 0.0
        self._t: float | None = None

    def _decay_to(self, now: float) -> None:
        if self._t is not None and now > self._t:
            f = math.exp(-self.rate * (now - self._t))
            self._counts *= f
            self._weight *= f
        if self._t is None or now > self._t:
            self._t = now

    def add(self, feature_bins: Sequence[np.ndarray | None], now: float) -> None:
        self._decay_to(now)
        flat = [idx + self.offsets[f] for f, idx in enumerate(feature_bins) if idx is not None]
        if flat:
            self._counts += np.bincount(np.concatenate(flat), minlength=self._counts.size)
        self._weight += next((len(b) for b in feature_bins if b is not None), 0)

    def n_at(self, now: float) -> float:
        """Effective sample count (sum of weights) at ``now``."""
        self._decay_to(now)
        return self._weight

    def counts(self) -> list[np.ndarray]:
        return [self._counts[self.offsets[i]:self.offsets[i + 1]].copy() for i in range(len(self.widths))]


def merge_counts(windows: Iterable[Mapping[str, Sequence[float]]]) -> dict[str, np.ndarray]:
    """Add per-feature bin counts of several windows (devices → site → fleet). Features missing in a window
    contribute nothing; a feature whose bin count differs between windows is a caller error (``ValueError``:
    windows over different baselines must not be merged)."""
    out: dict[str, np.ndarray] = {}
    for w in windows:
        for feat, counts in w.items():
            c = np.asarray(counts, dtype=np.float64)
            if feat in out:
                if out[feat].shape != c.shape:
                    raise ValueError(f"feature {feat!r}: {c.size} bins here, {out[feat].size} elsewhere")
                out[feat] = out[feat] + c
            else:
                out[feat] = c.copy()
    return out


# --- verdicts -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The window's judgement: ``level`` is ``Insufficient`` (fewer than the minimum samples), ``OK``,
    ``Warning`` (score ≥ warn) or ``Alert`` (score ≥ alert). ``score`` is the worst feature's score."""

    level: str
    score: float | None
    samples: float
    worst: tuple[tuple[str, float], ...]


def verdict(feature_scores: Mapping[str, float], samples: float, *, warn: float, alert: float,
            min_samples: int, top_k: int = 5) -> Verdict:
    """Worst-feature verdict. Pure: the same scores and counts give the same answer everywhere."""
    worst = tuple(sorted(((f, round(s, 6)) for f, s in feature_scores.items()), key=lambda x: (-x[1], x[0]))[:top_k])
    top = worst[0][1] if worst else None
    if samples < min_samples or top is None:
        return Verdict("Insufficient", top, samples, worst)
    level = "Alert" if top >= alert else "Warning" if top >= warn else "OK"
    return Verdict(level, top, samples, worst)


# --- false alarms ---------------------------------------------------------------------------------------------


def false_alarm_rate(reference_bins: Sequence[np.ndarray], reference_props: Sequence[np.ndarray], method: str,
                     window: int, threshold: float, *, trials: int = 200, seed: int = 0) -> float:
    """Share of windows of ``window`` observations, resampled (with replacement) from the reference itself,
    whose worst-feature score reaches ``threshold``: how often an unshifted stream would alarm."""
    return false_alarm_rates(reference_bins, reference_props, method, window, [threshold], trials=trials, seed=seed)[0]


def false_alarm_rates(reference_bins: Sequence[np.ndarray], reference_props: Sequence[np.ndarray], method: str,
                      window: int, thresholds: Sequence[float], *, trials: int = 200, seed: int = 0) -> list[float]:
    """:func:`false_alarm_rate` for several thresholds from the same resampled windows.

    ``reference_bins[f]`` holds the reference sample's bin index per observation for feature ``f``; rows are
    resampled together so that correlated features stay correlated. Seeded: the same on every machine.
    """
    rng = np.random.default_rng(seed)
    n = len(reference_bins[0])
    worst = np.zeros(trials)
    for t in range(trials):
        rows = rng.integers(0, n, size=window)
        for idx, ref in zip(reference_bins, reference_props, strict=True):
            counts = np.bincount(idx[rows], minlength=len(ref)).astype(np.float64)
            worst[t] = max(worst[t], score(method, counts, ref))
    return [float(np.mean(worst >= th)) for th in thresholds]
