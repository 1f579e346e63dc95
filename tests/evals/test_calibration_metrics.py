"""Calibration metrics, bootstrap CIs and the reliability plot, against hand-computed values."""

import itertools

import numpy as np
import pytest

from align_jax.bootstrap import bootstrap_ci
from align_jax.evals import calibration_metrics as cm
from align_jax.evals.reliability_plot import save_reliability_diagram


# --- ECE / MCE / reliability table -------------------------------------------------------

def test_constructed_table_with_accuracy_equal_to_confidence_has_zero_ece():
    # Each bin's accuracy equals its (single) confidence value: 0/2, 1/4, 1/2, 3/4, 3/3.
    conf = [0.0] * 2 + [0.25] * 4 + [0.5] * 2 + [0.75] * 4 + [1.0] * 3
    corr = [0, 0] + [1, 0, 0, 0] + [1, 0] + [1, 1, 0, 1] + [1, 1, 1]
    for n_bins in (4, 10, 15):
        assert cm.expected_calibration_error(conf, corr, n_bins=n_bins) == 0.0
        assert cm.maximum_calibration_error(conf, corr, n_bins=n_bins) == 0.0


def test_hand_written_table_gives_hand_computed_ece_and_mce():
    # 5 bins of width 0.2, bins are [lo, hi) and the last one is closed at 1.0.
    conf = [0.1, 0.1] + [0.5] * 4 + [0.9, 1.0, 0.8, 0.9]
    corr = [0, 1] + [1, 1, 0, 0] + [1, 1, 0, 1]
    # bin 0: acc .5 conf .1 gap .4 (n=2); bin 2: gap 0 (n=4); bin 4: acc .75 conf .9 gap .15 (n=4)
    table = cm.reliability_table(conf, corr, n_bins=5)
    np.testing.assert_array_equal(table.count, [2, 0, 4, 0, 4])
    np.testing.assert_allclose(table.mean_confidence[[0, 2, 4]], [0.1, 0.5, 0.9])
    np.testing.assert_allclose(table.accuracy[[0, 2, 4]], [0.5, 0.5, 0.75])
    assert np.isnan(table.accuracy[1]) and np.isnan(table.mean_confidence[3])
    np.testing.assert_allclose(table.lower, [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(table.upper, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert cm.expected_calibration_error(conf, corr, n_bins=5) == pytest.approx((2 * 0.4 + 4 * 0.15) / 10)
    assert cm.maximum_calibration_error(conf, corr, n_bins=5) == pytest.approx(0.4)
    assert table.rows()[4] == pytest.approx(
        {"lower": 0.8, "upper": 1.0, "count": 4, "mean_confidence": 0.9, "accuracy": 0.75})


def test_bin_edges_are_left_closed_at_decimal_boundaries():
    # 0.6 must land in [0.6, 0.8), not in [0.4, 0.6) (np.linspace puts the edge at 0.6000000000000001).
    table = cm.reliability_table([0.2, 0.4, 0.6, 0.8], [1, 1, 1, 1], n_bins=5)
    np.testing.assert_array_equal(table.count, [0, 1, 1, 1, 1])


def test_synthetic_calibrated_data_has_small_ece_and_miscalibrated_matches_closed_form():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=200_000)
    calibrated = rng.uniform(size=conf.shape) < conf
    assert cm.expected_calibration_error(conf, calibrated) < 0.01
    assert cm.expected_calibration_error(conf, calibrated, scheme="equal_mass") < 0.01
    # P(correct | c) = c^2, so ECE -> E[c - c^2] = 1/2 - 1/3 (up to binning and noise).
    over = rng.uniform(size=conf.shape) < conf**2
    assert cm.expected_calibration_error(conf, over) == pytest.approx(1 / 6, abs=0.01)
    # The worst gap c - c^2 is 1/4 at c = 1/2.
    assert cm.maximum_calibration_error(conf, over) == pytest.approx(0.25, abs=0.02)


def test_ece_sampling_floor_matches_the_binomial_closed_form():
    # One bin, confidence 0.5, N = 4: hits ~ Binomial(4, 0.5), E|hits - 2| = 12/16, ECE = that / 4.
    floor = cm.ece_sampling_floor(np.full(4, 0.5), n_bins=1, n_draws=40_000, seed=1)
    assert floor == pytest.approx(0.1875, abs=0.004)
    # Two bins (0.2 and 0.8, 3 examples each): the floor is the sum of both bins' E|hits - 3c| / 6.
    conf = np.array([0.2] * 3 + [0.8] * 3)
    ks = np.arange(4)
    pmf = np.array([1, 3, 3, 1]) * 0.2 ** ks * 0.8 ** (3 - ks)  # Binomial(3, 0.2)
    expected = 2 * np.sum(pmf * np.abs(ks - 0.6)) / 6
    assert cm.ece_sampling_floor(conf, n_bins=2, n_draws=40_000, seed=2) == pytest.approx(expected, abs=0.004)
    # Certain confidences never miss, and the floor shrinks like 1/sqrt(N).
    assert cm.ece_sampling_floor(np.array([0.0, 1.0, 1.0]), n_draws=50) == 0.0
    small = cm.ece_sampling_floor(np.full(100, 0.3), n_draws=2000)
    large = cm.ece_sampling_floor(np.full(1600, 0.3), n_draws=2000)
    assert large == pytest.approx(small / 4, rel=0.1)
    with pytest.raises(ValueError, match="n_draws"):
        cm.ece_sampling_floor(np.full(3, 0.5), n_draws=0)


@pytest.mark.parametrize("n", [100, 103, 15, 1000])
def test_equal_mass_bins_have_equal_counts(n):
    rng = np.random.default_rng(n)
    conf = rng.beta(5, 1, size=n)  # skewed: equal-width bins would be very unequal
    table = cm.reliability_table(conf, rng.uniform(size=n) < 0.5, n_bins=10 if n != 15 else 15,
                                 scheme="equal_mass")
    assert table.count.sum() == n
    assert table.count.max() - table.count.min() <= 1
    assert table.lower[0] == 0.0 and table.upper[-1] == 1.0
    np.testing.assert_array_equal(table.lower[1:], table.upper[:-1])
    # Every bin's mean confidence lies within its bounds.
    assert np.all((table.mean_confidence >= table.lower) & (table.mean_confidence <= table.upper))


def test_equal_mass_needs_enough_examples():
    with pytest.raises(ValueError, match="at least n_bins"):
        cm.reliability_table([0.1, 0.2], [1, 0], n_bins=3, scheme="equal_mass")


# --- Brier, accuracy ---------------------------------------------------------------------

def test_brier_hand_computed_and_closed_form():
    assert cm.brier_score([0.9, 0.2, 0.6], [1, 0, 0]) == pytest.approx((0.01 + 0.04 + 0.36) / 3)
    # Constant confidence p with a fraction q correct: q (1-p)^2 + (1-q) p^2.
    p, q, n = 0.7, 0.3, 1000
    corr = np.arange(n) < q * n
    assert cm.brier_score(np.full(n, p), corr) == pytest.approx(q * (1 - p) ** 2 + (1 - q) * p**2)
    assert cm.brier_score([1.0, 0.0], [True, False]) == 0.0
    assert cm.accuracy([1, 0, 1, 1]) == 0.75


# --- AUROC -------------------------------------------------------------------------------

def _brute_force_auroc(conf, corr):
    pos = [c for c, y in zip(conf, corr) if y]
    neg = [c for c, y in zip(conf, corr) if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 60 + seed * 13
    conf = np.round(rng.uniform(size=n), 1)  # rounding makes many ties
    corr = rng.uniform(size=n) < conf
    assert cm.auroc(conf, corr) == pytest.approx(_brute_force_auroc(conf, corr), abs=1e-12)


def test_auroc_perfect_constant_and_reversed():
    corr = [1, 1, 1, 0, 0]
    assert cm.auroc([0.9, 0.8, 0.7, 0.2, 0.1], corr) == 1.0
    assert cm.auroc([0.5] * 5, corr) == 0.5
    assert cm.auroc([0.1, 0.2, 0.3, 0.8, 0.9], corr) == 0.0
    with pytest.raises(ValueError, match="both correct and wrong"):
        cm.auroc([0.2, 0.9], [1, 1])


# --- report and input errors -------------------------------------------------------------

def test_report_carries_binning_and_matches_the_functions():
    conf = [0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.9, 1.0, 0.8, 0.9]
    corr = [0, 1, 1, 1, 0, 0, 1, 1, 0, 1]
    report = cm.calibration_report(conf, corr, n_bins=5, scheme="equal_width")
    d = report.to_dict()
    assert (d["scheme"], d["n_bins"], d["n"]) == ("equal_width", 5, 10)
    assert d["ece"] == pytest.approx(0.14) and d["mce"] == pytest.approx(0.4)
    assert d["accuracy"] == 0.6 and d["auroc"] == pytest.approx(_brute_force_auroc(conf, corr))
    assert cm.calibration_report([0.9, 0.8], [1, 1], n_bins=2).auroc is None
    assert cm.calibration_report(conf, corr, n_bins=5, scheme="equal_mass").scheme == "equal_mass"


@pytest.mark.parametrize(
    "conf, corr, match",
    [
        ([], [], "empty"),
        ([0.5, 1.2], [1, 0], r"\[0, 1\]"),
        ([-0.1], [1], r"\[0, 1\]"),
        ([0.5, float("nan")], [1, 0], "NaN"),
        ([0.5, 0.5], [1], "length mismatch"),
        ([0.5], [2], "bool or 0/1"),
    ],
)
def test_bad_inputs_raise_clear_errors(conf, corr, match):
    with pytest.raises(ValueError, match=match):
        cm.calibration_report(conf, corr)


def test_unknown_scheme_and_bad_n_bins():
    with pytest.raises(ValueError, match="unknown bin scheme"):
        cm.expected_calibration_error([0.5], [1], scheme="quantile")
    with pytest.raises(ValueError, match="n_bins"):
        cm.expected_calibration_error([0.5], [1], n_bins=0)


# --- bootstrap ---------------------------------------------------------------------------

def _mean(x):
    return float(np.mean(x))


def test_bootstrap_ci_contains_point_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 10_000):
        x = (rng.uniform(size=n) < 0.7).astype(float)
        point, low, high = bootstrap_ci(lambda a: a.mean(-1), x, vectorized=True, seed=3)
        assert point == pytest.approx(x.mean())
        assert low <= point <= high
        # Independent check: normal-approximation width 2 * 1.96 * sqrt(p (1 - p) / n).
        p = x.mean()
        assert high - low == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.2)
        widths.append(high - low)
    assert widths[1] < widths[0] / 5


def test_bootstrap_vectorized_equals_loop_and_is_seeded():
    rng = np.random.default_rng(2)
    conf = rng.uniform(size=200)
    corr = rng.uniform(size=200) < conf
    brier_vec = lambda c, y: np.mean((c - y) ** 2, axis=-1)  # noqa: E731
    a = bootstrap_ci(cm.brier_score, conf, corr, n_resamples=200, seed=7)
    b = bootstrap_ci(brier_vec, conf, corr, n_resamples=200, seed=7, vectorized=True)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert a == bootstrap_ci(cm.brier_score, conf, corr, n_resamples=200, seed=7)
    assert a != bootstrap_ci(cm.brier_score, conf, corr, n_resamples=200, seed=8)
    ece = bootstrap_ci(cm.expected_calibration_error, conf, corr, n_resamples=100)
    assert ece.low <= ece.high


def test_bootstrap_input_errors():
    with pytest.raises(ValueError, match="same leading length"):
        bootstrap_ci(cm.brier_score, np.ones(3) / 2, np.ones(4))
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(_mean, np.array([]))
    with pytest.raises(ValueError, match="confidence_level"):
        bootstrap_ci(_mean, np.ones(3), confidence_level=95)
    with pytest.raises(ValueError, match="must return shape"):
        bootstrap_ci(_mean, np.ones(3), vectorized=True)


# --- plot --------------------------------------------------------------------------------

def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.beta(4, 1.5, size=2000)
    corr = rng.uniform(size=conf.shape) < conf**1.5
    path = save_reliability_diagram(conf, corr, tmp_path / "rel.png", n_bins=10, title="synthetic")
    data = (tmp_path / "rel.png").read_bytes()
    assert path == str(tmp_path / "rel.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="length mismatch"):
        save_reliability_diagram(conf, corr[:-1], tmp_path / "bad.png")
