"""fairness metrics against scikit-learn, fairlearn, the FairMedFM reference rules and hand-computed cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, log_loss, precision_recall_curve, roc_auc_score, roc_curve

from fmcache import fairness
from fmcache.fairness import _classification, _thresholds
from fmcache.errors import FmcacheError, MetricInputError


def _data(n: int = 600, n_groups: int = 3, seed: int = 0, decimals: int | None = 2):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, n)
    y = (rng.random(n) < 0.3 + 0.1 * g).astype(int)
    s = 1 / (1 + np.exp(-(1.5 * y - 0.7 + 0.3 * g + rng.normal(0, 1, n))))
    if decimals is not None:  # ties, as real model outputs have
        s = np.round(s, decimals)
    return y, s, g


def _v(df: pd.DataFrame, metric: str, group: str = "overall", **where) -> float:
    sel = (df.metric == metric) & (df.group == group)
    for k, val in where.items():
        sel &= df[k] == val
    rows = df[sel]
    assert len(rows) == 1, (metric, group, where, len(rows))
    return float(rows.value.iloc[0])


def _ref_ece(y, s, n_bins=10):
    """ECE from scikit-learn's calibration_curve (uniform bins) weighted by right-closed bin counts."""
    prob_true, prob_pred = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    # negating turns numpy's [a, b) bins into (a, b] with 0 in the first, as calibration_curve bins
    counts = np.histogram(-s, bins=-edges[::-1])[0][::-1]
    counts = counts[counts > 0]
    return float(np.sum(counts / s.size * np.abs(prob_true - prob_pred)))


def _ref_fairmedfm_ece(pred_probs, labels, num_bins=10):
    """The FairMedFM reference's ECE: pandas.cut over the scores' range, groupby drops empty bins."""
    bin_ids = pd.cut(pred_probs, num_bins, labels=False, retbins=False)
    df = pd.DataFrame({"p": pred_probs, "y": labels, "bin": bin_ids})
    agg = df.groupby("bin").agg(p=("p", "mean"), y=("y", "mean"), size=("p", "size"))
    return float(np.average(np.abs(agg.p - agg.y).values, weights=(agg["size"] / df.shape[0]).values))


def _ref_best_f1(y, s):
    """The FairMedFM reference's find_threshold."""
    p, r, t = precision_recall_curve(y, s)
    f1 = np.multiply(2, np.divide(np.multiply(p, r), np.add(r, p) + 1e-8))
    return t[np.where(f1 == max(f1))][0]


# ------------------------------------------------------------------ scikit-learn and fairlearn


def test_per_group_values_match_sklearn():
    y, s, g = _data()
    df = fairness.evaluate(y, s, g, threshold=0.4)
    for code in range(3):
        m = g == code
        name = str(code)
        assert _v(df, "auc", name) == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-12)
        assert _v(df, "acc", name) == pytest.approx(accuracy_score(y[m], s[m] >= 0.4), abs=1e-12)
        assert _v(df, "bce", name) == pytest.approx(log_loss(y[m], s[m], labels=[0, 1]), abs=1e-12)
        assert _v(df, "ece", name) == pytest.approx(_ref_ece(y[m], s[m]), abs=1e-12)
    assert _v(df, "auc") == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert _v(df, "ece") == pytest.approx(_ref_ece(y, s), abs=1e-12)
    assert _v(df, "bce") == pytest.approx(log_loss(y, s), abs=1e-12)


def test_ece_bin_edges_and_clipped_bce_match_sklearn():
    s = np.array([0.0, 0.1, 0.2, 0.30000000000000004, 0.5, 0.9, 1.0, 1.0, 0.05, 0.7])
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0, 0, 1])
    assert _classification.expected_calibration_error(y, s) == pytest.approx(_ref_ece(y, s), abs=1e-12)
    assert _classification.binary_cross_entropy(y, s) == pytest.approx(log_loss(y, s), abs=1e-9)
    assert _classification.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_metricframe_by_group_and_parity_differences():
    fl = pytest.importorskip("fairlearn.metrics")  # not in the [test] extra everywhere
    y, s, g = _data(n=900, n_groups=4, seed=1)
    yhat = (s >= 0.5).astype(int)
    mf = fl.MetricFrame(
        metrics={
            "acc": accuracy_score,
            "tpr": fl.true_positive_rate,
            "fpr": fl.false_positive_rate,
            "tnr": fl.true_negative_rate,
            "selection_rate": fl.selection_rate,
        },
        y_true=y,
        y_pred=yhat,
        sensitive_features=g,
    )
    auc_mf = fl.MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=s, sensitive_features=g)
    df = fairness.evaluate(y, s, g, convention="fairlearn")
    for code, row in mf.by_group.iterrows():
        for metric, expected in row.items():
            assert _v(df, metric, str(code)) == pytest.approx(expected, abs=1e-12)
        assert _v(df, "auc", str(code)) == pytest.approx(auc_mf.by_group[code], abs=1e-12)
    for metric, expected in mf.overall.items():
        assert _v(df, metric) == pytest.approx(expected, abs=1e-12)
    kw = {"sensitive_features": g}
    assert _v(df, "dp", "gap") == pytest.approx(fl.demographic_parity_difference(y, yhat, **kw), abs=1e-12)
    assert _v(df, "eqodds", "gap") == pytest.approx(fl.equalized_odds_difference(y, yhat, **kw), abs=1e-12)
    assert _v(df, "eqopp", "gap") == pytest.approx(fl.equal_opportunity_difference(y, yhat, **kw), abs=1e-12)
    paper = fairness.evaluate(y, s, g)
    assert _v(paper, "dp", "gap") == pytest.approx(fl.demographic_parity_difference(y, yhat, **kw), abs=1e-12)
    expected = (mf.by_group.tpr.max() - mf.by_group.tpr.min() + mf.by_group.fpr.max() - mf.by_group.fpr.min()) / 2
    assert _v(paper, "eqodds", "gap") == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ every gap by hand


def _hand_case():
    # group a: y 0 0 1 1 1, group b: y 0 1 1 1
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.8, 0.9, 0.2, 0.55, 0.7, 0.9])
    g = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    return y, s, g


@pytest.mark.parametrize(
    ("convention", "eqodds"),
    [("paper", 0.5 * (1 / 3) + 0.5 * 0.5), ("fairlearn", max(1 / 3, 0.5)), ("fairmedfm", 1 - (1 / 3 + 0.5) / 2)],
)
def test_every_gap_by_hand(convention, eqodds):
    y, s, g = _hand_case()
    df = fairness.evaluate(y, s, g, group_names=["a", "b"], convention=convention)
    # a: AUC 5/6, TPR 2/3, FPR 1/2, acc 3/5, selection 3/5; b: AUC 1, TPR 1, FPR 0, acc 1, selection 3/4
    assert _v(df, "auc", "a") == pytest.approx(5 / 6)
    assert _v(df, "tnr", "a") == pytest.approx(0.5)
    assert _v(df, "auc_delta", "gap") == pytest.approx(1 / 6)
    assert _v(df, "auc_min", "gap") == pytest.approx(5 / 6)
    assert _v(df, "acc_delta", "gap") == pytest.approx(0.4)
    assert _v(df, "eqopp", "gap") == pytest.approx(1 / 3)
    assert _v(df, "dp", "gap") == pytest.approx(0.15)
    assert _v(df, "eqodds", "gap") == pytest.approx(eqodds)
    assert _v(df, "auc") == pytest.approx(16 / 18)
    assert _v(df, "auc_es", "gap") == pytest.approx((16 / 18) / (1 + 1 / 12))
    if convention != "fairmedfm":
        # unit bins: every score alone in its bin except 0.55 / 0.6 (bin 5) and the two 0.9s
        assert _v(df, "ece", "a") == pytest.approx(1.6 / 5)
        assert _v(df, "ece", "b") == pytest.approx(1.05 / 4)
        assert _v(df, "ece_delta", "gap") == pytest.approx(1.6 / 5 - 1.05 / 4)
        assert _v(df, "ece") == pytest.approx(1.75 / 9)
    assert _v(df, "threshold") == 0.5
    gap_rows = df[df.group == "gap"]
    assert _v(df, "auc_es_fairclip", "gap") == pytest.approx((16 / 18) / (1 + 1 / 18 + 1 / 9))
    # group b is perfect (AUC 1, accuracy 1): no skewness, and the row says why
    for skew in ("auc_skew", "acc_skew"):
        row = df[(df.metric == skew) & (df.group == "gap")].iloc[0]
        assert np.isnan(row.value) and "perfect score" in row.reason
    gap_rows = df[df.group == "gap"]
    assert set(gap_rows.metric) == {"auc_delta", "auc_min", "acc_delta", "ece_delta", "eqodds", "eqopp", "dp", "auc_es",
                                    "auc_es_fairclip", "auc_skew", "acc_skew"}
    assert (gap_rows.n == 9).all() and (gap_rows.convention == convention).all()


@pytest.mark.parametrize("convention", ["paper", "fairmedfm", "fairlearn"])
def test_skewness_and_fairclip_equity_scaling_by_hand(convention):
    # group a: y 0 0 1 1, AUC 3/4, accuracy 2/4; group b: y 0 0 0 1 1, AUC 5/6, accuracy 4/5
    y = np.array([0, 0, 1, 1, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.8, 0.2, 0.45, 0.7, 0.65, 0.9])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    df = fairness.evaluate(y, s, g, group_names=["a", "b"], convention=convention)
    assert (_v(df, "auc", "a"), _v(df, "auc", "b")) == pytest.approx((3 / 4, 5 / 6))
    assert (_v(df, "acc", "a"), _v(df, "acc", "b")) == pytest.approx((1 / 2, 4 / 5))
    assert _v(df, "auc") == pytest.approx(16 / 20) == roc_auc_score(y, s)
    assert _v(df, "auc_skew", "gap") == pytest.approx((1 / 4) / (1 / 6))
    assert _v(df, "acc_skew", "gap") == pytest.approx((1 / 2) / (1 / 5))
    # FairCLIP: 0.8 / (1 + |3/4 - 0.8| + |5/6 - 0.8|); the paper's: 0.8 / (1 + std) with std = 1/24
    assert _v(df, "auc_es_fairclip", "gap") == pytest.approx(48 / 65)
    assert _v(df, "auc_es", "gap") == pytest.approx(0.8 / (25 / 24))
    for name in ("auc_skew", "acc_skew", "auc_es_fairclip"):
        info = fairness.metric_info(name, convention)
        assert info.higher_is_better is (name == "auc_es_fairclip")


def test_new_gaps_get_bootstrap_intervals_around_their_values():
    y, s, g = _data(n=400, n_groups=3, seed=3)
    df = fairness.evaluate(y, s, g, n_boot=200, seed=1)
    for name in ("auc_skew", "acc_skew", "auc_es_fairclip"):
        row = df[(df.metric == name) & (df.group == "gap")].iloc[0]
        assert np.isfinite([row.value, row.ci_low, row.ci_high]).all(), name
        assert row.ci_low <= row.value <= row.ci_high, name
    # three groups: skew is the worst group's miss over the best group's
    miss = 1 - np.array([_v(df, "auc", str(c)) for c in range(3)])
    assert _v(df, "auc_skew", "gap") == pytest.approx(miss.max() / miss.min())


def test_ranked_metrics_are_the_papers_rank_figure():
    for conv in ("paper", "fairmedfm", "fairlearn"):
        ranked = {(m.name, group) for m, group in fairness.ranked_metrics(conv)}
        assert ranked == {("auc", "overall"), ("ece", "overall"), ("eqodds", "gap"), ("auc_es", "gap"),
                          ("auc_delta", "gap"), ("ece_delta", "gap")}
    directions = {m.name: m.higher_is_better for m, _ in fairness.ranked_metrics("fairmedfm")}
    assert directions["eqodds"] is True and directions["ece"] is False


# ------------------------------------------------------------------ fairmedfm quirks


def test_best_f1_tie_goes_to_the_lowest_threshold_then_strict_cut():
    # F1 ties at t=0.1 (p=1/2, r=1) and t=0.9 (p=1, r=1/2): the reference takes the first, 0.1
    y = np.array([1, 0, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9])
    assert _ref_best_f1(y, s) == 0.1
    assert _thresholds.best_f1_threshold(y, s) == 0.1
    df = fairness.evaluate(y, s, np.zeros(4, int), convention="fairmedfm", threshold="best_f1_on_test")
    assert _v(df, "threshold") == 0.1
    # strict >: the positive scored exactly 0.1 is predicted negative
    assert _v(df, "tpr") == 0.5
    assert _v(df, "selection_rate") == 0.75


@pytest.mark.parametrize("seed", range(6))
def test_best_f1_threshold_matches_reference_code(seed):
    y, s, _ = _data(n=300, seed=seed, decimals=1 + seed % 3)
    assert _thresholds.best_f1_threshold(y, s) == _ref_best_f1(y, s)


def test_strict_threshold_only_under_fairmedfm():
    y = np.array([0, 1, 1, 0])
    s = np.array([0.5, 0.5, 0.7, 0.2])
    g = np.zeros(4, int)
    assert _v(fairness.evaluate(y, s, g), "selection_rate") == 0.75
    assert _v(fairness.evaluate(y, s, g, convention="fairmedfm"), "selection_rate") == 0.25


def test_fairmedfm_ece_spans_the_scored_range_and_drops_empty_bins():
    y = np.array([1, 0, 0])
    s = np.array([0.51, 0.52, 0.59])
    # [0.51, 0.59] in 10 bins: each score alone, 7 empty bins dropped
    assert _classification.expected_calibration_error(y, s, convention="fairmedfm") == pytest.approx((0.49 + 0.52 + 0.59) / 3)
    # on [0, 1] all three share bin (0.5, 0.6]
    assert _classification.expected_calibration_error(y, s) == pytest.approx(abs(np.mean(s) - 1 / 3))
    # all scores equal: pandas widens the range by 0.1% and all fall in one bin
    same = np.full(4, 0.3)
    assert _classification.expected_calibration_error(np.array([0, 1, 1, 0]), same, convention="fairmedfm") == pytest.approx(0.2)


@pytest.mark.parametrize("seed", range(4))
def test_fairmedfm_ece_matches_reference_code_per_group_rebinned(seed):
    y, s, g = _data(n=500, seed=seed, decimals=3 if seed % 2 else None)
    df = fairness.evaluate(y, s, g, convention="fairmedfm")
    assert _v(df, "ece") == pytest.approx(_ref_fairmedfm_ece(s, y), abs=1e-12)
    for code in range(3):
        m = g == code
        assert _v(df, "ece", str(code)) == pytest.approx(_ref_fairmedfm_ece(s[m], y[m]), abs=1e-12)


def test_per_group_ece_is_rebinned_over_the_groups_own_range():
    y = np.array([1, 0, 0, 0, 1])
    s = np.array([0.51, 0.52, 0.59, 0.05, 0.95])
    g = np.array([0, 0, 0, 1, 1])
    df = fairness.evaluate(y, s, g, convention="fairmedfm")
    assert _v(df, "ece", "0") == pytest.approx((0.49 + 0.52 + 0.59) / 3)


def test_fairmedfm_bce_floors_the_log_at_minus_100():
    y = np.array([1, 0])
    s = np.array([0.0, 0.0])
    assert _classification.binary_cross_entropy(y, s, convention="fairmedfm") == pytest.approx(50.0)
    assert _classification.binary_cross_entropy(y, s) == pytest.approx(log_loss(y, s, labels=[0, 1]))


# ------------------------------------------------------------------ thresholds


def test_validation_thresholds():
    yv, sv, _ = _data(n=400, seed=3, decimals=2)
    fpr, tpr, thr = roc_curve(yv, sv, drop_intermediate=False)
    t_ref = thr[np.argmax(tpr - fpr)]
    t = _thresholds.youden_threshold(yv, sv)
    assert np.array_equal(sv >= t, sv >= t_ref) and np.array_equal(sv > t, sv >= t_ref)
    t90 = _thresholds.sensitivity_threshold(yv, sv, 0.9)
    tpr90 = (sv[yv == 1] >= t90).mean()
    assert tpr90 >= 0.9
    above = np.unique(sv[sv > t90])[1]  # one distinct score fewer falls short of the target
    assert (sv[yv == 1] >= above).mean() < 0.9
    f1s = [2 * ((sv >= c) & (yv == 1)).sum() / ((sv >= c).sum() + (yv == 1).sum()) for c in np.unique(sv)]
    t_f1 = _thresholds.f1_threshold(yv, sv)
    best = 2 * ((sv >= t_f1) & (yv == 1)).sum() / ((sv >= t_f1).sum() + (yv == 1).sum())
    assert best == pytest.approx(max(f1s))
    y, s, g = _data(n=200, seed=4)
    df = fairness.evaluate(y, s, g, threshold="val:sensitivity:0.9", y_val=yv, score_val=sv)
    assert _v(df, "threshold", n=400) == t90


def test_threshold_errors():
    y, s, g = _data(n=50)
    with pytest.raises(MetricInputError, match="fairmedfm"):
        fairness.evaluate(y, s, g, threshold="best_f1_on_test")
    with pytest.raises(MetricInputError, match="y_val"):
        fairness.evaluate(y, s, g, threshold="val")
    with pytest.raises(MetricInputError, match="unknown threshold"):
        fairness.evaluate(y, s, g, threshold="youden")
    with pytest.raises(MetricInputError, match="one class"):
        fairness.evaluate(y, s, g, threshold="val:f1", y_val=np.zeros(5, int), score_val=np.full(5, 0.2))
    with pytest.raises(FmcacheError, match="did you mean"):
        fairness.evaluate(y, s, g, convention="fairmedfn")


# ------------------------------------------------------------------ degenerate inputs


def test_one_class_group_empty_group_and_constant_scores_give_nan_with_reason():
    y = np.array([0, 1, 0, 1, 1, 1, 0, 1])
    s = np.array([0.2, 0.8, 0.3, 0.6, 0.7, 0.9, 0.4, 0.4])
    g = np.array([0, 0, 0, 0, 1, 1, 2, 2])  # group 1 all positive, group 2 constant scores, group 3 empty
    df = fairness.evaluate(y, s, g, group_names=["a", "b", "c", "d"])
    row = df[(df.metric == "auc") & (df.group == "b")].iloc[0]
    assert np.isnan(row.value) and "'b' has one class" in row.reason
    assert "no negatives" in df[(df.metric == "fpr") & (df.group == "b")].reason.iloc[0]
    assert _v(df, "tpr", "b") == 1.0  # defined: the group has positives
    assert "equal" in df[(df.metric == "auc") & (df.group == "c")].reason.iloc[0]
    empty = df[df.group == "d"]
    assert empty.value.isna().all() and (empty.n == 0).all() and empty.reason.str.contains("empty").all()
    gap = df[(df.metric == "auc_delta")].iloc[0]
    assert np.isnan(gap.value) and "'b' has one class" in gap.reason
    assert (df[df.value.notna()].reason == "").all()
    const = fairness.evaluate(np.array([0, 1, 0, 1]), np.full(4, 0.5), np.array([0, 0, 1, 1]))
    assert np.isnan(_v(const, "auc")) and np.isnan(_v(const, "auc_es", "gap"))


def test_a_single_group_gives_nan_gaps_not_zero():
    y, s, _ = _data(n=40)
    df = fairness.evaluate(y, s, np.zeros(40, int))
    gaps = df[df.group == "gap"]
    assert gaps.value.isna().all() and gaps.reason.str.contains("a gap needs two").all()
    unknown = fairness.evaluate(y, s, np.full(40, -1), n_boot=20)
    assert unknown[unknown.group == "gap"].value.isna().all()
    assert _v(unknown, "auc") == pytest.approx(roc_auc_score(y, s)) and _v(unknown, "n_unknown") == 40


def test_unknown_groups_and_labels_are_excluded_and_counted():
    y, s, g = _data(n=300)
    g = g.copy()
    g[:30] = -1
    y = y.copy()
    y[30:40] = -1
    df = fairness.evaluate(y, s, g)
    assert _v(df, "n_unknown") == 30 and _v(df, "n_unlabelled") == 10
    known = (g >= 0) & (y >= 0)
    m = known & (g == 1)
    assert _v(df, "auc", "1") == pytest.approx(roc_auc_score(y[m], s[m]))
    assert df[(df.metric == "auc") & (df.group == "overall")].n.iloc[0] == 290
    assert _v(df, "auc") == pytest.approx(roc_auc_score(y[y >= 0], s[y >= 0]))


def test_bad_scores_and_shapes_raise_clear_errors():
    y, s, g = _data(n=20)
    bad = s.copy()
    bad[[3, 7]] = np.nan
    bad[11] = np.inf
    with pytest.raises(MetricInputError, match=r"3 NaN or infinite values, at rows 3, 7, 11"):
        fairness.evaluate(y, bad, g)
    with pytest.raises(MetricInputError, match=r"probabilities in \[0, 1\]: 1 values"):
        fairness.evaluate(y, np.r_[s[:-1], 1.5], g)
    with pytest.raises(MetricInputError, match="19 values but there are 20"):
        fairness.evaluate(y, s, g[:-1])
    with pytest.raises(MetricInputError, match="samples but the scores have"):
        fairness.evaluate(y[:-1], s, g)
    with pytest.raises(MetricInputError, match="multi-class"):
        fairness.evaluate(np.r_[y[:-1], 2], s, g)
    multi = np.column_stack([s, s])
    multi[4, 1] = np.nan
    with pytest.raises(MetricInputError, match=r"\(row 4, 'b'\)"):
        fairness.evaluate(np.column_stack([y, y]), multi, g, label_names=["a", "b"])


# ------------------------------------------------------------------ shapes: labels, classes, attributes


def _no_label(df):
    return df.drop(columns=["label"]).reset_index(drop=True)


def test_multilabel_gives_one_block_per_label():
    y, s, g = _data(n=300)
    y2, s2, _ = _data(n=300, seed=9)
    df = fairness.evaluate(np.column_stack([y, y2]), np.column_stack([s, s2]), g, label_names=["edema", "effusion"])
    assert list(df.label.unique()) == ["edema", "effusion"]
    pd.testing.assert_frame_equal(_no_label(df[df.label == "effusion"]), _no_label(fairness.evaluate(y2, s2, g)))


def test_multiclass_is_one_vs_rest():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(300, 3))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 3, 300)
    g = rng.integers(0, 2, 300)
    df = fairness.evaluate(y, proba, g)
    assert list(df.label.unique()) == ["0", "1", "2"]
    assert _v(df, "auc", label="2") == pytest.approx(roc_auc_score(y == 2, proba[:, 2]))
    pd.testing.assert_frame_equal(
        _no_label(df[df.label == "1"]), _no_label(fairness.evaluate((y == 1).astype(int), proba[:, 1], g))
    )


def test_several_attributes_and_their_intersection():
    rng = np.random.default_rng(2)
    n = 800
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n), 2)
    sex = rng.integers(0, 2, n)
    age = rng.integers(0, 2, n)
    age[:20] = -1
    df = fairness.evaluate(
        y, s, {"sex": sex, "age": age}, group_names={"sex": ["male", "female"], "age": ["young", "old"]}, intersect=("sex", "age")
    )
    assert list(df.attribute.unique()) == ["sex", "age", "sex&age"]
    joint = df[df.attribute == "sex&age"]
    assert [x for x in joint[joint.metric == "auc"].group] == ["overall", "male&young", "male&old", "female&young", "female&old"]
    m = (sex == 1) & (age == 1)
    assert _v(joint, "auc", "female&old") == pytest.approx(roc_auc_score(y[m], s[m]))
    assert _v(joint, "n_unknown") == 20
    codes = np.where(age < 0, -1, sex * 2 + age)
    direct = fairness.evaluate(y, s, codes, group_names=["male&young", "male&old", "female&young", "female&old"])
    pd.testing.assert_frame_equal(joint.drop(columns="attribute").reset_index(drop=True), direct.drop(columns="attribute"))


def test_string_groups_and_several_conventions():
    y, s, g = _data(n=120)
    names = np.array(["x", "y", "z"])[g]
    df = fairness.evaluate(y, s, {"site": names}, convention=["paper", "fairlearn"])
    assert set(df.group) >= {"x", "y", "z", "overall", "gap"}
    assert list(df.convention.unique()) == ["paper", "fairlearn"]


def test_table_schema():
    y, s, g = _data(n=100)
    df = fairness.evaluate(y, s, g)
    assert tuple(df.columns) == fairness.COLUMNS
    assert (df.label == "").all() and (df.attribute == "").all()
    assert df.ci_low.isna().all() and df.ci_high.isna().all()
    assert df.n.dtype == np.int64 and df.value.dtype == np.float64
    for m in _classification.METRICS:
        assert {"overall", "0", "1", "2"} <= set(df[df.metric == m].group)


# ------------------------------------------------------------------ segmentation


def test_dice_iou_and_empty_vs_empty():
    truth = np.zeros((3, 4, 4), int)
    pred = np.zeros((3, 4, 4), int)
    truth[0, :2, :2] = 1  # 4 px
    pred[0, :2, :1] = 1  # 2 px, both inside
    truth[1, :, :] = 2
    pred[1, :2, :] = 2  # class 1 absent in both -> 1; class 2: 2*8/(16+8)
    assert fairness.dice_per_sample(truth, pred, n_classes=1)[0] == pytest.approx(2 * 2 / 6)
    dice = fairness.dice_per_sample(truth, pred)
    assert dice == pytest.approx([(2 * 2 / 6 + 1) / 2, (1 + 16 / 24) / 2, 1.0])
    assert fairness.dice_per_sample(truth, pred, empty="skip")[1] == pytest.approx(16 / 24)
    assert np.isnan(fairness.dice_per_sample(truth, pred, empty="skip")[2])
    assert fairness.iou_per_sample(truth, pred)[1] == pytest.approx((1 + 8 / 16) / 2)
    ragged = fairness.dice_per_sample([truth[0], truth[1][:3]], [pred[0], pred[1][:3]])
    assert ragged[0] == pytest.approx(dice[0])


def test_dice_and_iou_equal_monais_on_random_masks():
    """MONAI's DiceMetric / MeanIoU on one-hot masks, background left out: the same per-class values,
    and its ignore_empty=False rule (1 where truth and prediction are both empty) is ours "one"."""
    import torch
    from monai.metrics import compute_dice, compute_iou

    rng = np.random.default_rng(0)
    n_classes = 3
    truth = rng.integers(0, n_classes + 1, size=(12, 16, 16))
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, n_classes + 1, size=truth.shape))
    truth[0][truth[0] == 2] = 0  # class 2 absent from the truth: counted 0 unless absent from the prediction too
    truth[1][truth[1] == 3] = 0
    pred[1][pred[1] == 3] = 0  # class 3 absent from both

    def one_hot(m):
        return torch.nn.functional.one_hot(torch.as_tensor(m), n_classes + 1).permute(0, 3, 1, 2).float()

    for ours, theirs in ((fairness.dice_per_sample, compute_dice), (fairness.iou_per_sample, compute_iou)):
        per_class = theirs(one_hot(pred), one_hot(truth), include_background=False, ignore_empty=False).numpy()
        assert per_class[1, 2] == 1.0 and per_class[0, 1] == 0.0  # the empty cases above, as MONAI scores them
        np.testing.assert_allclose(ours(truth, pred, n_classes=n_classes), per_class.mean(axis=1), rtol=1e-6)


def test_segmentation_gaps_by_hand():
    dice = np.array([0.9, 0.7, 0.6, 0.6, 0.5])
    g = np.array([0, 0, 1, 1, -1])
    df = fairness.evaluate_dice(dice, {"sex": g}, group_names=["m", "f"], iou=dice**2)
    # DSC_m 0.8, DSC_f 0.6, overall 0.66
    assert _v(df, "dsc", "m") == pytest.approx(0.8)
    assert _v(df, "dsc") == pytest.approx(0.66)
    assert _v(df, "dsc_delta", "gap") == pytest.approx(0.2)
    assert _v(df, "dsc_skew", "gap") == pytest.approx(0.4 / 0.2)
    assert _v(df, "dsc_std", "gap") == pytest.approx(0.1)
    assert _v(df, "dsc_es", "gap") == pytest.approx(0.66 / 1.1)
    assert _v(df, "iou", "f") == pytest.approx(0.36)
    assert _v(df, "n_unknown") == 1
    perfect = fairness.evaluate_dice(np.array([1.0, 1.0, 0.5]), np.array([0, 0, 1]))
    row = perfect[perfect.metric == "dsc_skew"].iloc[0]
    assert np.isnan(row.value) and row.reason


def test_evaluate_segmentation_from_masks():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (6, 8, 8))
    pred = np.where(rng.random((6, 8, 8)) < 0.8, truth, 0)
    g = np.array([0, 0, 0, 1, 1, 1])
    df = fairness.evaluate_segmentation(truth, pred, g, iou=True)
    dice = fairness.dice_per_sample(truth, pred)
    assert _v(df, "dsc", "1") == pytest.approx(dice[3:].mean())
    assert {"dsc", "iou", "dsc_delta", "dsc_skew", "dsc_std", "dsc_es"} <= set(df.metric)


# ------------------------------------------------------------------ import surface


def test_import_pulls_in_neither_matplotlib_torch_nor_jax():
    code = (
        "import sys; from fmcache import fairness; print(sorted(m for m in ('matplotlib', 'torch', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
