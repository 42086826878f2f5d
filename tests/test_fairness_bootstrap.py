"""Bootstrap intervals: vectorised resample statistics against looped scikit-learn on the same indices."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from fmcache import fairness
from fmcache.fairness import _bootstrap, _classification
from fmcache.errors import MetricInputError


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    y = (rng.random(n) < 0.4).astype(int)
    s = np.round(1 / (1 + np.exp(-(1.2 * y - 0.5 + 0.4 * g + rng.normal(0, 1, n)))), 2)
    return y, s, g


def _row(df, metric, group="overall"):
    return df[(df.metric == metric) & (df.group == group)].iloc[0]


def test_vectorised_auc_matches_looped_sklearn_on_the_same_indices():
    y, s, g = _data(400)
    idx = _bootstrap.resample_indices(g * 2 + y, n_boot=300, seed=7)
    looped = np.array([roc_auc_score(y[i], s[i]) for i in idx])
    np.testing.assert_allclose(_bootstrap.auc_over_resamples(y, s, idx), looped, rtol=0, atol=1e-12)
    # any index matrix, not only stratified ones (the class balance then varies per row)
    free = np.random.default_rng(1).integers(0, 400, (50, 400))
    looped = np.array([roc_auc_score(y[i], s[i]) for i in free])
    np.testing.assert_allclose(_bootstrap.auc_over_resamples(y, s, free), looped, rtol=0, atol=1e-12)


def test_stratification_keeps_every_cell_count_and_is_seeded():
    y, _, g = _data(301)
    strata = g * 2 + y
    idx = _bootstrap.resample_indices(strata, n_boot=200, seed=3)
    assert idx.shape == (200, 301)
    expected = np.bincount(strata, minlength=4)
    counts = np.stack([np.bincount(strata[row], minlength=4) for row in idx])
    assert (counts == expected).all()
    assert np.array_equal(idx, _bootstrap.resample_indices(strata, n_boot=200, seed=3))
    assert not np.array_equal(idx, _bootstrap.resample_indices(strata, n_boot=200, seed=4))
    assert _bootstrap.resample_indices(strata, seed=0).shape[0] == 1000  # the default


def test_table_intervals_match_a_looped_reference():
    y, s, g = _data(500, seed=2)
    n_boot, ci = 200, 0.9
    df = fairness.evaluate(y, s, {"sex": g}, n_boot=n_boot, seed=11, ci=ci, threshold=0.45)
    # evaluate draws label 0 / attribute 0 from seed (11, 0, 0), stratified by group x label
    idx = _bootstrap.resample_indices(g * 2 + y, n_boot=n_boot, seed=(11, 0, 0))
    q = [50 * (1 - ci), 50 * (1 + ci)]
    auc1, acc_all, dp, ece0 = [], [], [], []
    for i in idx:
        yi, si, gi = y[i], s[i], g[i]
        m = gi == 1
        auc1.append(roc_auc_score(yi[m], si[m]))
        acc_all.append(accuracy_score(yi, si >= 0.45))
        rates = [(si[gi == k] >= 0.45).mean() for k in (0, 1)]
        dp.append(abs(rates[0] - rates[1]))
        ece0.append(_classification.expected_calibration_error(yi[gi == 0], si[gi == 0]))
    for (metric, group), samples in {
        ("auc", "1"): auc1,
        ("acc", "overall"): acc_all,
        ("dp", "gap"): dp,
        ("ece", "0"): ece0,
    }.items():
        row = _row(df, metric, group)
        lo, hi = np.percentile(samples, q)
        assert row.ci_low == pytest.approx(lo, abs=1e-12), metric
        assert row.ci_high == pytest.approx(hi, abs=1e-12), metric


def test_intervals_shrink_with_n_and_cover_the_estimate():
    widths = []
    for n in (400, 6400):
        y, s, g = _data(n, seed=5)
        df = fairness.evaluate(y, s, g, n_boot=200, seed=0)
        for metric, group in [("auc", "overall"), ("auc_delta", "gap"), ("ece", "1")]:
            row = _row(df, metric, group)
            assert row.ci_low <= row.value <= row.ci_high or metric == "auc_delta"
        widths.append(_row(df, "auc").ci_high - _row(df, "auc").ci_low)
    assert widths[1] < widths[0] / 2.5  # ~ 1 / sqrt(16) = 1/4


def test_every_metric_and_gap_gets_an_interval_under_each_convention():
    y, s, g = _data(300, seed=6)
    df = fairness.evaluate(y, s, g, n_boot=100, convention=["paper", "fairmedfm", "fairlearn"], threshold=0.5)
    rows = df[~df.metric.isin(["threshold", "n_unknown", "n_unlabelled"])]
    assert rows.ci_low.notna().all() and (rows.ci_low <= rows.ci_high).all()
    assert df[df.metric == "threshold"].ci_low.isna().all()


def test_nan_values_keep_nan_intervals():
    y = np.array([0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.9, 0.3, 0.6, 0.7, 0.4, 0.8])
    g = np.array([0, 0, 0, 0, 1, 1, 1])
    df = fairness.evaluate(y, s, g, n_boot=50)
    row = _row(df, "auc", "1")
    assert np.isnan(row.value) and np.isnan(row.ci_low) and np.isnan(row.ci_high)


def test_segmentation_bootstrap():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 2, 2000)
    dice = np.clip(rng.normal(0.8 - 0.1 * g, 0.1), 0, 1)
    df = fairness.evaluate_dice(dice, g, n_boot=200, seed=1)
    idx = _bootstrap.resample_indices(g, n_boot=200, seed=(1, 0, 0))
    looped = [dice[i][g[i] == 1].mean() for i in idx]
    row = _row(df, "dsc", "1")
    assert row.ci_low == pytest.approx(np.percentile(looped, 2.5), abs=1e-12)
    assert row.ci_high == pytest.approx(np.percentile(looped, 97.5), abs=1e-12)
    assert _row(df, "dsc_delta", "gap").ci_low < 0.1 < _row(df, "dsc_delta", "gap").ci_high


def test_bad_bootstrap_arguments():
    y, s, g = _data(50)
    with pytest.raises(MetricInputError):
        fairness.evaluate(y, s, g, n_boot=-1)
    with pytest.raises(MetricInputError):
        fairness.evaluate(y, s, g, n_boot=10, ci=1.5)
