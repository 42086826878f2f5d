"""Checks on what a user hands the heads, each failing with one line that says what to fix."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from fmcache.errors import HeadInputError, did_you_mean
from fmcache.heads.types import HeadType

# hyperparameters every trainable head takes, with the reference protocol's defaults
COMMON_HPARAMS: dict[str, float] = {"lr": 2.5e-4, "weight_decay": 0.05, "seed": 0, "label": 0, "attribute": 0}
INT_HPARAMS = ("seed", "label", "attribute", "adv_steps", "eqopp_label")


def check_features(X: ArrayLike, name: str = "features") -> np.ndarray:
    """(n, d) finite float32 features, or HeadInputError naming the first bad rows."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise HeadInputError(f"{name} must be a non-empty (n, d) array, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise HeadInputError(f"{name} must be floating point, got {X.dtype}")
    X = X.astype(np.float32, copy=False)
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise HeadInputError(
            f"{name} contain NaN or inf in {bad.size} row(s) (first: {', '.join(map(str, bad[:5]))}): "
            "drop those rows or recompute their embeddings"
        )
    return X


def as_columns(a: ArrayLike | None, n: int, name: str) -> np.ndarray | None:
    """(n,) or (n, C) integer codes as (n, C) int32, -1 meaning unknown."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n:
        raise HeadInputError(f"{name} must have one row per feature row ({n}), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer) and (not np.all(np.isfinite(a)) or not np.all(a == np.round(a))):
        raise HeadInputError(f"{name} must hold integer codes (-1 for unknown), got {a.dtype} with non-integer values")
    a = a.astype(np.int32)
    if np.any(a < -1):
        raise HeadInputError(f"{name} must hold codes >= 0, or -1 for unknown; found {int(a.min())}")
    return a


def check_hparams(head: HeadType, hparams: Mapping[str, ArrayLike] | None, n_heads: int | None, extra: Mapping[str, float] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Fill defaults and broadcast every hyperparameter to length K.

    Returns the per-head arrays (ints for seed / label / attribute, float32 otherwise) and K.
    """
    allowed = {**COMMON_HPARAMS, **head.hparams, **(extra or {})}
    given = dict(hparams or {})
    for key in given:
        if key not in allowed:
            raise HeadInputError(f"head {head.name!r} has no hyperparameter {key!r}{did_you_mean(key, sorted(allowed))}; it takes {sorted(allowed)}")
    lengths = {k: np.size(v) for k, v in given.items() if np.ndim(v) > 0}
    sizes = set(lengths.values())
    if len(sizes) > 1:
        raise HeadInputError(f"hyperparameter arrays must share one length (one entry per head), got {lengths}")
    K = sizes.pop() if sizes else (n_heads or 1)
    if n_heads is not None and K != n_heads:
        raise HeadInputError(f"n_heads={n_heads} but the hyperparameter arrays have length {K}")
    if K == 0:
        raise HeadInputError("no heads to train: the hyperparameter arrays are empty")
    out: dict[str, np.ndarray] = {}
    for key, default in allowed.items():
        v = np.broadcast_to(np.asarray(given.get(key, default)), (K,))
        if key in INT_HPARAMS:
            if not np.all(v == np.round(v)):
                raise HeadInputError(f"hyperparameter {key!r} must be whole numbers, got {v[v != np.round(v)][:3]}")
            out[key] = v.astype(np.int32)
        else:
            v = v.astype(np.float32)
            if not np.all(np.isfinite(v)):
                raise HeadInputError(f"hyperparameter {key!r} must be finite, got {v[~np.isfinite(v)][:3]}")
            out[key] = v
    for key in ("lr", "C"):
        if key in out and np.any(out[key] <= 0):
            raise HeadInputError(f"hyperparameter {key!r} must be > 0, got {out[key].min()}")
    for key in ("weight_decay", "dro_step", "adj", "adv_coeff", "penalty", "adv_steps", "eqopp_label"):
        if key in out and np.any(out[key] < 0):
            raise HeadInputError(f"hyperparameter {key!r} must be >= 0, got {out[key].min()}")
    return out, K


def check_columns(hp: Mapping[str, np.ndarray], Y: np.ndarray, G: np.ndarray | None) -> None:
    for key, cols in (("label", Y), ("attribute", G)):
        if cols is None:
            continue
        idx = hp[key]
        if np.any(idx < 0) or np.any(idx >= cols.shape[1]):
            raise HeadInputError(f"hyperparameter {key!r} selects column {int(idx.max())} but there are {cols.shape[1]} column(s)")


def check_trainable(head: HeadType, hp: Mapping[str, np.ndarray], Y: np.ndarray, G: np.ndarray | None, n_classes: int, split: str = "training") -> None:
    """Every head's label column has 2+ classes among usable rows; group heads have 2+ groups."""
    if head.uses_groups and G is None:
        raise HeadInputError(f"head {head.name!r} needs the sensitive attribute: pass groups=")
    if n_classes > 2 and not head.multiclass:
        raise HeadInputError(f"head {head.name!r} handles binary labels only, got n_classes={n_classes}")
    # an adversary conditioned on a class with no rows would have nothing to learn from, and
    # the head would train as a plain classifier under a mitigation's name
    if "eqopp_label" in hp and np.any(hp["eqopp_label"] >= n_classes):
        raise HeadInputError(f"eqopp_label {int(hp['eqopp_label'].max())} is not a class of a {n_classes}-class label: choose 0..{n_classes - 1}")
    seen: set[tuple[int, int]] = set()
    for label, attr in zip(hp["label"].tolist(), hp["attribute"].tolist()):
        if (label, attr) in seen:
            continue
        seen.add((label, attr))
        y = Y[:, label]
        usable = y >= 0
        if head.uses_groups:
            usable &= G[:, attr] >= 0
        values = np.unique(y[usable])
        if values.size and values.max() >= n_classes:
            raise HeadInputError(f"label column {label} holds class {int(values.max())} but n_classes={n_classes}")
        if values.size < 2:
            what = f"only class {int(values[0])}" if values.size else "no known labels"
            raise HeadInputError(
                f"label column {label} has {what} among the {int(usable.sum())} usable {split} rows: "
                "a split with one class cannot train or evaluate a classifier"
            )
        if head.uses_groups and np.unique(G[usable, attr]).size < 2:
            raise HeadInputError(f"attribute column {attr} has a single group among the usable {split} rows of label {label}: nothing to be fair between")
