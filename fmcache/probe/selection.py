"""Model selection on the validation split: each head's score under a named criterion.

Selection picks a grid point, never a seed: the seeds of a grid point are repeats, and the
point is judged by its mean criterion over them (:func:`select_point`).

Criteria (higher is better):

``auc``              overall validation AUC
``worst_group_auc``  the lowest validation AUC among the attribute's groups
``tradeoff``         overall AUC minus the AUC gap between groups (max - min)

For a multi-class label (scores (K, n, C)) AUC is the macro one-vs-rest AUC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmcache.errors import FmcacheError
from fmcache.fairness._classification import roc_auc
from fmcache.fairness.representation import ovr_auc

CRITERIA = ("auc", "worst_group_auc", "tradeoff")


def validation_scores(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Per head (rows of ``scores``, (K, n), or (K, n, C) for a multi-class label): val AUC,
    worst-group AUC and AUC gap.

    Unknown labels (-1) and, for the group figures, unknown groups are left out. A group
    with one class has no AUC and makes the group figures NaN.
    """
    known = y >= 0
    y, scores = y[known], scores[:, known]
    rows = []
    for s in scores:
        g = groups[known]
        per_group = [_auc(y[g == c], s[g == c]) for c in np.unique(g[g >= 0])]
        ok = len(per_group) >= 2 and not np.isnan(per_group).any()
        rows.append({
            "val_auc": _auc(y, s),
            "val_worst_group_auc": float(np.min(per_group)) if ok else np.nan,
            "val_auc_delta": float(np.max(per_group) - np.min(per_group)) if ok else np.nan,
        })
    return pd.DataFrame(rows)


def criterion_value(table: pd.DataFrame, criterion: str) -> pd.Series:
    """The criterion for each row of a ``validation_scores`` table (NaN where undefined)."""
    if criterion == "auc":
        return table["val_auc"]
    if criterion == "worst_group_auc":
        return table["val_worst_group_auc"]
    if criterion == "tradeoff":
        return table["val_auc"] - table["val_auc_delta"]
    raise FmcacheError(f"unknown selection criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def select(values: pd.Series) -> int | None:
    """Position of the best value (first on ties); None when every value is NaN."""
    v = values.to_numpy(dtype=float)
    if np.isnan(v).all():
        return None
    return int(np.nanargmax(v))


def select_point(criterion: pd.Series, points: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """Choose a grid point by its mean criterion over its repeats (init seeds).

    ``points`` holds each row's grid point (its hyperparameters, without the seed): rows
    with equal values are repeats of one point. Returns each row's point mean (NaN-aware: a
    point whose repeats are all NaN is NaN and never chosen) and a mask of the chosen
    point's rows (all False when no point has a value). Ties go to the point listed first,
    as in :func:`select`.
    """
    if points.shape[1]:
        ids = points.groupby(list(points.columns), sort=False, dropna=False).ngroup().to_numpy()
    else:  # nothing to tell rows apart: all repeats of one point
        ids = np.zeros(len(points), int)
    means = criterion.groupby(ids).transform("mean")
    pos = select(means)
    chosen = np.zeros(len(ids), bool) if pos is None else ids == ids[pos]
    return means, chosen


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return np.nan
    if s.ndim == 2:
        return float(ovr_auc(y, s))  # NaN when a class is absent
    return float(roc_auc(y, s))
