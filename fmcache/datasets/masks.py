"""Segmentation masks stored as image files (PNG), read as label maps with errors naming the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmcache.errors import DatasetError

FOREGROUND = 255  # binary mask files of the releases: 0 background, 255 object


def read_mask_values(path: Path) -> np.ndarray:
    """The values of a one-channel mask image as an (H, W) array, exactly as stored.

    Colour files whose channels agree (a grey mask saved as RGB) give one channel; a mask
    saved in colour cannot be read without a palette of class colours, so it is refused.
    """
    if not path.is_file():
        raise DatasetError(f"mask file not found: {path} (check --data points at the dataset root)")
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore")
            im.load()
            mode = im.mode
            array = np.asarray(im.convert("L") if mode == "P" else im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DatasetError(f"cannot read mask {path}: {e.__class__.__name__}: {e} (file corrupt, truncated or not an image)") from None
    if mode == "1":
        return array.astype(np.uint8) * FOREGROUND
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise DatasetError(f"mask {path} is in colour ({mode}); expected a grey 0/{FOREGROUND} mask")
        array = array[..., 0]
    return array


def read_binary_mask(path: Path) -> np.ndarray:
    """A 0 / 255 mask file as uint8 0 / 1; any other value is an error naming it."""
    values = read_mask_values(path)
    bad = values[(values != 0) & (values != FOREGROUND)]
    if bad.size:
        raise DatasetError(f"mask {path} holds value {int(bad.flat[0])}; expected 0 (background) or {FOREGROUND} "
                           f"(object): replace the file with the release's copy")
    return (values == FOREGROUND).astype(np.uint8)
