"""Synthetic volumes for tests of the 2.5D path (not official layouts)."""

from __future__ import annotations

import numpy as np


def planted_volume(
    n_slices: int, positive_slice: int, *, size: tuple[int, int] = (32, 32), seed: int = 0
) -> np.ndarray:
    """A float32 (n_slices, H, W) volume in [0, 1] whose only bright blob sits on one slice.

    Every slice holds dim noise in [0.05, 0.15]; slice ``positive_slice`` also holds a
    Gaussian blob (peak 1.0, sigma H/8) at its centre. Resampling to another slice count
    spreads the blob over the neighbouring output slices at lower weight (down to half for a
    2:1 reduction), so the output slice nearest ``positive_slice * n / n_slices`` stays the
    brightest. Beyond 2:1 (e.g. 20 -> 8) linear resampling may sample on both sides of the
    blob's slice and lose most of it: keep ``n_slices <= 2 * n`` for a one-slice blob.
    """
    if not 0 <= positive_slice < n_slices:
        raise ValueError(f"positive_slice must lie in [0, {n_slices}), got {positive_slice}")
    h, w = size
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.05, 0.15, (n_slices, h, w)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    sigma = h / 8
    blob = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))
    vol[positive_slice] = np.maximum(vol[positive_slice], blob.astype(np.float32))
    return vol
