"""Fairness of predictions: metrics per group, gaps, bootstrap intervals, statistics and plots.

Needs NumPy, SciPy and pandas only; matplotlib loads when a plotting function is first
used, so ``from fmcache import fairness`` stays light.

    from fmcache import fairness
    table = fairness.evaluate(y_true, y_score, {"sex": sex, "age": age},
                              threshold=0.5, convention="paper", n_boot=1000, seed=0)
"""

from __future__ import annotations

import importlib
from typing import Any

# metrics, conventions, thresholds, bootstrap
from fmcache.fairness._bootstrap import auc_over_resamples, percentile_interval, resample_indices
from fmcache.fairness._classification import (
    METRICS,
    binary_cross_entropy,
    expected_calibration_error,
    roc_auc,
    threshold_rates,
)
from fmcache.fairness._conventions import CONVENTIONS, Convention, Gap, fairlearn, fairmedfm, get_convention, paper
from fmcache.fairness._evaluate import COLUMNS, evaluate, evaluate_dice, evaluate_segmentation
from fmcache.fairness._groups import Grouping, encode_groups, intersect_groups
from fmcache.fairness._segmentation import dice_per_sample, iou_per_sample
from fmcache.fairness._thresholds import (
    best_f1_threshold,
    f1_threshold,
    resolve_threshold,
    sensitivity_threshold,
    youden_threshold,
)

__all__ = [
    "COLUMNS",
    "CONVENTIONS",
    "METRICS",
    "Convention",
    "Gap",
    "Grouping",
    "auc_over_resamples",
    "best_f1_threshold",
    "binary_cross_entropy",
    "dice_per_sample",
    "encode_groups",
    "evaluate",
    "evaluate_dice",
    "evaluate_segmentation",
    "expected_calibration_error",
    "f1_threshold",
    "fairlearn",
    "fairmedfm",
    "get_convention",
    "intersect_groups",
    "iou_per_sample",
    "paper",
    "percentile_interval",
    "resample_indices",
    "resolve_threshold",
    "roc_auc",
    "sensitivity_threshold",
    "threshold_rates",
    "youden_threshold",
]

# statistical tests and representation fairness (scikit-learn loads inside the functions)
from fmcache.fairness.representation import (
    AttributeProbeResult,
    TSNEEmbedding,
    attribute_predictability,
    tsne_embedding,
)
from fmcache.fairness.statistics import (
    FriedmanResult,
    NemenyiResult,
    average_ranks,
    cliques,
    critical_difference,
    friedman_test,
    nemenyi,
    rank_table,
    score_matrix,
)

__all__ += [
    "AttributeProbeResult", "FriedmanResult", "NemenyiResult", "TSNEEmbedding",
    "attribute_predictability", "average_ranks", "cliques", "critical_difference",
    "friedman_test", "nemenyi", "rank_table", "score_matrix", "tsne_embedding",
]

# plots: name -> module; matplotlib is imported only when one of them is first used
_LAZY: dict[str, str] = {
    "cd_diagram": "fmcache.fairness.plots",
    "group_bars": "fmcache.fairness.plots",
    "reliability_diagram": "fmcache.fairness.plots",
    "tradeoff_scatter": "fmcache.fairness.plots",
    "tsne_scatter": "fmcache.fairness.plots",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fmcache.fairness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
