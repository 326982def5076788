"""The pure drift math against scipy, and its detection power and false-alarm rate on synthetic streams."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import chebyshev, jensenshannon
from scipy.special import rel_entr
from scipy.stats import ks_2samp

from reconciler.drift import stats

RNG_SEED = 7


def _counts(rng: np.random.Generator, k: int) -> np.ndarray:
    c = rng.integers(0, 500, size=k).astype(np.float64)
    c[rng.integers(0, k)] = 0  # an empty bin: exercises the smoothing
    return c


@pytest.mark.parametrize("k", [2, 5, 10, 32])
def test_scores_match_scipy(k: int) -> None:
    rng = np.random.default_rng(RNG_SEED + k)
    for _ in range(20):
        window, ref = _counts(rng, k), _counts(rng, k) + 1
        if k > 2:
            ref[-1] = window[-1] = 0  # a bin empty on both sides: left out by the smoothing
        p, q = stats.smoothed(window, ref)  # the documented smoothing (empty window bin: half an observation)
        assert stats.score("psi", window, ref) == pytest.approx(rel_entr(p, q).sum() + rel_entr(q, p).sum(),
                                                                 rel=1e-9, abs=1e-12)
        assert stats.score("js", window, ref) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-7, abs=1e-9)
        pw, pr = window / window.sum(), ref / ref.sum()
        assert stats.score("linf", window, ref) == pytest.approx(chebyshev(pw, pr), abs=1e-12)


def test_binned_ks_is_scipy_ks_on_the_bins() -> None:
    rng = np.random.default_rng(RNG_SEED)
    ref_x, cur_x = rng.normal(0, 1, 5000), rng.normal(0.3, 1.2, 3000)
    edges = stats.quantile_edges(ref_x, 10)
    ref_b, cur_b = stats.bin_index(ref_x, edges), stats.bin_index(cur_x, edges)
    ours = stats.score("ks", np.bincount(cur_b, minlength=11), np.bincount(ref_b, minlength=11))
    assert ours == pytest.approx(ks_2samp(ref_b, cur_b).statistic, abs=1e-12)
    # and it is a lower bound of the exact KS statistic, close to it with 10 bins
    exact = ks_2samp(ref_x, cur_x).statistic
    assert ours <= exact + 1e-12 and exact - ours < 0.05


def test_quantile_edges_give_equal_mass_and_collapse_ties() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.lognormal(size=10000)
    edges = stats.quantile_edges(x, 10)
    assert len(edges) == 9
    assert np.allclose(stats.bin_counts(x, edges) / x.size, 0.1, atol=0.002)
    assert np.array_equal(edges, np.quantile(x, np.linspace(0, 1, 11)[1:-1], method="lower"))
    assert len(stats.quantile_edges(np.array([0.0, 1.0] * 50), 10)) <= 2  # binary feature: ≤ 3 bins
    with pytest.raises(ValueError, match="bins must be"):
        stats.quantile_edges(x, 1)


def _stream_detect(method: str, ref: np.ndarray, shifted: np.ndarray, warn: float, alert: float,
                   window: int = 1000, step: int = 10) -> int | None:
    """Samples of the shifted stream after which the verdict first reaches Warning (None: never)."""
    edges = [stats.quantile_edges(ref[:, j], 10) for j in range(ref.shape[1])]
    refs = [stats.bin_counts(ref[:, j], e) for j, e in enumerate(edges)]
    w = stats.CountWindow([len(e) + 1 for e in edges], window)
    rng = np.random.default_rng(1)
    warm = rng.normal(0, 1, (window, ref.shape[1]))
    w.add([stats.bin_index(warm[:, j], e) for j, e in enumerate(edges)])
    for start in range(0, len(shifted), step):
        chunk = shifted[start:start + step]
        w.add([stats.bin_index(chunk[:, j], e) for j, e in enumerate(edges)])
        scores = {str(j): stats.score(method, c, r) for j, (c, r) in enumerate(zip(w.counts(), refs, strict=True))}
        warn_at, alert_at = stats.thresholds_at(warn, alert, stats.noise_floor(method, w.n, len(ref), refs))
        v = stats.verdict(scores, w.n, warn=warn_at, alert=alert_at, min_samples=200)
        if v.level in ("Warning", "Alert"):
            return start + step
    return None


@pytest.mark.parametrize("method", ["psi", "js"])
def test_half_sigma_mean_shift_on_one_feature_is_detected_within_1000_samples(method: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    ref = rng.normal(0, 1, (10000, 8))
    shifted = rng.normal(0, 1, (3000, 8))
    shifted[:, 3] += 0.5
    warn, alert = stats.DEFAULT_THRESHOLDS[method]
    n = _stream_detect(method, ref, shifted, warn, alert)
    assert n is not None and n <= 1000, n


def test_class_prior_shift_is_detected_within_1000_samples() -> None:
    rng = np.random.default_rng(RNG_SEED)
    ref_classes = rng.choice(4, size=20000, p=[0.25] * 4)
    ref = stats.category_counts(ref_classes, 4)
    w = stats.CountWindow([5], 1000)
    w.add([rng.choice(4, size=1000, p=[0.25] * 4)])
    shifted = rng.choice(4, size=3000, p=[0.4, 0.2, 0.2, 0.2])
    warn, alert = stats.DEFAULT_THRESHOLDS["linf"]
    detected = None
    for start in range(0, 3000, 10):
        w.add([shifted[start:start + 10]])
        v = stats.verdict({"class": stats.score("linf", w.counts()[0], ref)}, w.n, warn=warn, alert=alert,
                          min_samples=200)
        if v.level != "OK":
            detected = start + 10
            break
    assert detected is not None and detected <= 1000, detected


def test_false_alarm_rate_on_an_unshifted_stream_is_at_most_one_percent() -> None:
    rng = np.random.default_rng(RNG_SEED)
    features = 8
    ref = rng.normal(0, 1, (10000, features))
    edges = [stats.quantile_edges(ref[:, j], 10) for j in range(features)]
    refs = [stats.bin_counts(ref[:, j], e) for j, e in enumerate(edges)]
    windows, alarms = 300, {"psi": 0, "js": 0}
    for _ in range(windows):
        batch = rng.normal(0, 1, (1000, features))
        counts = [stats.bin_counts(batch[:, j], e) for j, e in enumerate(edges)]
        for method in alarms:
            warn, alert = stats.DEFAULT_THRESHOLDS[method]
            worst = max(stats.score(method, c, r) for c, r in zip(counts, refs, strict=True))
            alarms[method] += worst >= warn  # even the warn level stays quiet
    assert all(a / windows <= 0.01 for a in alarms.values()), alarms


def test_held_out_estimate_is_quiet_at_every_window_size_where_the_bare_thresholds_alarm() -> None:
    """The baseline's estimate: windows of held-out rows judged with the thresholds in force at their size."""
    rng = np.random.default_rng(RNG_SEED)
    features = 16
    ref, held = rng.normal(0, 1, (2000, features)), rng.normal(0, 1, (2000, features))
    edges = [stats.quantile_edges(ref[:, j], 10) for j in range(features)]
    props = [stats.bin_counts(ref[:, j], e) / len(ref) for j, e in enumerate(edges)]
    held_bins = [stats.bin_index(held[:, j], e) for j, e in enumerate(edges)]
    sizes = [200, 300, 500, 1000]
    for method in stats.METHODS:
        warn, alert = stats.DEFAULT_THRESHOLDS[method]
        est = stats.held_out_false_alarms(props, len(ref), held_bins, method, sizes, warn, alert, trials=100)
        assert [e.samples for e in est] == sizes
        assert all(e.warn_rate == 0.0 and e.alert_rate == 0.0 for e in est), (method, est)
        assert all(e.warn_at >= warn and e.alert_at / e.warn_at == pytest.approx(alert / warn) for e in est)
        assert est[0].warn_at >= est[-1].warn_at  # the allowance shrinks as the window grows
    # the bare JS threshold alarms on most unshifted windows of 200: what the allowance is for
    windows = np.stack([rng.choice(len(held), 200, replace=False) for _ in range(100)])
    worst = np.max([stats.scores_of_windows("js", np.stack([np.bincount(b[w], minlength=len(r)) for w in windows]), r)
                    for b, r in zip(held_bins, props, strict=True)], axis=0)
    assert np.mean(worst >= 0.1) > 0.5
    # sizes beyond the held-out rows are left out rather than resampled
    assert [e.samples for e in stats.held_out_false_alarms(props, len(ref), [b[:250] for b in held_bins], "psi",
                                                           sizes, 0.1, 0.25, trials=10)] == [200]


@pytest.mark.parametrize("dof", [1, 2, 4, 9, 16, 31, 63])
def test_chi2_quantile_is_close_to_scipy_and_errs_high_in_the_tail(dof: int) -> None:
    from scipy.stats import chi2

    assert stats.chi2_quantile(dof, 0.99) == pytest.approx(chi2.ppf(0.99, dof), rel=0.01)
    for p in (1 - 1e-4, 1 - 1e-6, 1 - 1e-8):
        exact = chi2.ppf(p, dof)
        assert exact <= stats.chi2_quantile(dof, p) <= 1.25 * exact
    assert stats.chi2_quantile(0, 0.99) == 0.0


@pytest.mark.parametrize("method", stats.METHODS)
def test_noise_floor_bounds_unshifted_windows_at_its_nominal_rate(method: str) -> None:
    """Windows and references drawn from one distribution reach the floor for chance level alpha at most about
    alpha of the time (checked where it is measurable, alpha = 5 %), and never at the default 10⁻⁶."""
    rng = np.random.default_rng(RNG_SEED)
    truth = [np.full(10, 0.1), np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05]), np.array([0.7, 0.3])]
    n, m, trials = 300, 3000, 2000
    worst = np.zeros(trials)
    refs = [rng.multinomial(m, t) for t in truth]
    for t, r in zip(truth, refs, strict=True):
        counts = rng.multinomial(n, t, size=trials).astype(np.float64)
        worst = np.maximum(worst, stats.scores_of_windows(method, counts, r / m))
    props = [r / m for r in refs]
    assert np.mean(worst >= stats.noise_floor(method, n, m, props, alpha=0.05)) <= 0.05 + 0.02
    assert np.mean(worst >= stats.noise_floor(method, n, m, props)) == 0.0
    # it grows like 1/n + 1/m for PSI (χ² over the window size) and like its square root for the distances
    ratio = stats.noise_floor(method, 200, 1e12, props) / stats.noise_floor(method, 800, 1e12, props)
    assert ratio == pytest.approx(4.0 if method == "psi" else 2.0, rel=0.02 if method != "linf" else 0.5)


def test_thresholds_in_force_scale_together_and_never_drop_below_the_configured_ones() -> None:
    assert stats.thresholds_at(0.1, 0.25, 0.05) == (0.1, 0.25)
    warn, alert = stats.thresholds_at(0.1, 0.25, 0.3)
    assert warn == pytest.approx(0.3) and alert == pytest.approx(0.75)


def test_smoothing_ignores_bins_empty_on_both_sides_and_counts_an_empty_window_bin_as_half_a_hit() -> None:
    ref = np.array([0.5, 0.3, 0.2, 0.0, 0.0])
    window = np.array([100.0, 60.0, 40.0, 0.0, 0.0])
    assert stats.score("psi", window, ref) == pytest.approx(0.0, abs=1e-12)  # 2 empty classes add nothing
    p, q = stats.smoothed([98.0, 102.0, 0.0], [0.49, 0.49, 0.02])
    assert p[2] == pytest.approx(0.5 / 200.5)  # half an observation out of 200, renormalised
    # a window of 200 missing a 2 % bin: PSI ≈ 0.02 · ln(0.02 / 0.0025) ≈ 0.04, not 0.02 · ln(0.02 / 1e-4) ≈ 0.1
    assert 0.03 < stats.score("psi", [98.0, 102.0, 0.0], [0.49, 0.49, 0.02]) < 0.05


def test_integer_features_get_one_bin_per_value() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.choice([0, 1, 2, 5, 16], size=5000, p=[0.6, 0.1, 0.1, 0.1, 0.1]).astype(np.float64)
    edges = stats.value_edges(x)
    assert edges is not None and edges.tolist() == [1.0, 2.0, 5.0, 16.0]
    counts = stats.bin_counts(x, edges)
    assert counts.tolist() == [float(np.sum(x == v)) for v in (0, 1, 2, 5, 16)]  # each value alone in its bin
    assert stats.bin_index(np.array([3.0, -1.0, 40.0]), edges).tolist() == [2, 0, 4]  # unseen: next value below
    assert stats.value_edges(np.array([0.0, 1.0] * 50)).tolist() == [1.0]  # binary: 2 bins
    assert stats.value_edges(x + 0.5) is None  # not integers
    assert stats.value_edges(np.arange(33.0)) is None  # too many values: quantile bins
    assert stats.value_edges(np.zeros(10)) is None  # constant


def test_count_window_keeps_constant_memory_and_slides() -> None:
    w = stats.CountWindow([3, 2], 100)
    for _ in range(50):
        w.add([np.zeros(37, dtype=np.int64), np.ones(37, dtype=np.int64)])
    assert 90 <= w.n <= 100
    a, b = w.counts()
    assert a[0] == w.n and b[1] == w.n
    assert w._blocks.shape == (10, 5)


def test_decay_window_halves_weight_per_half_life() -> None:
    w = stats.DecayWindow([2], half_life=60.0)
    w.add([np.zeros(100, dtype=np.int64)], now=0.0)
    assert w.n_at(60.0) == pytest.approx(50.0)
    w.add([np.ones(50, dtype=np.int64)], now=60.0)
    assert w.counts()[0] == pytest.approx([50.0, 50.0])


def test_merged_device_windows_equal_one_window_over_all_data() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=3000)
    edges = stats.quantile_edges(x, 10)
    parts = [{"f": stats.bin_counts(x[i:i + 1000], edges)} for i in (0, 1000, 2000)]
    merged = stats.merge_counts(parts)
    assert np.array_equal(merged["f"], stats.bin_counts(x, edges))
    with pytest.raises(ValueError, match="bins"):
        stats.merge_counts([{"f": [1, 2]}, {"f": [1, 2, 3]}])


def test_verdict_needs_the_minimum_sample_count() -> None:
    assert stats.verdict({"a": 0.9}, 50, warn=0.1, alert=0.25, min_samples=200).level == "Insufficient"
    v = stats.verdict({"a": 0.9, "b": 0.12, "c": 0.01}, 500, warn=0.1, alert=0.25, min_samples=200, top_k=2)
    assert v.level == "Alert" and v.worst == (("a", 0.9), ("b", 0.12))
    assert stats.verdict({"a": 0.12}, 500, warn=0.1, alert=0.25, min_samples=200).level == "Warning"
    assert stats.verdict({"a": 0.01}, 500, warn=0.1, alert=0.25, min_samples=200).level == "OK"
