"""Pure drift math on fixed bins: edges, bin counts, scores, windows, merging, verdicts. No I/O, no clock.

Every distribution here is a vector of bin counts over fixed bins taken from the baseline, so a window costs
``features × bins`` numbers whatever its length, and windows from many devices merge by adding counts.

Scores between the reference proportions ``q`` and the window's proportions ``p`` of ``n`` observations. For
PSI and JS they are smoothed (:func:`smoothed`): bins empty on both sides are left out, an empty window bin
counts as half an observation (``p ≥ 0.5 / n``) and an empty reference bin as ``EPS``, so no score is infinite
and a small window's empty bins do not inflate the score:

* PSI  = Σ (p − q) · ln(p / q)                          (symmetrised KL divergence)
* JS   = sqrt(½ KL(p‖m) + ½ KL(q‖m)) / sqrt(ln 2), m = ½(p + q)   (Jensen–Shannon distance, base 2, in [0, 1])
* KS   = max_k |P_k − Q_k| over the cumulative sums     (Kolmogorov–Smirnov on the bins)
* L∞   = max_k |p_k − q_k|                              (categorical outputs: largest change of a class share)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

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
#: A numeric feature whose reference values are all integers, with at most this many distinct values, gets one
#: bin per value (:func:`value_edges`) instead of quantile bins.
MAX_VALUE_BINS = 32
#: The nominal chance that an unshifted window reaches the noise floor (:func:`noise_floor`) on any feature, per
#: verdict. The large-sample laws understate real features' tails (rare bins, the reference's own fixed
#: deviation): on load_digits a nominal 10⁻⁴ still let up to 0.17 % of held-out windows warn, 10⁻⁶ none of
#: 12,000 (docs/monitoring.md, section 4).
NOISE_ALPHA = 1e-6


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


def value_edges(values: np.ndarray, max_values: int = MAX_VALUE_BINS) -> np.ndarray | None:
    """One bin per value of a discrete feature: the interior edges (every distinct value but the smallest) when
    all finite ``values`` are integers with 2 … ``max_values`` distinct values, else None (use quantile bins).

    A value equal to an edge goes to the bin above it, so each bin holds exactly one reference value; a value
    the reference never had goes to the bin of the nearest reference value below it (the lowest bin below all).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0 or not np.all(x == np.round(x)):
        return None
    distinct = np.unique(x)
    if not 2 <= distinct.size <= max_values:
        return None
    return distinct[1:]


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


def smoothed(window_counts: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(p, q) as PSI and JS see them: the window's and the reference's proportions over the bins that are not
    empty on both sides, the window's floored at half an observation (0.5 / n), the reference's at ``EPS``,
    both renormalised. A bin both sides lack says nothing (a 1000-class output seen in 300 classes has no
    score from the other 700); an empty window bin weighs like half a hit, the usual continuity correction, so
    a window of 200 that misses a 2 % bin adds 0.036 to PSI, not the 0.11 a floor of 10⁻⁴ gave."""
    p, q = _smoothed_rows(np.asarray(window_counts, dtype=np.float64)[None, :], reference)
    return p[0], q[0]


def _smoothed_rows(counts: np.ndarray, reference: Sequence[float] | np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`smoothed` for every row of ``counts`` (windows × bins) at once: ([W, k'], [W, k']) over the kept
    bins, with left-out bins as exact zeros on both sides (they add nothing to PSI or JS)."""
    r = np.asarray(reference, dtype=np.float64)
    q = r / r.sum() if r.sum() > 0 else np.full(r.shape, 1.0 / max(1, r.size))
    n = counts.sum(axis=1, keepdims=True)
    safe_n = np.where(n > 0, n, 1.0)
    keep = (counts > 0) | (q > 0)[None, :]
    p = np.where(n > 0, counts / safe_n, 1.0 / max(1, r.size))
    p = np.where(keep, np.maximum(p, 0.5 / safe_n), 0.0)
    qq = np.where(keep, np.maximum(q, EPS)[None, :], 0.0)
    return p / p.sum(axis=1, keepdims=True), qq / qq.sum(axis=1, keepdims=True)


def proportions(counts: Sequence[float] | np.ndarray, eps: float = EPS) -> np.ndarray:
    """Counts → proportions with every bin floored at ``eps`` and renormalised."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    p = c / total if total > 0 else np.full(c.shape, 1.0 / max(1, c.size))
    p = np.maximum(p, eps)
    return p / p.sum()


# --- scores ---------------------------------------------------------------------------------------------------


def _xlogy_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a · ln(a / b) with 0 where a is 0 (bins left out by the smoothing are 0 on both sides)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(b > 0, b, 1.0)), 0.0)


def _psi_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sum(_xlogy_ratio(p, q) + _xlogy_ratio(q, p), axis=-1)


def _js_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = 0.5 * (p + q)
    div = 0.5 * np.sum(_xlogy_ratio(p, m), axis=-1) + 0.5 * np.sum(_xlogy_ratio(q, m), axis=-1)
    return np.sqrt(np.maximum(0.0, div) / math.log(2.0))


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """PSI of two strictly positive proportion vectors."""
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2) of two strictly positive proportion vectors."""
    m = 0.5 * (p + q)
    div = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    return float(math.sqrt(max(0.0, div) / math.log(2.0)))


def ks_binned(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def linf(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.max(np.abs(p - q)))


_SCORES = {"psi": psi, "js": js_distance, "ks": ks_binned, "linf": linf}


def score(method: str, window_counts: np.ndarray, reference: np.ndarray) -> float:
    """One score of a window's counts against the reference proportions (both over the same bins). The same
    numbers as :func:`scores_of_windows`, with fewer array operations (the device scores every feature once a
    second)."""
    if method not in _SCORES:
        raise ValueError(f"unknown drift method {method!r} (one of {', '.join(METHODS)})")
    c = np.asarray(window_counts, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    n, total = c.sum(), r.sum()
    if n <= 0 or total <= 0:
        return float(scores_of_windows(method, c[None, :], r)[0])
    q = r / total
    if method in ("ks", "linf"):
        return _SCORES[method](c / n, q)
    keep = (c > 0) | (q > 0)
    if not keep.all():
        c, q = c[keep], q[keep]
    p = np.maximum(c / n, 0.5 / n)
    q = np.maximum(q, EPS)
    return _SCORES[method](p / p.sum(), q / q.sum())


def scores_of_windows(method: str, counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """:func:`score` of every row of ``counts`` (windows × bins) against one reference, vectorised."""
    if method not in _SCORES:
        raise ValueError(f"unknown drift method {method!r} (one of {', '.join(METHODS)})")
    c = np.asarray(counts, dtype=np.float64)
    if method in ("ks", "linf"):  # distances of plain proportions: no smoothing needed or wanted
        total = c.sum(axis=1, keepdims=True)
        p = np.where(total > 0, c / np.where(total > 0, total, 1.0), 0.0)
        r = np.asarray(reference, dtype=np.float64)
        d = p - (r / r.sum())[None, :]
        return np.max(np.abs(np.cumsum(d, axis=1) if method == "ks" else d), axis=1)
    p, q = _smoothed_rows(c, reference)
    return _psi_rows(p, q) if method == "psi" else _js_rows(p, q)


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


@dataclass(frozen=True)
class FalseAlarms:
    """Unshifted windows of ``samples`` observations that reached the thresholds in force at that size."""

    samples: int
    warn_at: float
    alert_at: float
    warn_rate: float
    alert_rate: float
    max_score: float
    trials: int


def held_out_false_alarms(reference: Sequence[np.ndarray], reference_rows: int, held_out_bins: Sequence[np.ndarray],
                          method: str, sizes: Sequence[int], warn: float, alert: float, *, trials: int = 200,
                          seed: int = 0, alpha: float = NOISE_ALPHA) -> list[FalseAlarms]:
    """How often unshifted data alarms, measured on rows the reference did not see.

    ``reference[f]`` are feature ``f``'s proportions from ``reference_rows`` rows; ``held_out_bins[f]`` the bin
    of each *other* row of the same sample (rows of one distribution, split before binning). For each window
    size, ``trials`` windows are drawn from the held-out rows without replacement (rows kept together, so
    correlated features stay correlated) and judged like the device judges them: worst feature's score
    against the thresholds in force at that size (:func:`thresholds_at`). Sizes above the held-out row count
    are left out: a window cannot be more unshifted data than there is. Seeded: the same on every machine.

    Unlike resampling the reference itself, the windows differ from the reference by the reference's own
    sampling noise too, which is what a device sees.
    """
    rng = np.random.default_rng(seed)
    held = len(held_out_bins[0]) if held_out_bins else 0
    noise_refs = list(reference)
    out = []
    for n in sizes:
        if n < 1 or n > held:
            continue
        rows = np.stack([rng.choice(held, size=n, replace=False) for _ in range(trials)])
        worst = np.zeros(trials)
        for idx, ref in zip(held_out_bins, reference, strict=True):
            k = len(ref)
            flat = (np.asarray(idx)[rows] + k * np.arange(trials)[:, None]).ravel()
            counts = np.bincount(flat, minlength=k * trials).reshape(trials, k).astype(np.float64)
            worst = np.maximum(worst, scores_of_windows(method, counts, ref))
        warn_at, alert_at = thresholds_at(warn, alert, noise_floor(method, n, reference_rows, noise_refs, alpha))
        out.append(FalseAlarms(int(n), warn_at, alert_at, float(np.mean(worst >= warn_at)),
                               float(np.mean(worst >= alert_at)), float(worst.max()), trials))
    return out


# --- sampling noise -------------------------------------------------------------------------------------------



@functools.lru_cache(maxsize=1024)
def chi2_quantile(dof: int, prob: float) -> float:
    """The ``prob`` quantile of a χ² distribution with ``dof`` degrees of freedom (Wilson–Hilferty: within 1 %
    of the exact value at 0.99, above it further out, so a bound built on it errs towards fewer alarms)."""
    if dof <= 0:
        return 0.0
    z = NormalDist().inv_cdf(prob)
    h = 2.0 / (9.0 * dof)
    return float(dof * max(0.0, 1.0 - h + z * math.sqrt(h)) ** 3)


def noise_floor(method: str, samples: float, reference_rows: float, references: Sequence[np.ndarray],
                alpha: float = NOISE_ALPHA) -> float:
    """The score an *unshifted* window of ``samples`` observations reaches on its worst feature with probability
    at most about ``alpha``, against reference proportions estimated from ``reference_rows`` rows.

    Both the window and the reference are samples of the same distribution, so their difference has the
    variance of a window of ``1 / (1/samples + 1/reference_rows)`` observations. Large-sample laws, with a
    Bonferroni share ``alpha / features`` per feature:

    * PSI ≈ Σ (p − q)² / q, χ² with (non-empty reference bins − 1) degrees of freedom, over the window size;
    * JS distance ≈ sqrt(PSI / (8 ln 2)) (the same χ², JS divergence ≈ χ² / 8 in nats);
    * KS: the Kolmogorov tail P(√n·D > x) ≤ 2·exp(−2x²) (binned KS is smaller than the exact one);
    * L∞: Bernstein's inequality for each bin's share, union over all bins.
    """
    if samples <= 0:
        return math.inf
    inv_n = 1.0 / samples + (1.0 / reference_rows if reference_rows > 0 else 0.0)
    refs = [np.asarray(r, dtype=np.float64) for r in references]
    refs = [r / r.sum() for r in refs if r.sum() > 0]
    live = [int(np.count_nonzero(r > 0)) for r in refs]
    feats = max(1, sum(1 for k in live if k > 1))
    a = alpha / feats
    if method in ("psi", "js"):
        top = max((chi2_quantile(k - 1, 1.0 - a) for k in live), default=0.0) * inv_n
        return top if method == "psi" else math.sqrt(top / (8.0 * math.log(2.0)))
    if method == "ks":
        return math.sqrt(math.log(2.0 / a) / 2.0 * inv_n)
    if method == "linf":
        cells = max(1, sum(live))
        big_l = math.log(2.0 * cells * feats / alpha)
        var = max((float(np.max(r * (1.0 - r))) for r in refs), default=0.25)
        return big_l * inv_n / 3.0 + math.sqrt((big_l * inv_n / 3.0) ** 2 + 2.0 * var * big_l * inv_n)
    raise ValueError(f"unknown drift method {method!r} (one of {', '.join(METHODS)})")


def thresholds_at(warn: float, alert: float, noise: float) -> tuple[float, float]:
    """The (warn, alert) thresholds in force: both scaled up together until warn clears the noise floor."""
    scale = max(1.0, noise / warn) if warn > 0 else 1.0
    return warn * scale, alert * scale
