"""Mapping stored intensities (16-bit, float, DICOM units) to the 0..255 that models take.

Two rules, used by every 2D reader:

* :func:`minmax_to_uint8`: the image's own lowest stored value becomes 0 and its highest 255,
  linearly, rounded to the nearest level. Used when the file says nothing about how it is
  meant to be shown (16-bit PNG/TIFF, NIfTI, DICOM without a window). A constant image is
  all 0. Non-finite values (NaN, inf in float files) are left out of the range and become 0.
* :func:`range_to_uint8`: a given display range (e.g. a DICOM window) becomes 0..255; values
  outside it are clipped.
"""

from __future__ import annotations

import numpy as np


def range_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low`` -> 0 and ``high`` -> 255, linearly, clipped and rounded; needs ``high > low``."""
    if not high > low:
        raise ValueError(f"range_to_uint8 needs high > low, got ({low}, {high})")
    v = np.asarray(values, dtype=np.float64)
    scaled = (np.nan_to_num(v, nan=low, posinf=low, neginf=low) - low) * (255.0 / (high - low))
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """The image's own finite minimum -> 0 and maximum -> 255 (see the module's rule)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.zeros(v.shape, np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if not high > low:
        return np.zeros(v.shape, np.uint8)
    return range_to_uint8(v, low, high)
