"""Thumbnails of a few segmented items per group, for the report's overlays.

The report must draw an item's image with its true and predicted outlines without the
dataset, so the sweep keeps small copies: the image, the true label map and the predicted
one, scaled so the longer side is at most :data:`THUMBNAIL` pixels (nearest neighbour for the
label maps, so classes stay classes). Which items: per group of the run's first attribute,
the lowest, median and highest Dice of the run's best prompt type (its highest mean Dice),
so the figure shows the spread, chosen the same way in every run.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMBNAIL = 192  # longest side of a thumbnail, in pixels
PICKS = ("lowest", "median", "highest")


def choose_items(dice: np.ndarray, groups: np.ndarray, n_groups: int) -> list[tuple[int, str]]:
    """(position, pick) of up to three items per group: its lowest, median and highest Dice.

    ``dice`` (n,) per-item scores (NaN items are never chosen), ``groups`` (n,) codes (-1 is
    unknown, never chosen). Ties are broken by position, so the choice is deterministic; a
    group of fewer than three scored items shows each once.
    """
    chosen = []
    for g in range(n_groups):
        members = np.flatnonzero((groups == g) & np.isfinite(dice))
        if not len(members):
            continue
        ranked = members[np.lexsort((members, dice[members]))]
        seen = set()
        for pick, k in zip(PICKS, (0, (len(ranked) - 1) // 2, len(ranked) - 1)):
            if ranked[k] not in seen:
                seen.add(ranked[k])
                chosen.append((int(ranked[k]), pick))
    return chosen


def thumbnail(image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
              size: int = THUMBNAIL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image (h, w, 3) uint8 and the true and predicted label maps (h, w) uint8, scaled
    so that max(h, w) <= ``size`` (never enlarged)."""
    h, w = truth.shape
    scale = min(1.0, size / max(h, w))
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    rgb = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB").resize(out[::-1], Image.Resampling.BILINEAR)

    def labels(m: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(np.asarray(m, np.uint8)).resize(out[::-1], Image.Resampling.NEAREST))

    return np.asarray(rgb), labels(truth), labels(pred)


def pad_to(a: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """``a`` in the top-left corner of a size x size slot (zeros elsewhere), so items stack."""
    out = np.zeros((size, size, *a.shape[2:]), a.dtype)
    out[:a.shape[0], :a.shape[1]] = a
    return out
