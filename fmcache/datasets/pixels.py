"""Opening 2D images with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fmcache.errors import DatasetError


def open_image(path: str | Path) -> Image.Image:
    """Open an image file fully decoded, as RGB (grayscale is replicated to 3 channels).

    Raises DatasetError naming the file when it is missing or cannot be decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"image file not found: {p} (check --data points at the dataset root)")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {p}: {e.__class__.__name__}: {e} (file corrupt or not an image)") from None
