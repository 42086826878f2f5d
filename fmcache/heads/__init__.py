"""Heads trained on cached features, many at once.

A head type is a record of pure functions (``HeadType``: init, loss, predict); ``HEADS``
names them all. ``fit_stack`` trains K heads of one type together, stacked along a
leading axis and sharing every minibatch; ``predict_stack`` scores features with them.

    from fmcache.heads import fit_stack, predict_stack
    fit = fit_stack("groupdro", X, y, groups, {"lr": [1e-4, 2.5e-4], "label": 0})
    scores = fit.predict(X_test)                      # (K, n) P(label = 1)
"""

from __future__ import annotations

from fmcache.heads.registry import HEADS
from fmcache.heads.train import (
    FitResult,
    cell_counts,
    fit_stack,
    get_head,
    predict_stack,
)
from fmcache.heads.types import Batch, HeadSpec, HeadType
from fmcache.heads.zeroshot import class_prototypes, zeroshot_params

__all__ = [
    "HEADS",
    "Batch",
    "FitResult",
    "HeadSpec",
    "HeadType",
    "cell_counts",
    "class_prototypes",
    "fit_stack",
    "get_head",
    "predict_stack",
    "zeroshot_params",
]
