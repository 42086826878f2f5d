"""Heads trained on cached features, many at once.

A head type is a record of pure functions (``HeadType``: init, loss, predict); ``HEADS``
names them all. ``fit_stack`` trains K heads of one type together, stacked along a
leading axis and sharing every minibatch; ``predict_stack`` scores features with them.

    from fmcache.heads import fit_stack, predict_stack
    fit = fit_stack("groupdro", X, y, groups, {"lr": [1e-4, 2.5e-4], "label": 0})
    scores = fit.predict(X_test)                      # (K, n) P(label = 1)

JAX loads on first use of these names, so reading a run's summary needs no JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "HEADS": "fmcache.heads.registry",
    "FitResult": "fmcache.heads.train",
    "cell_counts": "fmcache.heads.train",
    "fit_stack": "fmcache.heads.train",
    "get_head": "fmcache.heads.train",
    "predict_stack": "fmcache.heads.train",
    "Batch": "fmcache.heads.types",
    "HeadSpec": "fmcache.heads.types",
    "HeadType": "fmcache.heads.types",
    "class_prototypes": "fmcache.heads.zeroshot",
    "zeroshot_params": "fmcache.heads.zeroshot",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fmcache.heads' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
