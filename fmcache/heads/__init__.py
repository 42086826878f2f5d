"""Heads trained on cached features, many at once.

A head type is a record of pure functions (``HeadType``: init, loss, predict) and of the
facts the sweep needs (grids, target gap, text, solvers); ``HEADS`` names them all, and
``register_head`` adds one's own. ``fit_stack`` trains K heads of one type together, stacked along a
leading axis and sharing every minibatch; ``predict_stack`` scores features with them.

    from fmcache.heads import fit_stack, predict_stack
    fit = fit_stack("groupdro", X, y, groups, {"lr": [1e-4, 2.5e-4], "label": 0})
    scores = fit.predict(X_test)                      # (K, n) P(label = 1)

JAX loads on first use of these names, so reading a run's summary needs no JAX.
"""

from __future__ import annotations

from fmcache._lazy import lazy_exports

_LAZY = {
    "HEADS": "fmcache.heads.registry",
    "get_head": "fmcache.heads.registry",
    "register_head": "fmcache.heads.registry",
    "FitResult": "fmcache.heads.train",
    "cell_counts": "fmcache.heads.train",
    "fit_stack": "fmcache.heads.train",
    "predict_stack": "fmcache.heads.train",
    "Batch": "fmcache.heads.types",
    "HeadSpec": "fmcache.heads.types",
    "HeadType": "fmcache.heads.types",
    "class_prototypes": "fmcache.heads.zeroshot",
    "zeroshot_params": "fmcache.heads.zeroshot",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
