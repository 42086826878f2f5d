"""Normalised surface distance (surface Dice) per item and class, by MONAI.

Dice counts pixels; NSD asks how much of the predicted and true boundaries lie within a
tolerance of each other, so a mask that is right in area but ragged at its edge scores lower.
The tolerance is in pixels of the original image, where the masks are compared, or in mm
when the voxel spacing is given (volumes: their anisotropic voxels measured as they are).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from fmcache.errors import MetricInputError

EMPTY_RULES = ("one", "skip")


def nsd_per_class(y_true: np.ndarray | Sequence[np.ndarray], y_pred: np.ndarray | Sequence[np.ndarray], *,
                  tolerance: float, n_classes: int | None = None,
                  spacings: Sequence[Sequence[float] | None] | None = None) -> np.ndarray:
    """NSD of each sample and foreground class, NaN where the class is absent from both masks.

    NSD_c = (|{b in dA_c : d(b, dB_c) <= tol}| + |{b in dB_c : d(b, dA_c) <= tol}|) / (|dA_c| + |dB_c|),
    with dA_c, dB_c the boundary pixels of the true and predicted masks of class c (the pixels
    of the mask with a 4-neighbour outside it) and d the Euclidean distance in pixels: the
    share of both boundaries that lies within ``tolerance`` of the other. Computed by
    ``monai.metrics.compute_surface_dice`` (pixel spacing 1 unless ``spacings``; boundaries counted in pixels, not
    sub-pixel areas). A class present in only one of the masks scores 0.

    Parameters
    ----------
    y_true, y_pred : array (n, ...) or list of n arrays
        Label maps (int; 0 is background, class c is label c) or boolean masks (class 1),
        2D or 3D; per-sample shapes may differ.
    tolerance : float
        Largest boundary deviation, in pixels, that still counts as agreement (>= 0).
    n_classes : int, optional
        Number of foreground classes; default the largest label seen.
    spacings : list of n voxel sizes (or None), optional
        Per sample, the size of a pixel / voxel along each array axis (mm): distances, and so
        ``tolerance``, are then in mm (MONAI's ``spacing``); None for a sample: in pixels.

    Returns
    -------
    numpy.ndarray, shape (n, C)
    """
    import torch
    from monai.metrics import compute_surface_dice

    truth, pred = _as_list(y_true, "y_true"), _as_list(y_pred, "y_pred")
    if len(truth) != len(pred):
        raise MetricInputError(f"y_true has {len(truth)} masks but y_pred has {len(pred)}")
    if spacings is not None and len(spacings) != len(truth):
        raise MetricInputError(f"{len(truth)} masks but {len(spacings)} spacings: give one per mask (or None)")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise MetricInputError(f"the NSD tolerance must be a finite number of pixels >= 0; got {tolerance!r}")
    if n_classes is None:
        n_classes = max([1] + [int(max(t.max(initial=0), p.max(initial=0))) for t, p in zip(truth, pred)])
    values = np.zeros((len(truth), n_classes))
    for i, (t, p) in enumerate(zip(truth, pred)):
        if t.shape != p.shape:
            raise MetricInputError(f"sample {i}: true mask shape {t.shape} differs from predicted {p.shape}")
        if t.ndim not in (2, 3):
            raise MetricInputError(f"sample {i}: NSD needs 2D or 3D masks; got shape {t.shape}")
        t, p = t.astype(np.int64), p.astype(np.int64)
        classes = range(1, n_classes + 1)
        # MONAI reads one-hot (batch, class, ...) tensors
        onehot_t = torch.from_numpy(np.stack([t == c for c in classes])[None])
        onehot_p = torch.from_numpy(np.stack([p == c for c in classes])[None])
        with warnings.catch_warnings():
            # it warns of an empty mask, which the callers' empty rule settles, and of a
            # deprecated argument it passes to itself
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            spacing = None if spacings is None or spacings[i] is None else [float(x) for x in spacings[i]]
            out = compute_surface_dice(onehot_p, onehot_t, class_thresholds=[float(tolerance)] * n_classes,
                                       include_background=True, spacing=spacing)
        values[i] = out[0].double().numpy()
    return values


def nsd_per_sample(y_true: np.ndarray | Sequence[np.ndarray], y_pred: np.ndarray | Sequence[np.ndarray], *,
                   tolerance: float, n_classes: int | None = None, empty: str = "one",
                   spacings: Sequence[Sequence[float] | None] | None = None) -> np.ndarray:
    """NSD of each sample (see `nsd_per_class`), averaged over foreground classes.

    Empty masks follow :func:`fmcache.fairness.dice_per_sample`: a class absent from both the
    truth and the prediction counts 1 under ``empty="one"`` (the prediction is right that
    nothing is there) and is left out of the mean under ``empty="skip"`` (NaN when every class
    is absent); a class present in only one of them scores 0, as its Dice does.

    Returns
    -------
    numpy.ndarray, shape (n,)
    """
    if empty not in EMPTY_RULES:
        raise MetricInputError(f"empty must be 'one' or 'skip'; got {empty!r}")
    per_class = nsd_per_class(y_true, y_pred, tolerance=tolerance, n_classes=n_classes, spacings=spacings)
    if empty == "one":
        return np.where(np.isnan(per_class), 1.0, per_class).mean(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" is the documented NaN
        return np.nanmean(per_class, axis=1)


def _as_list(masks: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray):
        if masks.ndim < 3:
            raise MetricInputError(f"{name} must be masks of shape (n, H, W[, D]) or a list of per-sample masks; "
                                   f"got shape {masks.shape}")
        return list(masks)
    return [np.asarray(m) for m in masks]
