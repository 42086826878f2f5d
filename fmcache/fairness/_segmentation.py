"""Per-sample Dice and IoU, and their per-group means over bootstrap resamples."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

from fmcache.errors import MetricInputError

EmptyRule = Literal["one", "skip"]

SEGMENTATION_METRICS = ("dsc", "iou", "nsd")


def _as_list(masks: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray):
        if masks.ndim < 2:
            raise MetricInputError(
                f"{name} must be masks of shape (n, ...) or a list of per-sample masks; got shape {masks.shape}"
            )
        return list(masks)
    return [np.asarray(m) for m in masks]


def _overlaps(
    y_true: np.ndarray | Sequence[np.ndarray], y_pred: np.ndarray | Sequence[np.ndarray], n_classes: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample and class: |A and B|, |A|, |B|, each (n, C)."""
    truth, pred = _as_list(y_true, "y_true"), _as_list(y_pred, "y_pred")
    if len(truth) != len(pred):
        raise MetricInputError(f"y_true has {len(truth)} masks but y_pred has {len(pred)}")
    for i, (t, p) in enumerate(zip(truth, pred)):
        if t.shape != p.shape:
            raise MetricInputError(f"sample {i}: true mask shape {t.shape} differs from predicted {p.shape}")
    if n_classes is None:
        n_classes = max([1] + [int(max(t.max(initial=0), p.max(initial=0))) for t, p in zip(truth, pred)])
    classes = np.arange(1, n_classes + 1)
    inter = np.zeros((len(truth), n_classes))
    size_t = np.zeros_like(inter)
    size_p = np.zeros_like(inter)
    # masks may differ in shape between samples (3D volumes), so this loop is over samples
    for i, (t, p) in enumerate(zip(truth, pred)):
        t = t.astype(np.int64).ravel()
        p = p.astype(np.int64).ravel()
        both = np.where(t == p, t, 0)
        inter[i] = np.bincount(both, minlength=n_classes + 1)[classes]
        size_t[i] = np.bincount(t, minlength=n_classes + 1)[classes]
        size_p[i] = np.bincount(p, minlength=n_classes + 1)[classes]
    return inter, size_t, size_p


def _average(per_class: np.ndarray, empty: np.ndarray, rule: EmptyRule) -> np.ndarray:
    if rule == "one":
        return np.where(empty, 1.0, per_class).mean(axis=1)
    if rule != "skip":
        raise MetricInputError(f"empty must be 'one' or 'skip'; got {rule!r}")
    kept = np.where(empty, np.nan, per_class)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" is the documented NaN
        return np.nanmean(kept, axis=1)


def dice_per_sample(
    y_true: np.ndarray | Sequence[np.ndarray],
    y_pred: np.ndarray | Sequence[np.ndarray],
    *,
    n_classes: int | None = None,
    empty: EmptyRule = "one",
) -> np.ndarray:
    """Dice of each sample, averaged over foreground classes.

    DSC_c = 2 |A_c and B_c| / (|A_c| + |B_c|) for class c (label value c in 1..C; 0 is
    background; a boolean mask is class 1), then the mean over classes.

    Empty vs empty: when class c is absent from both the truth and the prediction,
    ``empty="one"`` (default) counts DSC_c = 1 (the prediction is right that nothing is
    there); ``empty="skip"`` leaves the class out of that sample's mean (NaN when every
    class is absent).

    Parameters
    ----------
    y_true, y_pred : array (n, ...) or list of n arrays
        Label maps (int) or boolean masks; per-sample shapes may differ (3D volumes).
    n_classes : int, optional
        Number of foreground classes; default the largest label seen.
    empty : {"one", "skip"}

    Returns
    -------
    numpy.ndarray, shape (n,)
    """
    inter, a, b = _overlaps(y_true, y_pred, n_classes)
    denom = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return _average(2.0 * inter / denom, denom == 0, empty)


def iou_per_sample(
    y_true: np.ndarray | Sequence[np.ndarray],
    y_pred: np.ndarray | Sequence[np.ndarray],
    *,
    n_classes: int | None = None,
    empty: EmptyRule = "one",
) -> np.ndarray:
    """IoU (Jaccard) of each sample, IoU_c = |A_c and B_c| / |A_c or B_c|, averaged over classes.

    Classes, inputs and the empty-vs-empty rule are those of `dice_per_sample`.
    """
    inter, a, b = _overlaps(y_true, y_pred, n_classes)
    union = a + b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return _average(inter / union, union == 0, empty)


def group_means(values: np.ndarray, idx: np.ndarray, bounds: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of values per group (b, G) and overall (b,) for each row of idx (b, n).

    Columns of idx are laid out by group (group n_groups = unknown, in the overall only).
    """
    drawn = values[idx]
    per = np.full((idx.shape[0], n_groups), np.nan)
    for g in range(n_groups):
        lo, hi = bounds[g], bounds[g + 1]
        if hi > lo:
            per[:, g] = drawn[:, lo:hi].mean(axis=1)
    overall = drawn.mean(axis=1) if idx.shape[1] else np.full(idx.shape[0], np.nan)
    return per, overall
