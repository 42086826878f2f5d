"""Fairness of predictions: metrics per group, gaps, bootstrap intervals, statistics and plots.

Needs NumPy, SciPy and pandas only; matplotlib loads when a plotting function is first
used, so ``from fmcache import fairness`` stays light.

    from fmcache import fairness
    table = fairness.evaluate(y_true, y_score, {"sex": sex, "age": age},
                              threshold=0.5, convention="paper", n_boot=1000, seed=0)
"""

from __future__ import annotations

from fmcache._lazy import lazy_exports

# evaluation under named conventions; each metric's title and direction
from fmcache.fairness._conventions import (
    CONVENTIONS,
    Convention,
    Gap,
    Metric,
    fairlearn,
    fairmedfm,
    get_convention,
    metric_info,
    paper,
    ranked_metrics,
)
from fmcache.fairness._evaluate import COLUMNS, evaluate, evaluate_dice, evaluate_multiclass, evaluate_segmentation
from fmcache.fairness._segmentation import dice_per_sample, iou_per_sample

__all__ = [
    "COLUMNS",
    "CONVENTIONS",
    "Convention",
    "Gap",
    "Metric",
    "dice_per_sample",
    "evaluate",
    "evaluate_dice",
    "evaluate_multiclass",
    "evaluate_segmentation",
    "fairlearn",
    "fairmedfm",
    "get_convention",
    "iou_per_sample",
    "metric_info",
    "paper",
    "ranked_metrics",
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
    "group_scatter": "fmcache.fairness.plots",
    "reliability_diagram": "fmcache.fairness.plots",
    "tradeoff_scatter": "fmcache.fairness.plots",
    "tsne_scatter": "fmcache.fairness.plots",
}
__all__ += list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
