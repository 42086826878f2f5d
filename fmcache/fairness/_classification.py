"""Per-group classification metrics of one binary label, for the data and for bootstrap resamples.

Everything is computed from a (b, n) index matrix whose columns are laid out by
(group, label) cell: row 0 of the point estimate is the data itself in that order, and
a bootstrap block is b stratified resamples. Per-cell counts are column-slice sums,
ECE bins and AUC ranks are per-row histograms (bincount), so b resamples cost a few
vector operations per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fmcache.errors import MetricInputError
from fmcache.fairness._bootstrap import auc_from_codes, dense_codes, strata_layout
from fmcache.fairness._conventions import Convention, get_convention

#: Per-group and overall metric names, in table order.
METRICS = ("auc", "acc", "ece", "bce", "tpr", "fpr", "tnr", "selection_rate")
THRESHOLD_METRICS = ("acc", "tpr", "fpr", "tnr", "selection_rate")

_EPS = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------- per-sample pieces


def sample_losses(y: np.ndarray, s: np.ndarray, guard: str) -> np.ndarray:
    """Per-sample binary cross-entropy under a convention's guard against log(0)."""
    if guard == "clip_eps":
        p = np.clip(s, _EPS, 1.0 - _EPS)
        return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    with np.errstate(divide="ignore"):
        return -(y * np.maximum(np.log(s), -100.0) + (1.0 - y) * np.maximum(np.log1p(-s), -100.0))


def unit_bins(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each score among n_bins equal-width bins of [0, 1], right-closed, 0 in bin 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], s, side="left")


def range_edges(lo: np.ndarray, hi: np.ndarray, n_bins: int) -> np.ndarray:
    """pandas.cut's edges for n_bins equal-width bins over [lo, hi], per row: (..., n_bins + 1)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    equal = lo == hi
    lo_w = np.where(equal, lo - np.where(lo != 0, 0.001 * np.abs(lo), 0.001), lo)
    hi_w = np.where(equal, hi + np.where(hi != 0, 0.001 * np.abs(hi), 0.001), hi)
    edges = np.linspace(lo_w, hi_w, n_bins + 1, axis=-1)
    edges[..., 0] -= np.where(equal, 0.0, (hi - lo) * 0.001)
    return edges


def range_bins(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each score of each row of s (b, m) over that row's own [min, max] (pandas.cut rule)."""
    edges = range_edges(s.min(axis=-1), s.max(axis=-1), n_bins)
    # right-closed bins: a score's bin is the number of inner edges strictly below it
    return (s[..., None] > edges[..., None, 1:-1]).sum(axis=-1)


def _binned_ece(bins: np.ndarray, diff: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row bin sums of (s - y), (b, n_bins), and ECE = sum_b |sum_b (s - y)| / m per row."""
    b, m = bins.shape
    keys = (np.arange(b, dtype=np.int64)[:, None] * n_bins + bins).ravel()
    sums = np.bincount(keys, weights=diff.ravel(), minlength=b * n_bins).reshape(b, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums, np.abs(sums).sum(axis=1) / m


# ---------------------------------------------------------------- one binary label x one attribute


@dataclass
class PreparedBlock:
    """One binary label scored against one attribute, laid out for resampling."""

    convention: Convention
    threshold: float
    n_groups: int  # known groups; index n_groups collects the unknown
    score: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    loss: np.ndarray
    diff: np.ndarray
    unit_bin: np.ndarray | None
    codes_group: np.ndarray
    n_codes_group: list[int]
    codes_all: np.ndarray
    n_codes_all: int
    strata: np.ndarray  # group * 2 + label of each sample
    order: np.ndarray
    bounds: np.ndarray  # cell k = group * 2 + label holds columns bounds[k]:bounds[k + 1]

    def cell_sizes(self, g: int) -> tuple[int, int]:
        """(negatives, positives) of group g."""
        b = self.bounds
        return int(b[2 * g + 1] - b[2 * g]), int(b[2 * g + 2] - b[2 * g + 1])


def prepare_block(
    y: np.ndarray, score: np.ndarray, group: np.ndarray, n_groups: int, convention: Convention, threshold: float
) -> PreparedBlock:
    """Lay out one label's labelled samples by (group, label); `group` is -1 for unknown."""
    s = np.asarray(score, dtype=np.float64)
    yb = np.asarray(y).astype(bool)
    gi = np.where(group < 0, n_groups, group).astype(np.int64)
    strata = gi * 2 + yb
    order, bounds = strata_layout(strata, 2 * (n_groups + 1))
    codes_group = np.zeros(s.size, dtype=np.int64)
    n_codes_group = []
    for g in range(n_groups):
        members = order[bounds[2 * g] : bounds[2 * g + 2]]
        codes, k = dense_codes(s[members])
        codes_group[members] = codes
        n_codes_group.append(k)
    codes_all, n_codes_all = dense_codes(s)
    yf = yb.astype(np.float64)
    return PreparedBlock(
        convention=convention,
        threshold=float(threshold),
        n_groups=n_groups,
        score=s,
        label=yb,
        pred=convention.predict(s, threshold),
        loss=sample_losses(yf, s, convention.bce_guard),
        diff=s - yf,
        unit_bin=unit_bins(s, convention.n_bins) if convention.ece_bins == "unit" else None,
        codes_group=codes_group,
        n_codes_group=n_codes_group,
        codes_all=codes_all,
        n_codes_all=n_codes_all,
        strata=strata,
        order=order,
        bounds=bounds,
    )


def block_stats(block: PreparedBlock, idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every metric for each row of idx (b, n): per group (b, G) and overall (b,)."""
    conv, k = block.convention, block.convention.n_bins
    b = idx.shape[0]
    G = block.n_groups
    per = {m: np.full((b, G), np.nan) for m in METRICS}
    tp_all = np.zeros(b)
    fp_all = np.zeros(b)
    loss_all = np.zeros(b)
    bin_sums_all = np.zeros((b, k))
    for g in range(G + 1):
        lo, mid, hi = block.bounds[2 * g], block.bounds[2 * g + 1], block.bounds[2 * g + 2]
        m = hi - lo
        if m == 0:
            continue
        rg = idx[:, lo:hi]
        n_neg, n_pos = mid - lo, hi - mid
        pred = block.pred[rg]
        fp = pred[:, :n_neg].sum(axis=1, dtype=np.float64)
        tp = pred[:, n_neg:].sum(axis=1, dtype=np.float64)
        loss = block.loss[rg].sum(axis=1)
        diff = block.diff[rg]
        if conv.ece_bins == "unit":
            sums, ece = _binned_ece(block.unit_bin[rg], diff, k)
            bin_sums_all += sums
        else:
            _, ece = _binned_ece(range_bins(block.score[rg], k), diff, k)
        tp_all += tp
        fp_all += fp
        loss_all += loss
        if g == G:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            per["acc"][:, g] = (tp + n_neg - fp) / m
            per["tpr"][:, g] = tp / n_pos if n_pos else np.nan
            per["fpr"][:, g] = fp / n_neg if n_neg else np.nan
            per["tnr"][:, g] = (n_neg - fp) / n_neg if n_neg else np.nan
            per["selection_rate"][:, g] = (tp + fp) / m
        per["bce"][:, g] = loss / m
        per["ece"][:, g] = ece
        if n_neg and n_pos:
            positive = np.r_[np.zeros(n_neg, bool), np.ones(n_pos, bool)]
            per["auc"][:, g] = auc_from_codes(block.codes_group[rg], positive, block.n_codes_group[g])
    n = idx.shape[1]
    n_pos_all = int(block.label.sum())
    n_neg_all = n - n_pos_all
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = {
            "acc": (tp_all + n_neg_all - fp_all) / n,
            "tpr": tp_all / n_pos_all if n_pos_all else np.full(b, np.nan),
            "fpr": fp_all / n_neg_all if n_neg_all else np.full(b, np.nan),
            "tnr": (n_neg_all - fp_all) / n_neg_all if n_neg_all else np.full(b, np.nan),
            "selection_rate": (tp_all + fp_all) / n,
            "bce": loss_all / n,
        }
    if n == 0:
        overall = {m: np.full(b, np.nan) for m in METRICS}
        return per, overall
    if conv.ece_bins == "unit":
        overall["ece"] = np.abs(bin_sums_all).sum(axis=1) / n
    else:
        overall["ece"] = _binned_ece(range_bins(block.score[idx], k), block.diff[idx], k)[1]
    if n_pos_all and n_neg_all:
        positive = block.label[idx[0]]  # labels are fixed per column
        overall["auc"] = auc_from_codes(block.codes_all[idx], positive, block.n_codes_all)
    else:
        overall["auc"] = np.full(b, np.nan)
    if math.isnan(block.threshold):
        for m in THRESHOLD_METRICS:
            per[m][:] = np.nan
            overall[m][:] = np.nan
    return per, overall


# ---------------------------------------------------------------- single-array metrics


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise MetricInputError(f"y_true and y_score must be 1-D of the same length; got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise MetricInputError("y_true must hold 0 and 1 only")
    if not np.isfinite(s).all() or s.min(initial=0.0) < 0 or s.max(initial=1.0) > 1:
        raise MetricInputError("y_score must be finite probabilities in [0, 1]")
    return y.astype(np.float64), s


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve, AUC = P(s+ > s-) + 1/2 P(s+ = s-).

    NaN when y_true has one class or all scores are equal (a constant score ranks nothing).
    """
    y, s = _check(y_true, y_score)
    codes, k = dense_codes(s)
    return float(auc_from_codes(codes[None, :], y.astype(bool), k)[0]) if 0 < y.sum() < y.size else math.nan


def expected_calibration_error(y_true: np.ndarray, y_score: np.ndarray, *, convention: str = "paper") -> float:
    """ECE = sum_b (n_b / n) |mean_b(s) - mean_b(y)| over 10 equal-width bins.

    Under ``paper`` / ``fairlearn`` the bins split [0, 1] (scikit-learn's calibration_curve,
    uniform strategy): the paper's formula has no bins, so this binned reading is an
    interpretation. Under ``fairmedfm`` they span [min(s), max(s)] as pandas.cut does.
    Empty bins contribute nothing.
    """
    conv = get_convention(convention)
    y, s = _check(y_true, y_score)
    if s.size == 0:
        return math.nan
    bins = unit_bins(s, conv.n_bins)[None, :] if conv.ece_bins == "unit" else range_bins(s[None, :], conv.n_bins)
    return float(_binned_ece(bins, (s - y)[None, :], conv.n_bins)[1][0])


def binary_cross_entropy(y_true: np.ndarray, y_score: np.ndarray, *, convention: str = "paper") -> float:
    """BCE = -mean(y log s + (1 - y) log(1 - s)).

    ``paper`` / ``fairlearn`` clip s to [eps, 1 - eps] (scikit-learn log_loss); ``fairmedfm``
    floors each log at -100 (torch.nn.BCELoss).
    """
    y, s = _check(y_true, y_score)
    return float(sample_losses(y, s, get_convention(convention).bce_guard).mean()) if s.size else math.nan


def threshold_rates(y_true: np.ndarray, y_score: np.ndarray, threshold: float, *, convention: str = "paper") -> dict[str, float]:
    """Accuracy, TPR, FPR, TNR and selection rate at a threshold.

    yhat = 1 if s >= t (``paper``, ``fairlearn``) or s > t (``fairmedfm``);
    acc = mean(yhat = y), tpr = TP / P, fpr = FP / N, tnr = TN / N, selection_rate = mean(yhat).
    A rate whose denominator is 0 is NaN.
    """
    y, s = _check(y_true, y_score)
    yhat = get_convention(convention).predict(s, threshold)
    p, n = y.sum(), y.size - y.sum()
    tp = float((yhat & (y == 1)).sum())
    fp = float((yhat & (y == 0)).sum())
    nan = math.nan
    return {
        "acc": (tp + n - fp) / y.size if y.size else nan,
        "tpr": tp / p if p else nan,
        "fpr": fp / n if n else nan,
        "tnr": (n - fp) / n if n else nan,
        "selection_rate": (tp + fp) / y.size if y.size else nan,
    }
