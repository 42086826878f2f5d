"""Small copies of the 2D segmentation releases, laid out exactly as the real ones.

As in official_layouts: each ``write_*`` function writes the release's folder and file
names, value spellings and messy values into ``root`` and returns the path to pass as
``--data``; masks are written in the release's own encoding so tests can decode them
independently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers import official_layouts as ol


def blob(shape: tuple[int, int], seed: int, value: int = 255) -> np.ndarray:
    """A uint8 mask holding ``value`` in a seeded rectangle, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    h, w = shape
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    out = np.zeros(shape, np.uint8)
    out[top : top + h // 3 + 1, left : left + w // 3 + 1] = value
    return out


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "PNG")


# ---------------------------------------------------------------------------- HAM10000 lesion masks

HAM_MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
HAM_SHAPE = (45, 60)  # H x W of write_ham10000's images (600 x 450 scaled down)


def write_ham10000_seg(root: Path, *, nested: bool = False) -> Path:
    """HAM10000 (as official_layouts.write_ham10000) plus the lesion-mask folder; returns root."""
    ol.write_ham10000(root)
    folder = root / HAM_MASK_DIR / (HAM_MASK_DIR if nested else "")
    for i, row in enumerate(ol.HAM_ROWS):
        _png(folder / f"{row[1]}_segmentation.png", blob(HAM_SHAPE, seed=100 + i))
    return root
