"""Each 3D model's intensity recipe, applied to its input before the encoder.

* ``znorm_positive`` (SAM-Med3D, FastSAM3D): the z-score over the voxels above 0 of the
  128³ block, applied to every voxel (torchio's ``ZNormalization(masking_method=x > 0)`` in
  SAM-Med3D's inference, with torch's unbiased standard deviation). In CT that is the
  voxels above 0 HU, in MRI the non-background ones: the recipe the model was trained with,
  whatever the modality.
* ``segvol`` (SegVol): its foreground normalisation and min-max to [0, 1] over the whole
  volume, before the zoom-out resize (:func:`fmcache.embed.segvol.normalise_intensity`).

The 2D models read a volume's slices through the dataset's own window (a CT window, MRI
percentiles; ``Dataset.image``), as they read any image.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fmcache.errors import SegmentInputError


def znorm_positive(block: np.ndarray) -> np.ndarray:
    """``(x - m) / s`` with m, s the mean and unbiased standard deviation of the voxels > 0.

    A block with fewer than two voxels above 0, or a constant one, is only centred (s = 1):
    the recipe's own statistics are undefined there, and a NaN must not reach the encoder.
    """
    x = np.asarray(block, dtype=np.float32)
    values = x[x > 0].astype(np.float64)
    if len(values) < 2:
        return x - np.float32(values.mean() if len(values) else 0.0)
    mean, std = values.mean(), values.std(ddof=1)
    return ((x - mean) / (std if std > 0 else 1.0)).astype(np.float32)


def _segvol(volume: np.ndarray) -> np.ndarray:
    from fmcache.embed.segvol import normalise_intensity

    return np.asarray(normalise_intensity(np.asarray(volume, dtype=np.float32)), dtype=np.float32)


RECIPES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"znorm_positive": znorm_positive, "segvol": _segvol}


def apply_recipe(name: str, array: np.ndarray) -> np.ndarray:
    """The recipe ``name`` applied to ``array`` (float32 out)."""
    try:
        return RECIPES[name](array)
    except KeyError:
        raise SegmentInputError(f"unknown intensity recipe {name!r}: known {', '.join(RECIPES)}") from None
